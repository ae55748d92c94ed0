"""The optimizer (lm/optim.py) is optax's clipped, masked AdamW, and a dropped step leaves everything as it was."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lm import optim

CONFIG = ml_collections.ConfigDict(dict(lr=1e-2, min_lr=1e-3, warmup_steps=2, b1=0.9, b2=0.95, weight_decay=0.1,
                                        grad_clip=1.0))


def _params(rng: np.random.Generator) -> dict:
    """Scanned layers ('blocks': a stacked matrix and a stacked bias) beside a plain matrix and vector."""
    shapes = {"blocks": {"kernel": (2, 4, 3), "bias": (2, 3)}, "head": {"kernel": (3, 5), "scale": (5,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def test_adamw_equals_optax_clipped_masked_adamw_and_drops_non_finite_steps():
    rng = np.random.default_rng(0)
    params = _params(rng)
    tx, lr = optim.optimizer(CONFIG, total_steps=10)
    reference = optax.chain(optax.clip_by_global_norm(CONFIG.grad_clip),
                            optax.adamw(lr, b1=CONFIG.b1, b2=CONFIG.b2, eps=1e-8, weight_decay=CONFIG.weight_decay,
                                        mask=optim.decay_mask))
    ours, want = (params, tx.init(params)), (params, reference.init(params))

    @jax.jit
    def step(p, state, summed, count, finite):
        norm = optax.tree.norm(summed) / count
        updates, state = tx.update(summed, state, p, grad_norm=norm, finite=finite, scale=1.0 / count)
        return optax.apply_updates(p, updates), state

    # gradient norms from well below the clipping norm to far above it; step 3 is not finite
    for i, (size, finite) in enumerate([(0.01, True), (50.0, True), (1.0, False), (0.3, True), (20.0, True)]):
        count = 1.0 + i
        mean = jax.tree.map(lambda x: size * jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        summed = jax.tree.map(lambda g: g * count, mean)
        before = ours
        ours = step(*ours, summed, count, finite)
        if not finite:
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(ours), strict=True):
                np.testing.assert_array_equal(a, b)
            continue
        updates, state = reference.update(mean, want[1], want[0])
        want = (optax.apply_updates(want[0], updates), state)
        for a, b in zip(jax.tree.leaves(ours[0]), jax.tree.leaves(want[0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(ours[1].count) == 4
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours[0], params)
    assert min(jax.tree.leaves(moved)) > 1e-3  # every parameter was updated, decayed or not

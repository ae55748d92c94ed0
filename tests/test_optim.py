"""The optimizer (lm/optim.py) is the optax chain its config names (clipping, AdamW or another optax optimizer,
the decay mask, the schedule), a non-finite step is dropped, and weight decay reaches exactly the kernels,
embeddings and head."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lm import optim
from lm.backends import select
from lm.config import ModelConfig
from lm.errors import UserError
from lm.parallel.placement import boxed_params

CONFIG = ml_collections.ConfigDict(dict(name="adamw", lr=1e-2, min_lr=1e-3, warmup_steps=2, b1=0.9, b2=0.95,
                                        weight_decay=0.1, grad_clip=1.0))


def _params(rng: np.random.Generator) -> dict:
    """Scanned layers ('blocks': a stacked matrix and a stacked bias) beside a plain matrix and vector."""
    shapes = {"blocks": {"kernel": (2, 4, 3), "bias": (2, 3)}, "head": {"kernel": (3, 5), "scale": (5,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


MASK = {"blocks": {"kernel": True, "bias": False}, "head": {"kernel": True, "scale": False}}  # kernels decayed


def _reference_schedule() -> optax.Schedule:
    """CONFIG's schedule over 10 steps, written out: warmup 0 -> 1e-2 over 2 steps, cosine to 1e-3 at step 10."""
    return optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, 1e-3)


def _run(tx: optax.GradientTransformation, params: dict, grads: list[dict]) -> tuple[dict, object]:
    """The parameters and optimizer state after one guarded update per gradient (lm/optim.update_if_finite)."""
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        finite = jnp.isfinite(optax.global_norm(g))
        return optim.update_if_finite(tx, g, s, p, finite)

    for g in grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_the_optimizer_is_the_optax_chain_its_config_names_and_drops_non_finite_steps(name):
    """`config.optim` -> clipping, then optax.<name> with the config's betas, the weight-decay mask (an explicit
    list here) and the schedule; a step whose gradients hold a NaN leaves the parameters and the optimizer's
    moments and count as they were, and the next step goes on as if it had never come."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    cfg = CONFIG.copy_and_resolve_references()
    cfg.name = name
    tx, _ = optim.optimizer(cfg, total_steps=10)
    make = {"adamw": optax.adamw, "lion": optax.lion}[name]
    reference = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                            make(_reference_schedule(), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=MASK))
    # gradient norms from well below the clipping norm to far above it; the third holds a NaN
    sizes = [0.01, 50.0, 1.0, 0.3, 20.0]
    grads = [jax.tree.map(lambda x, s=s: s * jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for s in sizes]
    grads[2] = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[2])
    ours, _ = _run(tx, params, grads)
    want, _ = _run(reference, params, grads[:2] + grads[3:])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    before = _run(tx, params, grads[:2])
    after = _run(tx, params, grads[:3])  # the NaN step last: nothing moved
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ours, params)
    assert min(jax.tree.leaves(moved)) > 1e-3  # every parameter was updated, decayed or not


def test_an_optimizer_that_cannot_take_the_config_is_one_line():
    cfg = CONFIG.copy_and_resolve_references()
    cfg.name = "sgd"  # takes no weight decay
    with pytest.raises(UserError, match=r"optax.sgd takes no masked weight decay; set --config.optim.weight_decay=0"):
        optim.optimizer(cfg, 10)
    cfg.weight_decay = 0.0
    tx, _ = optim.optimizer(cfg, 10)
    assert tx.init({"w": jnp.zeros(3)}) is not None
    cfg.name = "no_such_optimizer"
    with pytest.raises(UserError, match=r"config.optim.name='no_such_optimizer' is not an optax optimizer"):
        optim.optimizer(cfg, 10)


GPT2 = ModelConfig(vocab_size=64, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)
LLAMA = dataclasses.replace(GPT2, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
                            tie_embeddings=False, qk_norm=True)
# Every parameter of each family, decayed (True) or not: kernels, embeddings and the head are; biases (the
# attention's are [N, H]), norm scales and every other vector are not.
LAYER_PARAMS = {
    "gpt2": {"attn/query/kernel": True, "attn/query/bias": False, "attn/key/kernel": True, "attn/key/bias": False,
             "attn/value/kernel": True, "attn/value/bias": False, "attn/out/kernel": True, "attn/out/bias": False,
             "mlp/fc/kernel": True, "mlp/fc/bias": False, "mlp/proj/kernel": True, "mlp/proj/bias": False,
             "norm_attn/scale": False, "norm_attn/bias": False, "norm_mlp/scale": False, "norm_mlp/bias": False},
    "llama": {"attn/query/kernel": True, "attn/key/kernel": True, "attn/value/kernel": True, "attn/out/kernel": True,
              "attn/query_norm/scale": False, "attn/key_norm/scale": False, "mlp/gate/kernel": True,
              "mlp/up/kernel": True, "mlp/proj/kernel": True, "norm_attn/scale": False, "norm_mlp/scale": False},
}
TOP_PARAMS = {
    "gpt2": {"token_embedding": True, "position_embedding": True, "norm_final/scale": False, "norm_final/bias": False},
    "llama": {"token_embedding": True, "lm_head": True, "norm_final/scale": False},
}


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weight_decay_reaches_kernels_embeddings_and_head_and_nothing_else(family, scanned):
    cfg = dataclasses.replace({"gpt2": GPT2, "llama": LLAMA}[family], scan_layers=scanned)
    shapes = jax.eval_shape(lambda: nn.unbox(boxed_params(select.model(cfg), 0)))
    got = {"/".join(k.key for k in path): bool(leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(optim.decay_mask(shapes))}
    layers = ["blocks"] if scanned else [f"block_{i}" for i in range(cfg.num_layers)]
    want = {f"{layer}/{name}": d for layer in layers for name, d in LAYER_PARAMS[family].items()}
    assert got == {**want, **TOP_PARAMS[family]}

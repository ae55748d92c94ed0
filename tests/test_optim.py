"""The optimizer (lm/optim.py) is optax's clipped, masked AdamW, a dropped step leaves everything as it was, and
weight decay reaches exactly the kernels, embeddings and head."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lm import optim
from lm.config import ModelConfig
from lm.model import TransformerLM
from lm.state import boxed_params

CONFIG = ml_collections.ConfigDict(dict(lr=1e-2, min_lr=1e-3, warmup_steps=2, b1=0.9, b2=0.95, weight_decay=0.1,
                                        grad_clip=1.0))


def _params(rng: np.random.Generator) -> dict:
    """Scanned layers ('blocks': a stacked matrix and a stacked bias) beside a plain matrix and vector."""
    shapes = {"blocks": {"kernel": (2, 4, 3), "bias": (2, 3)}, "head": {"kernel": (3, 5), "scale": (5,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


MASK = {"blocks": {"kernel": True, "bias": False}, "head": {"kernel": True, "scale": False}}  # kernels decayed


def test_adamw_equals_optax_clipped_masked_adamw_and_drops_non_finite_steps():
    rng = np.random.default_rng(0)
    params = _params(rng)
    tx, lr = optim.optimizer(CONFIG, total_steps=10)
    reference = optax.chain(optax.clip_by_global_norm(CONFIG.grad_clip),
                            optax.adamw(lr, b1=CONFIG.b1, b2=CONFIG.b2, eps=1e-8, weight_decay=CONFIG.weight_decay,
                                        mask=MASK))
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
    shapes = jax.eval_shape(lambda: nn.unbox(boxed_params(TransformerLM(cfg), 0)))
    got = {"/".join(k.key for k in path): bool(leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(optim.decay_mask(shapes))}
    layers = ["blocks"] if scanned else [f"block_{i}" for i in range(cfg.num_layers)]
    want = {f"{layer}/{name}": d for layer in layers for name, d in LAYER_PARAMS[family].items()}
    assert got == {**want, **TOP_PARAMS[family]}

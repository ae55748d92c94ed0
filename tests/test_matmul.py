"""bfloat16 projections on a CPU (lm/matmul.py): the same values and gradients as a float32 einsum, and a
compiled train step whose every projection product runs on bfloat16 operands."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import matmul
from lm.config import ModelConfig
from lm.model import TransformerLM
from lm.state import boxed_params
from lm.train import loss_and_grads

EQUATIONS = {"btd,dnh->btnh": ((2, 24, 32), (32, 4, 8)), "btk,kd->btd": ((2, 24, 32), (32, 48)),
             "btd,vd->btv": ((2, 24, 32), (40, 32)), "btd,df->btf": ((3, 8, 16), (16, 64))}


def _bf16_exact(rng: np.random.Generator, shape: tuple[int, ...]) -> jax.Array:
    """Normal values that bfloat16 holds exactly, in float32."""
    return jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("equation", list(EQUATIONS))
def test_bfloat16_projections_equal_a_float32_einsum_with_their_gradients(equation):
    rng = np.random.default_rng(0)
    x, w = (_bf16_exact(rng, s) for s in EQUATIONS[equation])
    out_shape = jnp.einsum(equation, x, w).shape
    r = _bf16_exact(rng, out_shape)  # the cotangent the output meets
    assert matmul.applies(equation, "bfloat16") and not matmul.applies(equation, "float32")

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * r), (0, 1)))

    y = jax.jit(lambda x, w: matmul.einsum(equation, x, w))(x, w)
    assert y.dtype == jnp.bfloat16 and y.shape == out_shape
    np.testing.assert_allclose(y.astype(jnp.float32), jnp.einsum(equation, x, w), rtol=1e-2, atol=1e-2)
    _, (dx, dw) = loss(lambda x, w: matmul.einsum(equation, x, w))(x, w)
    _, (ref_dx, ref_dw) = loss(lambda x, w: jnp.einsum(equation, x, w))(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-2, atol=2e-2)


def test_other_products_are_left_to_einsum():
    assert not matmul.applies("btnh,bsnh->bnts", "bfloat16")  # attention scores: a batch axis in both
    assert not matmul.applies("btd,dv->bvt", "bfloat16")  # an output in another order


def _dot_operand_types(hlo: str) -> list[tuple[str, str, str]]:
    """(op_name, lhs type, rhs type) of every dot in compiled HLO text."""
    types = {m.group(1): m.group(2) for m in re.finditer(r"%([\w.\-]+) = (\w+)\[", hlo)}
    dots = []
    for line in hlo.split("\n"):
        if m := re.search(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", line):
            name = re.search(r'op_name="([^"]*)"', line)
            dots.append((name.group(1) if name else "", types[m.group(1)], types[m.group(2)]))
    return dots


@pytest.mark.parametrize("tied", [True, False], ids=["tied_head", "untied_head"])
def test_a_bfloat16_train_step_multiplies_every_projection_in_bfloat16(tied):
    """XLA's CPU backend converts a bfloat16 dot that is not in its native form to float32 (5x slower): every
    projection, the output head and all their gradients must stay bfloat16 (attention's own products aside)."""
    cfg = ModelConfig(vocab_size=96, max_len=32, num_layers=2, num_heads=4, embed_dim=64, mlp_dim=128,
                      dtype="bfloat16", tie_embeddings=tied, scan_layers=False)
    model = TransformerLM(cfg)
    params = jax.jit(lambda: nn.unbox(boxed_params(model, 0)))()
    tokens = jnp.zeros((4, 33), jnp.int32)
    batch = {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(33), tokens.shape),
             "segment_ids": jnp.ones_like(tokens)}
    hlo = jax.jit(lambda p, b: loss_and_grads(model, p, b)).lower(params, batch).compile().as_text()
    dots = [d for d in _dot_operand_types(hlo) if "/attn/vmap" not in d[0]]
    layers = 2 * (4 + 2)  # q, k, v, out, fc, proj in each layer
    assert len(dots) >= 3 * (layers + 1), dots  # forward, input gradient and kernel gradient, with the head
    assert all(lhs == rhs == "bf16" for _, lhs, rhs in dots), [d for d in dots if d[1:] != ("bf16", "bf16")]

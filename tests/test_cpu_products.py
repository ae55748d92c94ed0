"""Products on a CPU (lm/backends/cpu_matmul.py, lm/backends/cpu_attention.py): projections and attention, in
bfloat16 and float32, give the values and gradients of float32 einsums over the same numbers, and a compiled
bfloat16 train step runs every product on bfloat16 operands."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.backends import cpu_attention, cpu_matmul, select
from lm.model.attention import attention_mask, reference_attention
from lm.model.config import ModelConfig
from lm.parallel.placement import boxed_params
from lm.train.step import loss_and_grads

EQUATIONS = {"btd,dnh->btnh": ((2, 24, 32), (32, 4, 8)), "btk,kd->btd": ((2, 24, 32), (32, 48)),
             "btd,vd->btv": ((2, 24, 32), (40, 32)), "btd,df->btf": ((3, 8, 16), (16, 64))}


def _bf16_exact(rng: np.random.Generator, shape: tuple[int, ...]) -> jax.Array:
    """Normal values that bfloat16 holds exactly, in float32."""
    return jnp.asarray(rng.normal(size=shape), jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("equation", list(EQUATIONS))
def test_projections_equal_a_float32_einsum_with_their_gradients(equation, dtype):
    rng = np.random.default_rng(0)
    x, w = (_bf16_exact(rng, s) for s in EQUATIONS[equation])
    out_shape = jnp.einsum(equation, x, w).shape
    r = _bf16_exact(rng, out_shape)  # the cotangent the output meets
    assert cpu_matmul.applies(equation)
    tol = 2e-2 if dtype == "bfloat16" else 1e-5

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * r), (0, 1)))

    y = jax.jit(lambda x, w: cpu_matmul.einsum(equation, x, w, dtype))(x, w)
    assert y.dtype == jnp.dtype(dtype) and y.shape == out_shape
    np.testing.assert_allclose(y.astype(jnp.float32), jnp.einsum(equation, x, w), rtol=tol, atol=tol)
    _, (dx, dw) = loss(lambda x, w: cpu_matmul.einsum(equation, x, w, dtype))(x, w)
    _, (ref_dx, ref_dw) = loss(lambda x, w: jnp.einsum(equation, x, w))(x, w)
    assert dx.shape == x.shape and dw.shape == w.shape and dw.dtype == jnp.float32
    np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, ref_dw, rtol=tol, atol=tol)


def test_other_products_are_left_to_einsum():
    rng = np.random.default_rng(0)
    for equation, shapes in {"btnh,bsnh->bnts": ((2, 5, 3, 4), (2, 6, 3, 4)),  # attention scores: batch axes in both
                             "btd,dv->bvt": ((2, 5, 4), (4, 7))}.items():  # an output in another order
        assert not cpu_matmul.applies(equation)
        x, w = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
        np.testing.assert_allclose(cpu_matmul.einsum(equation, x, w, "float32"), jnp.einsum(equation, x, w),
                                   rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("packed,query_block", [(False, None), (True, None), (True, 5)],
                         ids=["one_document", "packed", "packed_causal_blocks_of_5"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_equals_the_einsum_reference_with_its_gradients(kv_heads, packed, query_block, dtype,
                                                                  monkeypatch):
    """`attention`, and `causal_attention` in blocks of 5 queries over 12 slots (5, 5, 2) with documents that
    cross the blocks' boundaries."""
    rng = np.random.default_rng(1)
    q = _bf16_exact(rng, (2, 12, 4, 8))
    k, v = (_bf16_exact(rng, (2, 12, kv_heads, 8)) for _ in range(2))
    r = _bf16_exact(rng, q.shape)
    segments = jnp.asarray([[1] * 4 + [2] * 7 + [3], [1] * 12]) if packed else jnp.ones((2, 12), jnp.int32)
    slots = jnp.arange(12)
    mask = attention_mask(slots, slots, segments, segments)
    if query_block:
        monkeypatch.setattr(cpu_attention, "QUERY_BLOCK", query_block)
    kind = cpu_attention.causal_attention if query_block else cpu_attention.attention

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v, mask).astype(jnp.float32) * r),
                                          (0, 1, 2)))

    def attention(q, k, v, mask):
        return kind(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask)

    tol = 3e-2 if dtype == "bfloat16" else 1e-5
    out = jax.jit(attention)(q, k, v, mask)
    assert out.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(out.astype(jnp.float32), reference_attention(q, k, v, mask), atol=tol)
    _, grads = loss(attention)(q, k, v)
    _, want = loss(reference_attention)(q, k, v)
    for got, ref in zip(grads, want, strict=True):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


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
    projection, the output head, attention's products and all their gradients must stay bfloat16."""
    cfg = ModelConfig(vocab_size=96, max_len=32, num_layers=2, num_heads=4, embed_dim=64, mlp_dim=128,
                      dtype="bfloat16", tie_embeddings=tied, scan_layers=False)
    model = select.model(cfg)
    params = jax.jit(lambda: nn.unbox(boxed_params(model, 0)))()
    tokens = jnp.zeros((4, 33), jnp.int32)
    batch = {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(33), tokens.shape),
             "segment_ids": jnp.ones_like(tokens)}
    hlo = jax.jit(lambda p, b: loss_and_grads(model, p, b)).lower(params, batch).compile().as_text()
    dots = _dot_operand_types(hlo)
    projections = 2 * (4 + 2) + 1  # q, k, v, out, fc, proj in each layer, and the head
    assert len(dots) >= 3 * projections + 2 * 6, dots  # 3 products each; attention: 2 forward, 4 backward
    assert all(lhs == rhs == "bf16" for _, lhs, rhs in dots), [d for d in dots if d[1:] != ("bf16", "bf16")]

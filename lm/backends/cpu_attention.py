"""Attention for a CPU: scores and values products, forward and backward, in the form XLA's CPU matmul library
kernels take (see cpu_matmul.py; in bfloat16, its native kernels), with softmax in float32.

Each product is a batched matmul over [B, K] (batch, kv heads) with the query heads of a group stacked as rows,
its operands laid out row-major with the contracted axis where XLA's CPU library kernels take it; the gradient
is written out by hand so that its four products take that form too. Causal self-attention
(`causal_attention`) runs in blocks of queries, each against the keys up to its own last slot, which skips the
products above the diagonal.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from lm.backends.cpu_matmul import row_major

NEG_INF = -1e30
QUERY_BLOCK = 128  # queries per block of `causal_attention`


def _bmm(a: jax.Array, b: jax.Array, contracted: tuple[int, int]) -> jax.Array:
    """Batched over the two leading axes: a [B, K, M, .] x b [B, K, ., .] -> float32."""
    dims = (((contracted[0],), (contracted[1],)), ((0, 1), (0, 1)))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _heads_major(x: jax.Array, kv: int) -> jax.Array:
    """[B, T, N, H] -> [B, K, G * T, H] row-major (G = N / K query heads per kv head)."""
    b, t, n, h = x.shape
    x = x.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    return row_major(x).reshape(b, kv, n // kv * t, h)


def _tokens_major(x: jax.Array, t: int) -> jax.Array:
    """[B, K, G * T, H] -> [B, T, K * G, H]."""
    b, kv, gt, h = x.shape
    return x.reshape(b, kv, gt // t, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, kv * (gt // t), h)


def _swap_last(x: jax.Array) -> jax.Array:
    return row_major(jnp.swapaxes(x, -1, -2))


def _probs(q4: jax.Array, k4: jax.Array, mask: jax.Array, t: int) -> jax.Array:
    """Softmax of masked scores in float32: [B, K, G * T, S]."""
    b, kv, gt, h = q4.shape
    scores = _bmm(q4, k4, (3, 3)).reshape(b, kv, gt // t, t, -1) / math.sqrt(h)  # [B, K, G, T, S]
    scores = jnp.where(mask[:, :, None], scores, NEG_INF)  # mask [B, 1, 1, T, S]
    return jax.nn.softmax(scores, axis=-1).reshape(b, kv, gt, -1)


@jax.custom_vjp
def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [B, T, N, H], k/v [B, S, K, H] (one dtype), mask [B, 1, T, S] -> [B, T, N, H] in q's dtype."""
    return _forward(q, k, v, mask)[0]


def _forward(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> tuple[jax.Array, tuple]:
    kv, t = k.shape[2], q.shape[1]
    q4, k4, v4 = _heads_major(q, kv), _heads_major(k, kv), _heads_major(v, kv)  # [B, K, G*T | S, H]
    p = _probs(q4, k4, mask, t).astype(q4.dtype)  # [B, K, G*T, S]
    out = _tokens_major(_bmm(p, v4, (3, 2)), t).astype(q4.dtype)
    return out, (q4, k4, v4, p, mask, jnp.zeros((), q.dtype), jnp.zeros((), k.dtype))  # dtypes as scalars


def _backward(residuals: tuple, g: jax.Array) -> tuple:
    q4, k4, v4, p, mask, q_dtype, kv_dtype = residuals
    kv, t, h = k4.shape[1], g.shape[1], q4.shape[-1]
    g4 = _heads_major(g, kv)  # [B, K, G*T, H]
    dv = _bmm(_swap_last(p), g4, (3, 2))  # [B, K, S, G*T] x [B, K, G*T, H] -> [B, K, S, H]
    dp = _bmm(g4, v4, (3, 3))  # [B, K, G*T, S]
    pf = p.astype(jnp.float32)
    ds = (pf * (dp - jnp.sum(dp * pf, axis=-1, keepdims=True)) / math.sqrt(h)).astype(q4.dtype)
    dq = _bmm(ds, k4, (3, 2))  # [B, K, G*T, S] x [B, K, S, H] -> [B, K, G*T, H]
    dk = _bmm(_swap_last(ds), q4, (3, 2))  # [B, K, S, G*T] x [B, K, G*T, H] -> [B, K, S, H]
    s = k4.shape[2]
    return (_tokens_major(dq, t).astype(q_dtype.dtype), _tokens_major(dk, s).astype(kv_dtype.dtype),
            _tokens_major(dv, s).astype(kv_dtype.dtype), None)


attention.defvjp(_forward, _backward)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attention` for queries and keys of the same slots, with a `mask` that never lets a query see a later
    slot: each block of QUERY_BLOCK queries attends to the keys up to its last slot only, the rest being masked
    for all of them. q [B, T, N, H], k/v [B, T, K, H], mask [B, 1, T, T] -> [B, T, N, H]."""
    t = q.shape[1]
    blocks = []
    for start in range(0, t, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, t)
        blocks.append(attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, :, start:end, :end]))
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=1)

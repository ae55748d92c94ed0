"""The operations the model leaves to a backend: projections, embedding look-ups and attention.

The model calls them through the `Ops` it is built with (`TransformerLM(config, ops)`). The defaults here are
plain XLA and run everywhere; lm/backends/select.py picks faster ones for the platform once, at start-up, and
the sampler swaps in its own for int8 weights (lm/sample/weights.py).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# (equation, x, kernel, dtype) -> einsum(equation, x, kernel) in dtype, e.g. 'btd,dnh->btnh'
Einsum = Callable[[str, jax.Array, Any, str], jax.Array]
# (table [V, D], ids [...]) -> rows [..., D]
Take = Callable[[Any, jax.Array], jax.Array]
# (q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S], causal) -> [B, T, N, H]; `causal`: q and k/v are the
# same slots under a causal mask (an implementation may skip the blocks above the diagonal)
Attention = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, bool], jax.Array]


def einsum(equation: str, x: jax.Array, kernel: Any, dtype: str) -> jax.Array:
    return jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype))


def take(table: Any, ids: jax.Array) -> jax.Array:
    return jnp.take(table, ids, axis=0)  # an id past the table reads NaN (JAX's 'fill' mode)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool) -> jax.Array:
    del causal  # the mask says it
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@dataclasses.dataclass(frozen=True)
class Ops:
    """The model's swappable operations; frozen and compared by value, so equal choices share compiled code."""

    einsum: Einsum = einsum
    take: Take = take
    attention: Attention = attention

"""Causal self-attention with segment masks for packed rows and a KV-cache decode path.

Einsum letters: B batch, T query length, S key length, N heads, H head dim, D model dim.
A query attends to a key when the key's slot is not later than its own and both belong to the same
segment (document); segment 0 is padding.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import sharding as shd
from lm.config import ModelConfig
from lm.layers import Projection

NEG_INF = -1e30


def attention_mask(q_slots: jax.Array, kv_slots: jax.Array, q_segments: jax.Array, kv_segments: jax.Array) -> jax.Array:
    """[B, 1, T, S] boolean: causal in slot order and never across segments.

    q_slots [T], kv_slots [S]: positions in the key sequence; q_segments [B, T], kv_segments [B, S].
    """
    causal = kv_slots[None, :] <= q_slots[:, None]  # [T, S]
    same_doc = q_segments[:, :, None] == kv_segments[:, None, :]  # [B, T, S]
    return (causal[None] & same_doc)[:, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Reference attention: q [B, T, N, H], k/v [B, S, N, H], mask [B, 1, T, S] -> [B, T, N, H].

    Scores and softmax in float32.
    """
    scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


class SelfAttention(nn.Module):
    """Multi-head causal self-attention; with a layer cache {'k', 'v'} [B, S, N, H] it decodes incrementally."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        segment_ids: jax.Array,  # [B, T]
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,  # scalar: slots already filled in the cache
        cache_segment_ids: jax.Array | None = None,  # [B, S], this call's segments already written
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        c = self.config
        d, n, h = c.embed_dim, c.num_heads, c.head_dim
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        bias = (shd.HEADS, shd.HEAD_DIM) if c.use_bias else None

        def project(name: str) -> jax.Array:
            proj = Projection("btd,dnh->btnh", (d, n, h), (shd.EMBED, shd.HEADS, shd.HEAD_DIM), bias, name=name, **kw)
            return nn.with_logical_constraint(proj(x), (shd.BATCH, shd.LENGTH, shd.ACT_HEADS, None))

        q, k, v = project("query"), project("key"), project("value")  # [B, T, N, H]
        t = x.shape[1]
        if cache is None:
            slots = jnp.arange(t)
            mask = attention_mask(slots, slots, segment_ids, segment_ids)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            cache = {"k": k, "v": v}  # [B, S, N, H]
            mask = attention_mask(cache_index + jnp.arange(t), jnp.arange(k.shape[1]), segment_ids, cache_segment_ids)
        out = dot_product_attention(q, k, v, mask)  # [B, T, N, H]
        residual_std = 0.02 / math.sqrt(2 * c.num_layers)
        out_proj = Projection(
            "btnh,nhd->btd", (n, h, d), (shd.HEADS, shd.HEAD_DIM, shd.EMBED),
            (shd.EMBED,) if c.use_bias else None, init_std=residual_std, name="out", **kw,
        )
        return out_proj(out), cache

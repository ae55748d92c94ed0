"""Causal self-attention: grouped-query heads, RoPE, QK-norm, a sliding window, segment masks for packed rows,
a KV cache.

Einsum letters: B batch, T query length, S key length, N query heads, K kv heads, G = N / K query heads per
kv head, H head dim, D model dim.
A query attends to a key when the key's slot is not later than its own and both belong to the same segment
(document); segment 0 is padding. Attention itself is one of the model's `Ops` (plain XLA by default; the
backend may choose cuDNN's or a CPU kernel); decoding from a KV cache uses `cached_attention`, and
`reference_attention` is the same plain einsum over keys laid out as the layer's input.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import axes
from lm.model.config import ModelConfig
from lm.model.layers import Projection, norm, rope, rope_frequencies
from lm.model.ops import Ops

NEG_INF = -1e30


def attention_mask(q_slots: jax.Array, kv_slots: jax.Array, q_segments: jax.Array, kv_segments: jax.Array,
                   window: int = 0) -> jax.Array:
    """[B, 1, T, S] boolean: causal in slot order, never across segments, and with a `window` (> 0) no further
    back than window - 1 slots.

    q_slots [T], kv_slots [S]: positions in the key sequence; q_segments [B, T], kv_segments [B, S].
    """
    causal = kv_slots[None, :] <= q_slots[:, None]  # [T, S]
    if window:
        causal &= kv_slots[None, :] > q_slots[:, None] - window
    same_doc = q_segments[:, :, None] == kv_segments[:, None, :]  # [B, T, S]
    return (causal[None] & same_doc)[:, None]


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Plain einsum attention: q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S] -> [B, T, N, H]."""
    return cached_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Einsum attention over keys and values laid out as a KV cache: q [B, T, N, H], k/v [B, K, S, H],
    mask [B, 1, T, S] -> [B, T, N, H]. Scores and softmax in float32."""
    b, t, n, h = q.shape
    kv = k.shape[1]
    q = q.reshape(b, t, kv, n // kv, h)  # [B, T, K, G, H]
    scores = jnp.einsum("btkgh,bksh->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(h)
    scores = jnp.where(mask[:, :, None], scores, NEG_INF)  # mask [B, 1, 1, T, S]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksh->btkgh", probs, v).reshape(b, t, n, h)


class SelfAttention(nn.Module):
    """Causal self-attention; with a layer cache {'k', 'v'} [B, K, S, H] it decodes incrementally."""

    config: ModelConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # [B, T] position of each token within its document (for RoPE)
        segment_ids: jax.Array,  # [B, T]
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,  # scalar: slots already filled in the cache
        cache_segment_ids: jax.Array | None = None,  # [B, S], this call's segments already written
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        c = self.config
        d, n, kv, h = c.embed_dim, c.num_heads, c.kv_heads, c.head_dim
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, ops=self.ops)
        bias = c.use_bias or c.qkv_bias

        def project(name: str, heads: int, axis: str, act_axis: str) -> jax.Array:
            proj = Projection("btd,dnh->btnh", (d, heads, h), (axes.EMBED, axis, axes.HEAD_DIM),
                              (axis, axes.HEAD_DIM) if bias else None, name=name, **kw)
            return nn.with_logical_constraint(proj(x), (axes.BATCH, axes.LENGTH, act_axis, None))

        q = project("query", n, axes.HEADS, axes.ACT_HEADS)  # [B, T, N, H]
        k = project("key", kv, axes.KV_HEADS, axes.ACT_KV_HEADS)  # [B, T, K, H]
        v = project("value", kv, axes.KV_HEADS, axes.ACT_KV_HEADS)
        if c.qk_norm:
            q = norm("rmsnorm", c.norm_eps, False, c.dtype, c.param_dtype, "query_norm", axes.HEAD_DIM)(q)
            k = norm("rmsnorm", c.norm_eps, False, c.dtype, c.param_dtype, "key_norm", axes.HEAD_DIM)(k)
        if c.position == "rope":
            freqs = rope_frequencies(h, c.rope_theta, c.rope_scaling, c.rope_factor, c.rope_low_freq_factor,
                                     c.rope_high_freq_factor, c.rope_original_max_len)  # [H/2]
            q, k = rope(q, positions, freqs), rope(k, positions, freqs)
        t = x.shape[1]
        if cache is None:
            slots = jnp.arange(t)
            mask = attention_mask(slots, slots, segment_ids, segment_ids, c.sliding_window)
            out = self.ops.attention(q, k, v, mask, True)
        else:  # the cache holds [B, K, S, H]: the layout its attention matmuls read without a transposed copy
            def write(name: str, new: jax.Array) -> jax.Array:  # new [B, T, K, H] into slots from cache_index
                new = new.transpose(0, 2, 1, 3).astype(cache[name].dtype)
                return jax.lax.dynamic_update_slice_in_dim(cache[name], new, cache_index, axis=2)

            k, v = write("k", k), write("v", v)
            cache = {"k": k, "v": v}
            mask = attention_mask(cache_index + jnp.arange(t), jnp.arange(k.shape[2]), segment_ids, cache_segment_ids,
                                  c.sliding_window)
            out = cached_attention(q, k, v, mask)
        out_proj = Projection(
            "btnh,nhd->btd", (n, h, d), (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
            (axes.EMBED,) if c.use_bias else None, init_std=0.02 / math.sqrt(2 * c.num_layers), name="out", **kw,
        )
        return out_proj(out), cache

"""Decoder-only Transformer (GPT-2 style): learned positions, pre-LayerNorm blocks, GELU MLP, tied embeddings.

`TransformerLM(config)(tokens, positions, segment_ids) -> logits`; with a cache from `init_cache` it also
returns the updated cache, for incremental decoding.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import sharding as shd
from lm.attention import SelfAttention
from lm.config import ModelConfig
from lm.layers import Projection, layer_norm

Cache = dict[str, Any]  # {'index': [], 'segment_ids': [B, S], 'layers': [{'k', 'v'}: [B, S, N, H]] * L}


class Mlp(nn.Module):
    """D -> F -> GELU -> D."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D]
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        h = Projection(
            "btd,df->btf", (c.embed_dim, c.mlp_dim), (shd.EMBED, shd.MLP),
            (shd.MLP,) if c.use_bias else None, name="fc", **kw,
        )(x)
        h = nn.with_logical_constraint(nn.gelu(h, approximate=True), (shd.BATCH, shd.LENGTH, shd.ACT_MLP))
        return Projection(
            "btf,fd->btd", (c.mlp_dim, c.embed_dim), (shd.MLP, shd.EMBED),
            (shd.EMBED,) if c.use_bias else None, init_std=0.02 / math.sqrt(2 * c.num_layers), name="proj", **kw,
        )(h)


class Block(nn.Module):
    """x + attention(norm(x)), then + mlp(norm(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, segment_ids, cache=None, cache_index=None, cache_segment_ids=None):
        c = self.config
        h = layer_norm(c.use_bias, c.dtype, c.param_dtype, "norm_attn")(x)
        h, cache = SelfAttention(c, name="attn")(h, segment_ids, cache, cache_index, cache_segment_ids)
        x = x + h
        x = x + Mlp(c, name="mlp")(layer_norm(c.use_bias, c.dtype, c.param_dtype, "norm_mlp")(x))
        return nn.with_logical_constraint(x, (shd.BATCH, shd.LENGTH, shd.ACT_EMBED)), cache


class TransformerLM(nn.Module):
    """tokens [B, T] -> logits [B, T, V] in float32."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int32
        positions: jax.Array,  # [B, T] position of each token within its document
        segment_ids: jax.Array,  # [B, T] document of each token; 0 = padding
        cache: Cache | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        c = self.config
        normal = nn.initializers.normal(0.02)
        wte = self.param(
            "token_embedding", nn.with_logical_partitioning(normal, (shd.VOCAB, shd.EMBED)),
            (c.vocab_size, c.embed_dim), c.param_dtype,
        )
        wpe = self.param(
            "position_embedding", nn.with_logical_partitioning(normal, (shd.POSITION, shd.EMBED)),
            (c.max_len, c.embed_dim), c.param_dtype,
        )
        # Look-ups read whole rows: gather the tables' model dimension first (FSDP shards it).
        rows = nn.with_logical_constraint(wte, (shd.VOCAB, None))  # [V, D]
        pos = nn.with_logical_constraint(wpe, (None, None))  # [L, D]
        x = (jnp.take(rows, tokens, axis=0) + jnp.take(pos, positions, axis=0)).astype(c.dtype)  # [B, T, D]
        x = nn.with_logical_constraint(x, (shd.BATCH, shd.LENGTH, shd.ACT_EMBED))

        index = kv_segments = None
        new_layers = []
        if cache is not None:
            index = cache["index"]
            kv_segments = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, index, axis=1)
        for i in range(c.num_layers):
            layer_cache = None if cache is None else cache["layers"][i]
            x, layer_cache = Block(c, name=f"block_{i}")(x, segment_ids, layer_cache, index, kv_segments)
            new_layers.append(layer_cache)

        x = layer_norm(c.use_bias, c.dtype, c.param_dtype, "norm_final")(x)
        logits = jnp.einsum("btd,vd->btv", x, wte.astype(c.dtype), preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(logits, (shd.BATCH, shd.LENGTH, shd.ACT_VOCAB))
        if cache is None:
            return logits
        new_cache = {"index": index + tokens.shape[1], "segment_ids": kv_segments, "layers": new_layers}
        return logits, new_cache


def init_cache(config: ModelConfig, batch: int, length: int | None = None) -> Cache:
    """An empty KV cache of `length` slots (default: the context length)."""
    length = length or config.max_len
    shape = (batch, length, config.num_heads, config.head_dim)
    layer = lambda: {"k": jnp.zeros(shape, config.dtype), "v": jnp.zeros(shape, config.dtype)}  # noqa: E731
    return {
        "index": jnp.zeros((), jnp.int32),
        "segment_ids": jnp.zeros((batch, length), jnp.int32),
        "layers": [layer() for _ in range(config.num_layers)],
    }

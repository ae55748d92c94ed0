"""Decoder-only Transformer: GPT-2 style (learned positions, LayerNorm, GELU, biases, tied embeddings) or
Llama style (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head), by config.

`TransformerLM(config, ops)(tokens, positions, segment_ids) -> logits`; with a cache from `init_cache` it also
returns the updated cache, for incremental decoding. `ops` (lm/model/ops.py) are the projections, look-ups
and attention it calls: plain XLA unless a backend hands it others (lm/backends/select.py). Layers are
scanned (one compiled layer, parameters stacked on a leading 'layers' axis; `scan_unroll` layers per loop
iteration, all of them with 0) or unrolled (one set of parameters per layer), and optionally
rematerialized, by config.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import axes
from lm.model import tree
from lm.model.attention import SelfAttention
from lm.model.config import REMATS, ModelConfig
from lm.model.layers import Projection, norm
from lm.model.ops import Ops

Cache = dict[str, Any]  # {'index': [], 'segment_ids': [B, S], 'k' and 'v': [L, B, K, S, H] or L x [B, K, S, H]}



class Mlp(nn.Module):
    """D -> F -> GELU -> D, or D -> (SiLU(gate) * up) F -> D."""

    config: ModelConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D]
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, ops=self.ops)
        bias = (axes.MLP,) if c.use_bias else None

        def up(name: str) -> jax.Array:
            return Projection("btd,df->btf", (c.embed_dim, c.mlp_dim), (axes.EMBED, axes.MLP), bias, name=name, **kw)(x)

        h = nn.silu(up("gate")) * up("up") if c.mlp == "swiglu" else nn.gelu(up("fc"), approximate=True)
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.ACT_MLP))  # [B, T, F]
        return Projection(
            "btf,fd->btd", (c.mlp_dim, c.embed_dim), (axes.MLP, axes.EMBED), (axes.EMBED,) if c.use_bias else None,
            init_std=0.02 / math.sqrt(2 * c.num_layers), name="proj", **kw,
        )(h)


class Block(nn.Module):
    """x + attention(norm(x)), then + mlp(norm(x))."""

    config: ModelConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache=None, cache_index=None, cache_segment_ids=None):
        c = self.config
        h = norm(c.norm, c.norm_eps, c.use_bias, c.dtype, c.param_dtype, "norm_attn")(x)
        h, cache = SelfAttention(c, self.ops, name="attn")(h, positions, segment_ids, cache, cache_index,
                                                           cache_segment_ids)
        x = x + h
        h = norm(c.norm, c.norm_eps, c.use_bias, c.dtype, c.param_dtype, "norm_mlp")(x)
        x = x + Mlp(c, self.ops, name="mlp")(h)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED)), cache


class TransformerLM(nn.Module):
    """tokens [B, T] -> logits [B, T, V] in float32 ([B, T, V'] with `padded_vocab`)."""

    config: ModelConfig
    ops: Ops = Ops()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int32
        positions: jax.Array,  # [B, T] position of each token within its document
        segment_ids: jax.Array,  # [B, T] document of each token; 0 = padding
        cache: Cache | None = None,
        padded_vocab: bool = False,  # logits over all V' head columns, the padding ones at -1e30
    ) -> jax.Array | tuple[jax.Array, Cache]:
        c = self.config
        normal = nn.initializers.normal(0.02)
        wte = self.param("token_embedding", nn.with_logical_partitioning(normal, (axes.VOCAB, axes.EMBED)),
                         (c.padded_vocab, c.embed_dim), c.param_dtype)
        # Look-ups read whole rows: gather the tables' model dimension first (FSDP shards it). (A table may be
        # a tree of arrays, e.g. the sampler's int8 values and scales: the constraint reaches every part.)
        x = self.ops.take(jax.tree.map(lambda a: nn.with_logical_constraint(a, (axes.VOCAB, None)), wte),
                          tokens)  # [B, T, D]
        if c.position == "learned":
            wpe = self.param("position_embedding", nn.with_logical_partitioning(normal, (axes.POSITION, axes.EMBED)),
                             (c.max_len, c.embed_dim), c.param_dtype)
            x = x + self.ops.take(jax.tree.map(lambda a: nn.with_logical_constraint(a, (None, None)), wpe), positions)
        x = nn.with_logical_constraint(x.astype(c.dtype), (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))

        index = kv_segments = layer_caches = None
        if cache is not None:
            index = cache["index"]
            kv_segments = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, index, axis=1)
            layer_caches = {"k": cache["k"], "v": cache["v"]}  # [L, B, K, S, H], or L x [B, K, S, H] unrolled
        block = Block
        if c.remat != "none":
            policy = getattr(jax.checkpoint_policies, REMATS[c.remat])
            block = nn.remat(Block, policy=policy, prevent_cse=not c.scan_layers)
        if c.scan_layers:
            blocks = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.num_layers,
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast),
                metadata_params={nn.PARTITION_NAME: axes.LAYERS}, unroll=c.scan_unroll or c.num_layers,
            )(c, self.ops, name=tree.SCANNED)
            x, layer_caches = blocks(x, positions, segment_ids, layer_caches, index, kv_segments)
        else:
            new = []
            for i in range(c.num_layers):
                layer = None if cache is None else {"k": layer_caches["k"][i], "v": layer_caches["v"][i]}
                x, layer = block(c, self.ops, name=tree.layer_name(i))(x, positions, segment_ids, layer, index,
                                                                      kv_segments)
                new.append(layer)
            if cache is not None:  # one array per layer: each is updated in place, none is copied
                layer_caches = {"k": tuple(a["k"] for a in new), "v": tuple(a["v"] for a in new)}

        x = norm(c.norm, c.norm_eps, c.use_bias, c.dtype, c.param_dtype, "norm_final")(x)
        if c.tie_embeddings:
            head, equation = wte, "btd,vd->btv"  # [V', D] (V' = padded_vocab)
        else:
            head = self.param("lm_head", nn.with_logical_partitioning(normal, (axes.EMBED, axes.VOCAB)),
                              (c.embed_dim, c.padded_vocab), c.param_dtype)
            equation = "btd,dv->btv"
        # The matmul's output is in the compute dtype so that its backward runs in it too; loss in float32.
        logits = self.ops.einsum(equation, x, head, c.dtype).astype(jnp.float32)  # [B, T, V']
        if not padded_vocab:
            logits = logits[..., :c.vocab_size]
        elif c.padded_vocab > c.vocab_size:  # masked, not cut: a cut's gradient is a pad, one more full pass
            logits = jnp.where(jnp.arange(c.padded_vocab) < c.vocab_size, logits, -1e30)
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.ACT_VOCAB))
        if cache is None:
            return logits
        return logits, {"index": index + tokens.shape[1], "segment_ids": kv_segments, **layer_caches}


def init_cache(config: ModelConfig, batch: int, length: int | None = None) -> Cache:
    """An empty KV cache of `length` slots (default: the context length): keys and values [L, B, K, S, H] for
    scanned layers, a tuple of L arrays [B, K, S, H] for unrolled ones."""
    length = length or config.max_len
    shape = (batch, config.kv_heads, length, config.head_dim)
    if config.scan_layers:
        k = v = jnp.zeros((config.num_layers, *shape), config.dtype)
    else:
        k = v = tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
    return {"index": jnp.zeros((), jnp.int32), "segment_ids": jnp.zeros((batch, length), jnp.int32), "k": k, "v": v}

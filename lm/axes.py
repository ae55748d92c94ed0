"""Axis names: the logical names every parameter and constrained activation of the model gives its dimensions,
the device mesh's axes, and the default rules (config data, `config.mesh.rules`) that map the one onto the
other (lm/parallel/mesh.py applies them)."""

from typing import Any

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
POSITION = "position"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
LAYERS = "layers"  # the stacking axis of scanned layers
# Activation axes: separate names, so a parameter axis and an activation axis may shard differently.
BATCH = "act_batch"
LENGTH = "act_length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

# What each parameter axis is called in the config, for error messages.
CONFIG_NAMES = {EMBED: "model.embed_dim", HEADS: "model.num_heads", MLP: "model.mlp_dim",
                KV_HEADS: "model.num_kv_heads", VOCAB: "vocabulary size",
                HEAD_DIM: "head dim (embed_dim / num_heads)", POSITION: "model.max_len"}

Rules = tuple[tuple[str, Any], ...]

# A name takes the first rule whose mesh axes the array does not use yet, so later rules are fallbacks:
# a kernel shards `embed` over fsdp and `mlp` over tensor; a bias with no `embed` axis shards `mlp` (or
# `head_dim`) over fsdp instead, so that FSDP leaves no parameter replicated.
DEFAULT_RULES: Rules = (
    (EMBED, "fsdp"),
    (VOCAB, "tensor"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (MLP, ("tensor", "fsdp")),
    (MLP, "tensor"),
    (HEAD_DIM, "fsdp"),
    (POSITION, None),
    (LAYERS, None),
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
)

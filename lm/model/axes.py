"""Logical axis names: every parameter and constrained activation of the model names each of its dimensions
with one of these. lm/parallel/mesh.py maps them onto the mesh axes by rules that are config data."""

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

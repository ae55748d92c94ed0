"""Model FLOPs per token (lm/flops.py) against counts done by hand."""

import dataclasses

import flax.linen as nn
import jax
import pytest

from lm import flops
from lm.backends import select
from lm.model.config import ModelConfig
from lm.parallel.placement import boxed_params

GPT2 = ModelConfig(vocab_size=60, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=128, vocab_multiple=64)
LLAMA = dataclasses.replace(GPT2, mlp_dim=64, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu",
                            use_bias=False, tie_embeddings=False, qk_norm=True)

# By hand, D = 32, F = 128 (GPT-2) or 64 (Llama), head dim 8, context T = 16, vocabulary 60 padded to 64 rows.
# GPT-2 layer: q, k, v kernels 3 x 32 x 32 = 3072 + biases 96; out 1024 + 32; fc 32 x 128 = 4096 + 128; proj 4096
# + 32; two LayerNorms 2 x 64 = 128: 12704. Model: 2 layers + final LayerNorm 64 + the tied head's 60 x 32 = 1920
# rows used (positions 16 x 32 and the 4 padding rows are look-ups or unused): 27392.
GPT2_FLOPS = 6 * (2 * 12704 + 64 + 60 * 32) + 12 * 2 * 32 * 16
# Llama layer: q 32 x 32 = 1024, k and v 32 x 2 x 8 = 512 each, out 1024; gate, up, proj 3 x 32 x 64 = 6144; two
# RMSNorm scales 64; query and key norms 2 x 8: 9296. Model: 2 layers + final norm 32 + head 32 x 60 = 1920 (the
# input table is a look-up): 20544.
LLAMA_FLOPS = 6 * (2 * 9296 + 32 + 32 * 60) + 12 * 2 * 32 * 16


@pytest.mark.parametrize("cfg,want", [(GPT2, GPT2_FLOPS), (LLAMA, LLAMA_FLOPS)], ids=["gpt2", "llama"])
def test_flops_per_token_equal_a_count_by_hand(cfg, want):
    params = jax.eval_shape(lambda: nn.unbox(boxed_params(select.model(cfg), 0)))
    assert flops.flops_per_token(cfg, params) == want

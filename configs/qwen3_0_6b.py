"""Qwen3-0.6B's shape (0.60B parameters with its 151,936-id vocabulary): 28 layers, 16 heads of width 128 sharing
8 kv heads, model width 1024.

    python -m lm.train --config configs/qwen3_0_6b.py --workdir runs/qwen3_0_6b --config.data.path=/path/to/text

RoPE (theta 1,000,000), RMSNorm (eps 1e-6) and QK-norm, SwiGLU (width 3072), heads wider than width / heads,
no biases, tied embeddings, context 2048, bfloat16 compute. The tokenizer asks for a 151,936-piece BPE trained
on your data; `--config.tokenizer.path=DIR` takes Qwen's own (a folder with its tokenizer.json). Fine-tuning the
released weights: `python -m lm.convert --hf_dir DIR --workdir runs/qwen3` then `--config.init_from=runs/qwen3`.
Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.embed_dim=64
--config.model.head_dim=32 --config.model.mlp_dim=128 --config.model.max_len=64 --config.tokenizer.vocab_size=512
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=151936)
    c.model.update(num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, embed_dim=1024, mlp_dim=3072,
                   max_len=2048, position="rope", rope_theta=1000000.0, norm="rmsnorm", norm_eps=1e-6,
                   qk_norm=True, mlp="swiglu", use_bias=False, tie_embeddings=True, dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=1000, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

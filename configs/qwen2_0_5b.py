"""Qwen2-0.5B's shape (0.49B parameters with its 151,936-id vocabulary): 24 layers, 14 heads sharing 2 kv heads,
width 896.

    python -m lm.train --config configs/qwen2_0_5b.py --workdir runs/qwen2_0_5b --config.data.path=/path/to/text

RoPE (theta 1,000,000), RMSNorm (eps 1e-6), SwiGLU (width 4864), biases on the query, key and value projections
only, tied embeddings, context 2048, bfloat16 compute. The tokenizer asks for a 151,936-piece BPE trained on
your data; `--config.tokenizer.path=DIR` takes Qwen's own (a folder with its tokenizer.json). Fine-tuning the
released weights: `python -m lm.convert --hf_dir DIR --workdir runs/qwen2` then `--config.init_from=runs/qwen2`.
Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.embed_dim=64
--config.model.head_dim=16 --config.model.mlp_dim=128 --config.model.max_len=64 --config.tokenizer.vocab_size=512
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=151936)
    c.model.update(num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, embed_dim=896, mlp_dim=4864,
                   max_len=2048, position="rope", rope_theta=1000000.0, norm="rmsnorm", norm_eps=1e-6,
                   qkv_bias=True, mlp="swiglu", use_bias=False, tie_embeddings=True, dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=1000, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

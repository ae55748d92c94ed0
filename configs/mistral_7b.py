"""Mistral 7B v0.1's shape (7.24B parameters with its 32,000-id vocabulary): 32 layers, 32 heads sharing 8 kv
heads, width 4096, each query seeing the 4,096 tokens up to its own.

    python -m lm.train --config configs/mistral_7b.py --workdir runs/mistral_7b --config.data.path=/path/to/text \
        --config.mesh.data=1 --config.mesh.fsdp=-1

RoPE (theta 10,000), RMSNorm, SwiGLU (width 14336), grouped-query attention with a 4,096-token sliding window
(the context is 8192, so the window matters), no biases, untied head, bfloat16 compute, every layer
rematerialized. The tokenizer asks for a 32,000-piece BPE trained on your data; `--config.tokenizer.path=DIR`
takes Mistral's own (a folder with its tokenizer.json). Fine-tuning the released weights: `python -m lm.convert
--hf_dir DIR --workdir runs/mistral` then `--config.init_from=runs/mistral`. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.embed_dim=64
--config.model.head_dim=16 --config.model.mlp_dim=128 --config.model.max_len=64 --config.model.sliding_window=16
--config.tokenizer.vocab_size=512 --config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=32000)
    c.model.update(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, embed_dim=4096, mlp_dim=14336,
                   max_len=8192, sliding_window=4096, position="rope", rope_theta=10000.0, norm="rmsnorm",
                   norm_eps=1e-5, mlp="swiglu", use_bias=False, tie_embeddings=False, remat="full",
                   dtype="bfloat16", vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=1000, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

"""Llama 3.2 1B's shape (1.24B parameters with its 128,256-id vocabulary): 16 layers, 32 heads sharing 8 kv heads,
width 2048.

    python -m lm.train --config configs/llama3_1b.py --workdir runs/llama3_1b --config.data.path=/path/to/text \
        --config.mesh.data=1 --config.mesh.fsdp=-1

RoPE (theta 500,000, with Llama 3's stretch of the long wavelengths), RMSNorm, SwiGLU (width 8192),
grouped-query attention, no biases, tied embeddings, context 2048, bfloat16 compute, dots rematerialized. The
tokenizer asks for a 128,256-piece BPE trained on your data; `--config.tokenizer.path=DIR` takes Llama 3's own
(a folder with its tokenizer.json). Fine-tuning the released weights: `python -m lm.convert --hf_dir DIR
--workdir runs/llama3` then `--config.init_from=runs/llama3`. Layers unrolled and the vocabulary padded to a
multiple of 128 rows: faster steps on a GPU. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.embed_dim=64
--config.model.head_dim=16 --config.model.mlp_dim=128 --config.model.max_len=64 --config.tokenizer.vocab_size=512
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=128256)
    c.model.update(num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, embed_dim=2048, mlp_dim=8192,
                   max_len=2048, position="rope", rope_theta=500000.0, rope_scaling="llama3", rope_factor=32.0,
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=8192,
                   norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", use_bias=False, tie_embeddings=True,
                   remat="dots_no_batch", dtype="bfloat16", vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=1000, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

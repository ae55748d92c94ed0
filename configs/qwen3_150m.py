"""A Qwen3-style model of about 150M parameters: 16 layers, 12 heads of width 128 sharing 4 kv heads, width 768.

    python -m lm.train --config configs/qwen3_150m.py --workdir runs/qwen3_150m --config.data.path=/path/to/text

RoPE (theta 1,000,000), RMSNorm (eps 1e-6) and QK-norm, SwiGLU (width 2048), heads wider than width / heads,
no biases, tied embeddings, a 32,000-piece BPE vocabulary, context 1024, bfloat16 compute. Layers unrolled and
the vocabulary padded to a multiple of 128 rows: faster steps on a GPU. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2 --config.model.embed_dim=64
--config.model.head_dim=32 --config.model.mlp_dim=128 --config.model.max_len=64 --config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=32000)
    c.model.update(num_layers=16, num_heads=12, num_kv_heads=4, head_dim=128, embed_dim=768, mlp_dim=2048,
                   max_len=1024, position="rope", rope_theta=1000000.0, norm="rmsnorm", norm_eps=1e-6,
                   qk_norm=True, mlp="swiglu", use_bias=False, tie_embeddings=True, dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=700, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

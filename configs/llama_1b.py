"""A Llama-style model of about 1.1B parameters: 16 layers, 32 heads sharing 8 kv heads, width 2048.

    python -m lm.train --config configs/llama_1b.py --workdir runs/llama_1b --config.data.path=/path/to/text \
        --config.mesh.data=1 --config.mesh.fsdp=-1

RoPE (theta 500,000), RMSNorm, SwiGLU (width 8192), grouped-query attention, no biases, untied output head, a
32,000-piece BPE vocabulary, context 2048, bfloat16 compute, dots rematerialized. Layers unrolled and the
vocabulary padded to a multiple of 128 rows: faster steps on a GPU. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.num_kv_heads=2
--config.model.embed_dim=64 --config.model.mlp_dim=128 --config.model.max_len=64
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=32000)
    c.model.update(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048, mlp_dim=8192, max_len=2048,
                   position="rope", rope_theta=500000.0, norm="rmsnorm", mlp="swiglu", use_bias=False,
                   tie_embeddings=False, remat="dots_no_batch", dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=1000, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

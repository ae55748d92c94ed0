"""GPT-2 small (124M parameters with the GPT-2 vocabulary): 12 layers, 12 heads, width 768, context 1024.

    python -m lm.train --config configs/gpt2_124m.py --workdir runs/gpt2_124m --config.data.path=/path/to/text
    python -m lm.bench --config configs/gpt2_124m.py

GPT-2 style: learned positions, LayerNorm, GELU, biases, tied embeddings; bfloat16 compute, float32
parameters. The tokenizer asks for GPT-2's 50,257 BPE pieces; a small corpus stops earlier (tiny Shakespeare
supports about 35,000). Layers unrolled and the vocabulary padded to a multiple of 128 rows: faster steps on a
GPU. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.embed_dim=64 --config.model.max_len=64
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=50257)
    c.model.update(num_layers=12, num_heads=12, embed_dim=768, max_len=1024, dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=700, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

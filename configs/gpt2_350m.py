"""GPT-2 medium (350M parameters with the GPT-2 vocabulary): 24 layers, 16 heads, width 1024, context 1024.

    python -m lm.train --config configs/gpt2_350m.py --workdir runs/gpt2_350m --config.data.path=/path/to/text

GPT-2 style, bfloat16 compute. Layers unrolled and the vocabulary padded to a multiple of 128 rows: faster
steps on a GPU. Smoke test on a CPU:
--config.model.num_layers=2 --config.model.num_heads=4 --config.model.embed_dim=64 --config.model.max_len=64
--config.train.steps=5.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.tokenizer.update(type="bpe", vocab_size=50257)
    c.model.update(num_layers=24, num_heads=16, embed_dim=1024, max_len=1024, dtype="bfloat16",
                   vocab_multiple=128, scan_layers=False)
    c.train.update(batch_size=32, steps=20000, log_every=10, eval_every=1000, eval_batches=50)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=700, b2=0.95)
    c.checkpoint.update(every=1000)
    return c

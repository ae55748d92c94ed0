"""A tiny model for smoke tests: trains in seconds on a CPU.

    python -m lm.train --config configs/tiny.py --workdir runs/tiny
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.model.update(num_layers=2, num_heads=2, embed_dim=32, max_len=32)
    c.train.update(batch_size=8, steps=20, log_every=5, eval_every=10, eval_batches=8)
    c.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=2)
    c.checkpoint.update(every=10, keep=2)
    return c

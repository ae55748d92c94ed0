"""Character-level GPT on tiny Shakespeare to nanoGPT's validation loss in a sixth of its steps, on a CPU.

    python -m lm.train --config configs/shakespeare_char_fast.py --workdir runs/shakespeare_char_fast

The nanoGPT CPU recipe's data, split and shape (4 layers, 4 heads, context 64, batch 12) with what a modern recipe
changes: Muon for the hidden matrices (AdamW for embeddings, norms and biases) at a learning rate of 3e-2, RoPE
instead of learned positions, width 96 instead of 128, and 340 steps instead of 2000, evaluated once, at the end,
on the whole validation split. docs/performance.md has its figures and where its time goes.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.seed = 1337
    c.tokenizer.type = "char"
    c.model.update(num_layers=4, num_heads=4, embed_dim=96, max_len=64, position="rope", scan_unroll=0)
    c.train.update(batch_size=12, steps=340, eval_every=340)
    c.mesh.cpu_devices = 0  # on a CPU: data-parallel over one device per core (faster at this size)
    c.optim.update(name="muon", lr=3e-2, min_lr=3e-3, warmup_steps=30, b2=0.99)
    c.checkpoint.every = 340
    return c

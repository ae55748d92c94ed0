"""Character-level GPT on tiny Shakespeare: the nanoGPT CPU recipe.

    python -m lm.train --config configs/shakespeare_char.py --workdir runs/shakespeare_char

4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps, lr 1e-3 (100 warmup steps, cosine to 1e-4),
AdamW beta2 0.99, no dropout, the first 90% of the characters for training and the last 10% for validation,
data-parallel over one JAX device per CPU core. nanoGPT's published result: validation loss 1.88; the README's
table has this recipe's.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.seed = 1337
    c.tokenizer.type = "char"
    # Scanned layers unrolled into straight-line code: fast on a CPU, with a few stacked parameter arrays.
    c.model.update(num_layers=4, num_heads=4, embed_dim=128, max_len=64, scan_unroll=0)
    c.train.update(batch_size=12, steps=2000)
    c.mesh.cpu_devices = 0  # on a CPU: data-parallel over one device per core (faster at this size)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
    # A downstream score with each evaluation: the real next line of a speech among four orders of its words, from
    # the validation split (lm/data/shakespeare_word_order.jsonl, made by experiments/word_order_task.py; chance 25%).
    c.eval.tasks = "shakespeare_word_order"
    return c

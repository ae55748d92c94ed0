"""BPE-tokenized GPT on tiny Shakespeare: the char recipe with a 2000-piece BPE vocabulary.

    python -m lm.train --config configs/shakespeare_bpe.py --workdir runs/shakespeare_bpe

Same model, batch and schedule as configs/shakespeare_char.py; a context of 64 BPE tokens covers about
180 characters. Compare the two by validation bits per byte (loss per token does not compare); the README's
table has the results.
"""

import ml_collections

from lm.config import defaults


def get_config() -> ml_collections.ConfigDict:
    c = defaults()
    c.seed = 1337
    c.tokenizer.update(type="bpe", vocab_size=2000)
    c.model.update(num_layers=4, num_heads=4, embed_dim=128, max_len=64, scan_unroll=0)
    c.train.update(batch_size=12, steps=2000)
    c.mesh.cpu_devices = 0  # on a CPU: data-parallel over one device per core (faster at this size)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
    # A downstream score with each evaluation: the real next line of a speech among four orders of its words, from
    # the validation split (lm/data/shakespeare_word_order.jsonl, made by experiments/word_order_task.py; chance 25%).
    c.eval.tasks = "shakespeare_word_order"
    return c

"""Input-pipeline speed (`python -m lm.bench --config X --data`): tokens/s that the training batches of prepared
shards deliver in one process (`lm.data.batches.TrainBatches`: shuffled rows read from memory-mapped shards,
segment ids, positions and loss mask), against the tokens/s that the config's train step consumes, measured in
the same run."""

import time
from typing import Any

from lm.data import corpus
from lm.data.batches import TrainBatches
from lm.tokenizer.kinds import AnyTokenizer


def loader_speed(d: Any, tokenizer: AnyTokenizer, row_len: int, batch: int, seconds: float = 3.0) -> dict[str, float]:
    """Tokens/s (trained on: `row_len - 1` per row, as the train step counts them) and batches/s of the training
    batches of `config.data` (prepared first if need be)."""
    components, _, _ = corpus.open_data(d, tokenizer, row_len)
    batches = TrainBatches(components, batch, seed=0)
    next(batches)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(batches)
        calls += 1
    per_s = calls / (time.perf_counter() - start)
    return {"tokens_per_s": per_s * batch * (row_len - 1), "batches_per_s": per_s,
            "tokens": float(sum(c.rows.tokens for c in components))}

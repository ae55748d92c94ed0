"""Faults injected on purpose, outside the jitted step, to try how a run handles them (`config.train.nan_steps`):
the batch of such a step gets a token id past the vocabulary, whose embedding look-up reads NaN (JAX's 'fill'
mode), so the step's loss and gradients are not finite."""

from collections.abc import Sequence

import numpy as np


def corrupted(batch: dict[str, np.ndarray], step: int, nan_steps: Sequence[int], vocab_rows: int) -> dict[str,
                                                                                                      np.ndarray]:
    """`batch` (this process's rows), with one token id of its first row past the `vocab_rows` embedding rows if
    `step` is one of `nan_steps`."""
    if step not in nan_steps:
        return batch
    tokens = batch["tokens"].copy()
    tokens[0, 0] = vocab_rows
    return {**batch, "tokens": tokens}

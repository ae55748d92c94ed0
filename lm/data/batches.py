"""Rows of token splits (shards.py) -> this process's part of each global batch: shuffled and endless for
training, in order once for evaluation.

Training draws row after row from each corpus's rows in a fresh random order each epoch (grain's index_shuffle:
the order is computed, never stored). With one corpus, batch k is its rows k*B .. (k+1)*B - 1 of that order;
with a mixture, each of batch k's B rows picks its corpus at random by the weights (a generator seeded with the
run's seed and k) and takes that corpus's next row. Process p of P reads rows p*B/P .. (p+1)*B/P - 1 of each
batch alone, so the global batches are the same whatever the process count. The data position is a few
integers: the batches consumed and the rows each corpus gave, so resume replays exactly what came next. When a
resumed run's weights differ, the new weights draw from the next batch on, each corpus going on from its own
position (a corpus new to the run starts at its first row).
"""

import dataclasses
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from grain import experimental as grain_exp

from lm.data.shards import FIELDS, Split
from lm.errors import UserError

STATE_FORMAT = 2


@dataclasses.dataclass
class Component:
    """One corpus of the training data: its name (as the config gives it), weight and training rows."""

    name: str
    weight: float
    rows: Split


def local_rows(global_batch: int, process_index: int, process_count: int) -> range:
    """The rows of each global batch this process reads; checks that the processes split the batch."""
    if global_batch % process_count:
        raise UserError(f"config.train.batch_size={global_batch} must be a multiple of the process count "
                        f"{process_count}")
    per = global_batch // process_count
    return range(process_index * per, (process_index + 1) * per)


def _shuffled(position: int, count: int, seed: int) -> int:
    """The row at `position` of the endless stream of `count` rows, reshuffled every epoch."""
    epoch, i = divmod(position, count)
    return grain_exp.index_shuffle(i, max_index=count - 1, seed=(seed * 1_000_003 + epoch) % (1 << 31), rounds=4)


class TrainBatches:
    """Endless iterator of this process's rows of each global training batch: dicts of [local rows, row_len].

    With `ahead` > 0 a background thread reads up to that many batches ahead of the consumer (while the train
    step runs); the state saved with a checkpoint is that of the batches consumed.
    """

    def __init__(self, components: list[Component], global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, ahead: int = 0):
        for c in components:
            if not c.rows.count:
                raise UserError(f"corpus {c.name} has fewer training tokens than one row of config.model.max_len + 1 "
                                f"= {c.rows.row_len}; use more text or a shorter context")
        self.components, self.batch, self.seed, self.ahead = components, global_batch, seed, ahead
        self.local = local_rows(global_batch, process_index, process_count)
        weights = np.array([c.weight for c in components], np.float64)
        self.weights = weights / weights.sum()
        self._next = (0, {c.name: 0 for c in components})  # (batches, rows taken per corpus) to read next
        self._consumed = self._next
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> "TrainBatches":
        return self

    def _plan(self, k: int, taken: dict[str, int]) -> tuple[list[tuple[int, int]], dict[str, int]]:
        """Batch k: (corpus, position) of each of its rows, and the rows taken per corpus after it."""
        if len(self.components) == 1:
            picks = np.zeros(self.batch, np.int64)
        else:
            picks = np.random.default_rng([self.seed, k]).choice(len(self.components), self.batch, p=self.weights)
        after, rows = dict(taken), []
        for c in picks:
            name = self.components[c].name
            rows.append((int(c), after[name]))
            after[name] += 1
        return rows, after

    def _produce(self) -> tuple[dict[str, np.ndarray], tuple[int, dict[str, int]]]:
        k, taken = self._next
        rows, after = self._plan(k, taken)
        mine = [rows[j] for j in self.local]
        out = {f: np.zeros((len(mine), self.components[0].rows.row_len), np.int32) for f in FIELDS}
        for c, comp in enumerate(self.components):
            at = [j for j, (which, _) in enumerate(mine) if which == c]
            if at:
                indices = [_shuffled(mine[j][1], comp.rows.count, self.seed) for j in at]
                got = comp.rows.rows(indices)
                for f in FIELDS:
                    out[f][at] = got[f]
        self._next = (k + 1, after)
        return out, self._next

    def _run_ahead(self) -> None:
        """The background thread: fills the queue with (batch, position after it), or the error that stopped it."""
        while not self._stop.is_set():
            try:
                item: Any = self._produce()
            except Exception as e:  # noqa: BLE001 (handed to the consumer, which raises it)
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def __next__(self) -> dict[str, np.ndarray]:
        if not self.ahead:
            batch, self._consumed = self._produce()
            return batch
        if self._thread is None:
            self._queue, self._stop = queue.Queue(maxsize=self.ahead), threading.Event()
            self._thread = threading.Thread(target=self._run_ahead, name="batches-ahead", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        batch, self._consumed = item
        return batch

    def _halt(self) -> None:
        """Stops the background thread and drops what it read ahead."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def get_state(self) -> dict[str, Any]:
        """The data position after the batches consumed so far (the same on every process)."""
        k, taken = self._consumed
        return {"format": STATE_FORMAT, "batches": k, "rows": dict(taken)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Goes on from a position of `get_state()`, saved on any number of processes and with any weights."""
        self._halt()
        saved = state["rows"]
        gone = sorted(set(saved) - {c.name for c in self.components})
        if gone:
            print(f"warning: the checkpoint's data mixture has {', '.join(gone)}, which this run's does not; going on "
                  "without it", file=sys.stderr, flush=True)
        self._next = self._consumed = (state["batches"], {c.name: saved.get(c.name, 0) for c in self.components})


def eval_batches(splits: list[Split], global_batch: int, process_index: int = 0, process_count: int = 1,
                 max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each batch of one ordered pass over the rows of `splits` (every token; at most
    `max_batches` batches if positive), made as they are read, so a large split is never held in memory; rows
    past the end are padding (segment id 0)."""
    local = local_rows(global_batch, process_index, process_count)
    first = np.cumsum([0] + [split.count for split in splits])  # [splits + 1]: global row index of each start
    count = -(-int(first[-1]) // global_batch)
    if max_batches:
        count = min(count, max_batches)
    for b in range(count):
        out = {f: np.zeros((len(local), splits[0].row_len), np.int32) for f in FIELDS}
        wanted = np.array([b * global_batch + j for j in local])
        which = np.searchsorted(first, wanted, "right") - 1  # the split of each row (len(splits): past the end)
        for s, split in enumerate(splits):
            at = np.flatnonzero(which == s)
            if len(at):
                got = split.rows(wanted[at] - first[s])
                for f in FIELDS:
                    out[f][at] = got[f]
        yield out

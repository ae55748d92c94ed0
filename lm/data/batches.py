"""Documents -> packed, shuffled, per-process batches, through a grain pipeline over a corpus (sources.py).

Documents are shuffled per epoch with a seed, tokenized as [BOS] prompt text [EOS] with a loss mask that is 0
over BOS and the prompt, concatenated and split into rows of `max_len + 1` tokens with segment ids and
positions, and batched. A global batch is drawn from `shards` independent pipelines (shard s reads documents
s, s + shards, ...) that are split among the processes, so each process reads only its own rows, and runs with
the same `shards` see the same batches whatever the number of processes. The pipelines' state is a small JSON
dict that travels with every checkpoint, so resume replays exactly the batches that came next, on any process
count.
"""

import copy
import itertools
import json
import queue
import threading
from typing import Any

import grain
import numpy as np
from grain import experimental as grain_exp

from lm.data.sources import Corpus
from lm.errors import UserError
from lm.parallel import processes
from lm.tokenizer.kinds import AnyTokenizer


class _Tokenize(grain.transforms.Map):
    """[BOS] prompt text [EOS] -> tokens and loss_mask (1 where the token is a target the loss counts: the
    text's tokens and EOS, not BOS or the prompt's)."""

    def __init__(self, tokenizer: AnyTokenizer):
        self.tokenizer = tokenizer

    def map(self, record: dict[str, bytes]) -> dict[str, np.ndarray]:
        t = self.tokenizer
        prompt = t.encode(record["prompt"].decode("utf-8")) if record["prompt"] else []
        text = t.encode(record["text"].decode("utf-8"))
        ids = [t.bos_id, *prompt, *text, t.eos_id]
        mask = np.ones(len(ids), np.int32)
        mask[:1 + len(prompt)] = 0
        return {"tokens": np.asarray(ids, np.int32), "loss_mask": mask}


def _rows(corpus: Corpus, split: str, tokenizer: AnyTokenizer, row_len: int, shard: int, shards: int,
          seed: int | None) -> grain.IterDataset:
    """Packed rows {'tokens', 'segment_ids', 'positions', 'loss_mask'} [row_len] of one shard; endless and shuffled
    if seeded."""
    docs = corpus.documents(split)[shard::shards]
    if seed is not None:
        docs = docs.shuffle(seed=seed).repeat(None)
    docs = docs.map(_Tokenize(tokenizer)).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    packed = grain_exp.ConcatThenSplitIterDataset(docs, length_struct={"tokens": row_len, "loss_mask": row_len})
    return packed.map(lambda r: {"tokens": r["tokens"], "segment_ids": r["tokens_segment_ids"],
                                 "positions": r["tokens_positions"], "loss_mask": r["loss_mask"]})


def local_shards(shards: int, global_batch: int, process_index: int, process_count: int) -> range:
    """The shards this process reads; checks that shards split the batch and the processes split the shards."""
    if shards % process_count or global_batch % shards:
        raise UserError(f"config.data.shards={shards} must be a multiple of the process count {process_count} and "
                        f"divide config.train.batch_size={global_batch}")
    per = shards // process_count
    return range(process_index * per, (process_index + 1) * per)


class TrainBatches:
    """Endless iterator of this process's rows of each global training batch: dicts of [local rows, row_len].

    With `ahead` > 0 a background thread reads, tokenizes and packs up to that many batches ahead of the
    consumer (while the train step runs); the state saved with a checkpoint is that of the batches consumed.
    """

    def __init__(self, corpus: Corpus, tokenizer: AnyTokenizer, row_len: int, global_batch: int, seed: int,
                 shards: int = 1, process_index: int = 0, process_count: int = 1, ahead: int = 0):
        self.shards, self.rows, self.ahead = shards, global_batch // shards, ahead
        self.local = local_shards(shards, global_batch, process_index, process_count)
        self._iters = {s: iter(_rows(corpus, "train", tokenizer, row_len, s, shards, seed).batch(self.rows))
                       for s in self.local}
        self._positions = self._read_positions()  # after the batches consumed so far
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> "TrainBatches":
        return self

    def _read_positions(self) -> dict[str, Any]:
        return copy.deepcopy({str(s): self._iters[s].get_state() for s in self.local})

    def _produce(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        parts = [next(self._iters[s]) for s in self.local]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, self._read_positions()

    def _run_ahead(self) -> None:
        """The background thread: fills the queue with (batch, positions after it), or the error that stopped it."""
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
            batch, self._positions = self._produce()
            return batch
        if self._thread is None:
            self._queue, self._stop = queue.Queue(maxsize=self.ahead), threading.Event()
            self._thread = threading.Thread(target=self._run_ahead, name="batches-ahead", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        batch, self._positions = item
        return batch

    def _halt(self) -> None:
        """Stops the background thread and drops what it read ahead (the iterators are then past it)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def get_state(self) -> dict[str, Any]:
        """This process's pipelines' positions, after the batches consumed so far."""
        return {"shards": self.shards, "positions": self._positions}

    def global_state(self) -> dict[str, Any]:
        """Every process's pipelines' positions, merged (all processes must call it together)."""
        mine = json.dumps(self.get_state()["positions"]).encode()
        positions = {k: v for b in processes.allgather_bytes(mine) for k, v in json.loads(b).items()}
        return {"shards": self.shards, "positions": positions}

    def set_state(self, state: dict[str, Any]) -> None:
        """Rewinds to a state from `global_state()`, saved on any number of processes."""
        if state["shards"] != self.shards:
            raise UserError(f"the checkpoint's data order has {state['shards']} shards but this run has {self.shards}; "
                            f"set --config.data.shards={state['shards']}")
        self._halt()
        for s in self.local:
            self._iters[s].set_state(state["positions"][str(s)])
        self._positions = self._read_positions()


def eval_batches(corpus: Corpus, tokenizer: AnyTokenizer, row_len: int, global_batch: int, shards: int = 1,
                 process_index: int = 0, process_count: int = 1, split: str = "validation",
                 max_batches: int = 0) -> list[dict[str, np.ndarray]]:
    """This process's rows of each batch of one ordered pass over a split (at most `max_batches` if positive).

    Every process gets the same number of batches; rows past the end of a shard are padding (segment id 0).
    """
    rows = global_batch // shards
    local = local_shards(shards, global_batch, process_index, process_count)
    limit = max_batches * rows if max_batches else None
    per_shard = [list(itertools.islice(_rows(corpus, split, tokenizer, row_len, s, shards, None), limit))
                 for s in local]
    count = processes.global_max(max(-(-len(r) // rows) for r in per_shard))
    empty = {k: np.zeros(row_len, np.int32) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    batches = []
    for b in range(count):
        chunk = [r[b * rows:(b + 1) * rows] for r in per_shard]
        chunk = [c + [empty] * (rows - len(c)) for c in chunk]
        batches.append({k: np.stack([row[k] for c in chunk for row in c]) for k in empty})
    return batches

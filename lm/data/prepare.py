"""Documents -> prepared token shards, once per corpus and tokenizer: tokenized in parallel over the host's
cores (processes), streamed with bounded memory, resumable and atomic.

A prepared folder holds (and lm writes into an empty folder or one that holds its mark, and deletes nothing but
these names: lm/folders.py):
  .lm-prepared      the mark of a folder lm prepares into
  manifest.json     written last (the folder is complete once it exists): the tokenizer's checksum, the source's
                    identity (files, sizes, modification times, settings), and each shard's token and document
                    counts per split (and of tokens the tokenizer could not read: <unk>) and file checksums
  tokenizer.json    the tokenizer it was prepared with (a run started on the folder takes it)
  source.json       the source's identity, written first (a rerun over changed files starts over)
  tasks/NNNNN.json  a finished task's shards (kept when a preparation is killed: the rerun skips the task)
  NNNNN-PPPP/       shard PPPP of task NNNNN, which appears whole (written under another name, then renamed):
                    {split}.tokens.npy [tokens] uint16 (uint32 past 65,536 ids) and {split}.docs.npy [documents, 2]
                    int64 (start, first target: 1 + the prompt's tokens) for split in train, validation
A document is [BOS] prompt text [EOS]. The output depends on the files, settings and tokenizer alone, so a
preparation killed and run again writes the same bytes.
"""

import contextlib
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from lm import folders
from lm.data.documents import SPLITS, Document, Task
from lm.data.encoding import encode_documents
from lm.errors import UserError, disk_full_is
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer

MANIFEST = "manifest.json"
FORMAT = 1
MARK = ".lm-prepared"
_OWN = re.compile(r"(manifest|tokenizer|source)\.json(\.tmp)?|tasks|\.lock|\d{5}-\d{4}")


def _is_own(name: str) -> bool:
    """Whether `name` in a prepared folder is one lm gives what it writes there."""
    return bool(_OWN.fullmatch(name)) or folders.is_temporary(name)


def tokenizer_sha(tokenizer: AnyTokenizer) -> str:
    """A checksum of the tokenizer: which one the shards were made with."""
    return hashlib.sha256(json.dumps(tokenizer.to_json(), sort_keys=True).encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def read_json(path: str) -> Any:
    """The JSON at `path`; one line if it is damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        raise UserError(f"{path} is damaged (not JSON); delete its folder to prepare the data again") from None


def _save(folder: str, name: str, array: np.ndarray) -> str:
    """`array` as folder/name (.npy); its sha256."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getvalue()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def _write_shard(out: str, name: str, part: dict[str, list[Document]], tok: AnyTokenizer,
                 dtype: np.dtype) -> dict[str, Any]:
    """One shard, appearing whole at out/name; its record (counts and checksums)."""
    record: dict[str, Any] = {"name": name, "sha256": {}}
    tmp = folders.fresh_folder(out, name)
    for split in SPLITS:
        tokens, docs = encode_documents(part[split], tok, dtype)
        record[split] = {"tokens": int(tokens.size), "documents": int(len(docs))}
        if tok.unk_id is not None:
            record[split]["unknown"] = int(np.count_nonzero(tokens == tok.unk_id))
        record["sha256"][f"{split}.tokens.npy"] = _save(tmp, f"{split}.tokens.npy", tokens)
        record["sha256"][f"{split}.docs.npy"] = _save(tmp, f"{split}.docs.npy", docs)
    folders.write_json(os.path.join(tmp, "shard.json"), record, indent=1)
    try:
        os.rename(tmp, os.path.join(out, name))
    except OSError:  # written meanwhile by a worker of a killed preparation: the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return record


_WORKER: dict[str, Any] = {}  # a worker process's source and tokenizer, set once by _start_worker


def _start_worker(source: Any, tokenizer_json: dict[str, Any], out: str, dtype: str) -> None:
    _WORKER.update(source=source, tok=kinds.from_json(tokenizer_json), out=out, dtype=np.dtype(dtype))


def _run_task(item: tuple[int, Task]) -> tuple[int, list[dict[str, Any]], int]:
    """Prepares one task (the shards it already has are kept): (index, shard records, source bytes)."""
    index, task = item
    w, records = _WORKER, []
    for p, part in enumerate(w["source"].parts(task)):
        name = f"{index:05d}-{p:04d}"
        done = os.path.join(w["out"], name, "shard.json")
        records.append(read_json(done) if os.path.exists(done) else
                       _write_shard(w["out"], name, part, w["tok"], w["dtype"]))
    folders.write_json(os.path.join(w["out"], "tasks", f"{index:05d}.json"), records, indent=1)
    return index, records, w["source"].task_bytes(task)


def _run(pending: list[tuple[int, Task]], workers: int, init: tuple) -> Iterator[tuple[int, list, int]]:
    """Runs the tasks: in this process if one worker (or one task) will do, else in a pool of processes."""
    if workers <= 1 or len(pending) <= 1:
        _start_worker(*init)
        yield from map(_run_task, pending)
        return
    context = multiprocessing.get_context("spawn")  # a fork of a process that runs JAX's threads can hang
    with context.Pool(workers, initializer=_start_worker, initargs=init) as pool:
        yield from pool.imap_unordered(_run_task, pending)


def prepare(source: Any, tokenizer: AnyTokenizer, out: str, workers: int = 0,
            flag: str = "the prepared-data folder", checksums: bool = False) -> dict[str, Any]:
    """Prepares `source` (sources.FileSource or catalog.CatalogSource) with `tokenizer` into the folder `out`
    (resuming a preparation that stopped); its manifest. `out` is empty or lm's (one line otherwise, naming it as
    `flag`). One process at a time per folder (a lock); the others say they wait, wait and find it prepared. `workers`:
    processes (0: one per core). The shards a preparation keeps (all of them, once it is complete) are checked
    against their records first, their sizes always and their bytes too with `checksums`: a missing or damaged
    one is prepared again."""
    _check_apart(source, out, flag)
    with disk_full_is(f"the disk filled up while preparing {source.describe()} into {out}; free some space and rerun "
                      "the same command (it goes on from the tasks done)"):
        return _prepare(source, tokenizer, out, workers, flag, checksums)


def _prepare(source: Any, tokenizer: AnyTokenizer, out: str, workers: int, flag: str,
             checksums: bool) -> dict[str, Any]:
    folders.claim(out, MARK, _is_own, flag)
    sha, identity = tokenizer_sha(tokenizer), source.identity()
    with os.fdopen(folders.open_lock(os.path.join(out, ".lock")), "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing into {out} to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(out, MANIFEST)):
            manifest = read_json(os.path.join(out, MANIFEST))
            if manifest["tokenizer"]["sha256"] == sha and manifest["source"] == identity:
                by_task: dict[int, list] = {}
                for record in manifest["shards"]:
                    by_task.setdefault(int(record["name"][:5]), []).append(record)
                if not _drop_damaged(out, by_task, checksums):
                    return manifest
                os.remove(os.path.join(out, MANIFEST))
        for folder in (out, os.path.join(out, "tasks")):  # what a killed preparation was writing
            if os.path.isdir(folder) and not os.path.islink(folder):
                folders.remove_own(folder, folders.is_temporary)
        started = os.path.join(out, "source.json")
        if os.path.exists(started) and read_json(started) != {"source": identity, "tokenizer": sha}:
            print(f"warning: {source.describe()} changed since {out} was prepared from it; preparing it again",
                  file=sys.stderr, flush=True)
            folders.remove_own(out, lambda name: _is_own(name) and name != ".lock")
        os.makedirs(folders.not_a_link(os.path.join(out, "tasks")), exist_ok=True)
        folders.write_json(started, {"source": identity, "tokenizer": sha}, indent=1)
        folders.write_json(os.path.join(out, "tokenizer.json"), tokenizer.to_json(), indent=1)
        manifest = _prepare_tasks(source, tokenizer, out, workers, sha, identity, checksums)
        folders.write_json(os.path.join(out, MANIFEST), manifest, indent=1)
        return manifest


def _shard_problem(out: str, record: dict[str, Any], checksums: bool) -> str:
    """Why the shard of `record` in `out` is not what its record says ('' if it is): a file missing or cut
    short, another count of entries, or (with `checksums`) other bytes."""
    for split in SPLITS:
        for kind, count in (("tokens", record[split]["tokens"]), ("docs", record[split]["documents"])):
            name = f"{split}.{kind}.npy"
            path = os.path.join(out, record["name"], name)
            try:
                entries = len(np.load(path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError) as e:
                return f"{name}: {getattr(e, 'strerror', None) or str(e).splitlines()[0][:80]}"
            if entries != count:
                return f"{name} holds {entries} entries, not {count}"
            if checksums:
                with open(path, "rb") as f:
                    if hashlib.file_digest(f, "sha256").hexdigest() != record["sha256"][name]:
                        return f"{name} is not the bytes it was written with"
    return ""


def _drop_damaged(out: str, by_task: dict[int, list], checksums: bool) -> list[int]:
    """The tasks (of `by_task`: index -> shard records) with a shard that is missing or damaged, each said in a
    warning line; their records and shards are deleted, for the preparation to do them again."""
    dropped = []
    for index, records in by_task.items():
        problem = next((f"{r['name']}/{why}" for r in records if (why := _shard_problem(out, r, checksums))), "")
        if problem:
            print(f"warning: prepared shard {problem} in {out}; preparing its part of the corpus again",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, "tasks", f"{index:05d}.json"))
            folders.remove_own(out, lambda name, i=index: name.startswith(f"{i:05d}-") and bool(_OWN.fullmatch(name)))
            dropped.append(index)
    return dropped


def _check_apart(source: Any, out: str, flag: str) -> None:
    """One line if the folder to prepare into holds a file of the corpus (or is one of its folders)."""
    inside = [f for f, _, _ in source.identity().get("files", [])
              if os.path.commonpath([os.path.realpath(f), os.path.realpath(out)]) == os.path.realpath(out)]
    if inside:
        raise UserError(f"{flag} {out} holds the corpus itself ({inside[0]}); prepare into a folder of its own")


def _prepare_tasks(source: Any, tokenizer: AnyTokenizer, out: str, workers: int, sha: str,
                   identity: dict[str, Any], checksums: bool) -> dict[str, Any]:
    tasks = source.tasks()
    done: dict[int, list] = {}
    for i in range(len(tasks)):
        path = os.path.join(out, "tasks", f"{i:05d}.json")
        if os.path.exists(path):
            done[i] = read_json(path)
    for i in _drop_damaged(out, done, checksums):
        del done[i]
    pending = [(i, t) for i, t in enumerate(tasks) if i not in done]
    dtype = token_dtype(tokenizer.vocab_size)
    workers = min(workers or os.cpu_count() or 1, max(len(pending), 1))
    total = sum(source.task_bytes(t) for _, t in pending)
    print(f"preparing {source.describe()} into {out}: {len(pending)} of {len(tasks)} tasks to do, "
          f"{workers} process(es)", flush=True)
    start, tokens = time.perf_counter(), 0
    with tqdm(total=total, desc="preparing", unit="B", unit_scale=True, mininterval=0.5, leave=False,
              file=sys.stdout, disable=None) as progress:  # a progress line on a terminal, none in a log
        for index, records, nbytes in _run(pending, workers, (source, tokenizer.to_json(), out, dtype.str)):
            done[index] = records
            tokens += sum(r[s]["tokens"] for r in records for s in SPLITS)
            progress.update(nbytes)
            progress.set_postfix_str(f"{tokens / (time.perf_counter() - start):,.0f} tokens/s", refresh=False)
    shards = [r for i in range(len(tasks)) for r in done[i]]
    counts = {s: {k: sum(r[s].get(k, 0) for r in shards) for k in ("tokens", "documents", "unknown")} for s in SPLITS}
    for split in SPLITS:
        if not counts[split]["documents"]:
            what = "is empty" if not any(counts[s]["documents"] for s in SPLITS) else f"has no {split} documents"
            raise UserError(f"corpus {source.describe()} {what}; point --config.data.path at more text")
    seconds = time.perf_counter() - start
    print(f"prepared {counts['train']['tokens']:,} train and {counts['validation']['tokens']:,} validation tokens "
          f"in {len(shards)} shard(s), {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)", flush=True)
    return {"format": FORMAT, "tokenizer": {"sha256": sha, "vocab_size": tokenizer.vocab_size},
            "source": identity, "dtype": dtype.name, "splits": counts, "shards": shards}

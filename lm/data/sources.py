"""Corpus files, streamed with bounded memory: the files a data path names, cut into the tasks that preparation
(prepare.py) tokenizes in parallel; documents.py reads each task's documents.

Formats (by extension, or config.data.format for files without one of these): text (.txt; cut into documents
at `separator`), JSONL (.jsonl: a row's `text_key` field, after its `prompt_key` field for supervised
fine-tuning), gzip-compressed JSONL (.jsonl.gz, .json.gz) and Parquet (.parquet: the `text_key` column). A
path is a file, a folder (every file of those formats under it) or a glob pattern.

A task is about `UNIT_BYTES` of one file: a byte range cut where a document ends, Parquet row groups, or a
whole compressed file (read in order, in parts of about `UNIT_BYTES`). A text document longer than that is cut
into documents of about `UNIT_BYTES`, before a line break or a space: memory stays bounded whatever the file.
"""

import dataclasses
import glob
import importlib.resources
import os
from collections.abc import Iterator
from typing import Any

from lm.data.documents import UNIT_BYTES, Document, Settings, Task, parquet_bytes, parts, row_group_ranges
from lm.errors import UserError

BUNDLED = "tinyshakespeare.txt"
EXTENSIONS = {".txt": "text", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz",
           ".parquet": "parquet"}  # file name ending -> format


def bundled_corpus() -> str:
    """Path of the tiny Shakespeare corpus shipped inside the package."""
    return str(importlib.resources.files("lm.data") / BUNDLED)


def file_format(path: str, data_format: str = "auto") -> str:
    """`data_format`, or if 'auto', what the file's name ends with (text if nothing known)."""
    if data_format != "auto":
        return data_format
    return next((f for end, f in EXTENSIONS.items() if path.endswith(end)), "text")


def corpus_files(path: str, data_format: str = "auto") -> list[str]:
    """The files of a corpus: `path` itself, the files of known formats under the folder `path` (sorted), or
    the files a glob pattern matches (sorted); one line if there are none."""
    path = path or bundled_corpus()
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise UserError(f"config.data.path={path} matches no files; check the pattern")
        return files
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"data path {path} does not exist; set --config.data.path to a file, folder or glob")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if not name.startswith(".") and any(name.endswith(e) for e in EXTENSIONS)
        and data_format in ("auto", file_format(name))
    )
    if not files:
        raise UserError(f"data folder {path} holds no {', '.join(EXTENSIONS)} files; add some or point "
                        "--config.data.path elsewhere")
    return files


def fingerprint(files: list[str]) -> list[list[Any]]:
    """[path, size, modification time] of each file: what says whether a file changed."""
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]


def _cut_points(path: str, size: int, boundary: bytes, cut_inside: bool) -> list[int]:
    """Offsets 0 = c0 < c1 < ... < size about UNIT_BYTES apart, each just before a `boundary` (or the end). With
    no boundary within one more unit, `cut_inside` (text) cuts there anyway, before a line break or a space if
    there is one in the next MiB, else between two characters: a document longer than a task is cut into
    documents of about a task's size. Without it (JSONL, whose rows are not cut) the rest of the file is one task."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + UNIT_BYTES < size:
            f.seek(cuts[-1] + UNIT_BYTES)
            window, at = b"", -1
            while at < 0 and len(window) < UNIT_BYTES:  # a boundary within one more unit, else none
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                window += chunk
                at = window.find(boundary)
            if at < 0 and cut_inside:
                head = window[:1 << 20]
                at = next((i for i in (head.find(b"\n"), head.find(b" ")) if i >= 0), -1)
                if at < 0:  # the first byte of a character (UTF-8 continuation bytes are 10xxxxxx)
                    at = next((i for i, b in enumerate(head[:4]) if b & 0xC0 != 0x80), 0)
            if at < 0:
                break
            cuts.append(cuts[-1] + UNIT_BYTES + at)
    return [*cuts, size]


def tasks(files: list[str], s: Settings) -> list[Task]:
    """The tasks that cover `files`, in order."""
    out = []
    for path in files:
        fmt = file_format(path, s.format)
        if fmt not in ("text", "jsonl", "jsonl.gz", "parquet"):
            raise UserError(f"config.data.format must be auto, text, jsonl, jsonl.gz or parquet, got {fmt!r}")
        if fmt == "parquet":
            out += [Task(path, fmt, a, b) for a, b in row_group_ranges(path, s)]
        elif fmt == "jsonl.gz":
            out.append(Task(path, fmt))
        else:
            boundary = b"\n" if fmt == "jsonl" else (s.separator or "\n").encode("utf-8")
            cuts = _cut_points(path, os.path.getsize(path), boundary, cut_inside=fmt == "text")
            out += [Task(path, fmt, a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    return out


def task_bytes(task: Task) -> int:
    """Bytes of source a task reads (its share of a file), for progress."""
    return task.end - task.start if task.format in ("text", "jsonl") else os.path.getsize(task.path) if (
        task.format == "jsonl.gz") else parquet_bytes(task)


@dataclasses.dataclass(frozen=True)
class FileSource:
    """Local files of text, JSONL, gzip-compressed JSONL or Parquet, read as `settings` say."""

    files: tuple[str, ...]
    settings: Settings

    def describe(self) -> str:
        more = f" and {len(self.files) - 1} more file(s)" if len(self.files) > 1 else ""
        return f"{self.files[0]}{more}"

    def identity(self) -> dict[str, Any]:
        """What the prepared data depends on: each file's path, size and modification time, and the settings."""
        return {"files": fingerprint(list(self.files)), "settings": dataclasses.asdict(self.settings)}

    def changed(self, saved: dict[str, Any]) -> str:
        """'' if the files are as `saved` (an earlier `identity()`) found them, else which one changed and how."""
        now = {f[0]: f for f in self.identity()["files"]}
        for path, size, mtime in saved["files"]:
            if path not in now:
                return f"{path} is gone"
            if now[path] != [path, size, mtime]:
                return f"{path} changed (size {size} -> {now[path][1]} bytes, or its modification time)"
        added = sorted(set(now) - {f[0] for f in saved["files"]})
        return f"{added[0]} was added" if added else ""

    def tasks(self) -> list[Task]:
        return tasks(list(self.files), self.settings)

    def task_bytes(self, task: Task) -> int:
        return task_bytes(task)

    def parts(self, task: Task) -> Iterator[dict[str, list[Document]]]:
        return parts(task, self.settings)

    def train_texts(self, limit: int = 0) -> Iterator[str]:
        """The training documents' text (prompt and text) in order, up to about `limit` characters (0: all):
        what a tokenizer is trained on. Reads only as many tasks as it needs."""
        taken = 0
        for task in self.tasks():
            for part in parts(task, self.settings, warn=False):  # (preparation warns)
                for prompt, text in part["train"]:
                    yield prompt + text
                    taken += len(prompt) + len(text)
                    if limit and taken >= limit:
                        return

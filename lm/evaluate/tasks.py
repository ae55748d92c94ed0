"""Downstream tasks read from local JSONL files, one example a line, their format told by their fields:

- minimal pairs (BLiMP's own files): `sentence_good`, `sentence_bad`; right when the good sentence has the higher
  log-probability.
- multiple choice (HellaSwag, ARC, PIQA as lm-evaluation-harness scores them): `context`, `choices` (a list of
  strings, each the text that follows the context, its leading space included) and `answer` (the index of the
  right one); right when the right choice has the highest log-likelihood, raw (`acc`), divided by its characters
  (`acc_char`) or by its tokens (`acc_token`).
- cloze (LAMBADA): `context`, `target`; right when greedy decoding after the context gives the target's tokens
  exactly (`acc`), with the target's perplexity per token (`ppl`).

Each example becomes (context, continuation) requests (loglikelihood.py scores them in packed batches) and each
task's metrics are computed from those scores here; `lm.evaluate` streams a file a part at a time (`stream_task`),
so a file of millions of examples takes the memory of one part. A task is named by its file's name without
`.jsonl`.
"""

import dataclasses
import glob
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lm.data import sources
from lm.errors import UserError
from lm.evaluate.loglikelihood import Piece, TokenScores, encode_pairs, score_encoded
from lm.parallel.mesh import Layout
from lm.tokenizer.kinds import AnyTokenizer

TASK_FIELDS = {"minimal_pair": ("sentence_good", "sentence_bad"), "multiple_choice": ("context", "choices", "answer"),
           "cloze": ("context", "target")}
# One request's score: (summed log-likelihood of the continuation, whether greedy decoding gives it, its tokens).
Score = tuple[float, bool, int]
PART_EXAMPLES = 4096  # examples of a task file read and scored at a time by `stream_task`


@dataclasses.dataclass(frozen=True)
class Task:
    """A task file's examples, all of one format."""

    name: str
    format: str
    examples: tuple[dict[str, Any], ...]

    def requests(self) -> list[tuple[str, str]]:
        """Every (context, continuation) pair the task's examples need scored, example by example."""
        out: list[tuple[str, str]] = []
        for e in self.examples:
            if self.format == "minimal_pair":
                out += [("", e["sentence_good"]), ("", e["sentence_bad"])]
            elif self.format == "multiple_choice":
                out += [(e["context"], c) for c in e["choices"]]
            else:
                out.append((e["context"], e["target"]))
        return out

    def metrics(self, scores: list[Score]) -> dict[str, float]:
        """The task's metrics from the scores of `requests()`, in their order."""
        tally = Tally(self.format)
        tally.add(self, scores)
        return tally.result()


class Tally:
    """A task's metrics summed over its examples, added a part of the task at a time (a task file is streamed)."""

    def __init__(self, fmt: str):
        self.format, self.examples = fmt, 0
        self.right: dict[str, int] = {}
        self.nll, self.tokens = 0.0, 0

    def add(self, part: Task, scores: list[Score]) -> None:
        """The examples of `part` (a task of this format), with the scores of its `requests()` in their order."""
        it = iter(scores)
        for e in part.examples:
            if self.format == "minimal_pair":
                good, bad = next(it), next(it)
                self._count("acc", good[0] > bad[0])
            elif self.format == "multiple_choice":
                got = [next(it) for _ in e["choices"]]
                raw = np.array([s[0] for s in got])
                chars = np.array([max(len(c), 1) for c in e["choices"]])
                toks = np.array([max(s[2], 1) for s in got])
                for name, values in (("acc", raw), ("acc_char", raw / chars), ("acc_token", raw / toks)):
                    self._count(name, int(np.argmax(values)) == e["answer"])
            else:
                ll, greedy, n = next(it)
                self._count("acc", greedy)
                self.nll, self.tokens = self.nll - ll, self.tokens + n
        self.examples += len(part.examples)

    def _count(self, name: str, right: bool) -> None:
        self.right[name] = self.right.get(name, 0) + int(right)

    def result(self) -> dict[str, float]:
        out = {name: right / self.examples for name, right in self.right.items()}
        if self.format == "cloze":
            out["ppl"] = math.exp(self.nll / max(self.tokens, 1))
        return {**out, "examples": self.examples}


def _format_of(example: Any, where: str) -> str:
    if not isinstance(example, dict):
        raise UserError(f"{where}: an example is a JSON object, got {type(example).__name__}")
    for name, fields in TASK_FIELDS.items():
        if all(f in example for f in fields):
            return name
    wanted = "; ".join(f"{name.replace('_', ' ')}: {', '.join(fields)}" for name, fields in TASK_FIELDS.items())
    raise UserError(f"{where}: fields {sorted(example)} match no task format ({wanted})")


def _check(example: dict[str, Any], fmt: str, where: str) -> None:
    strings = {"minimal_pair": ("sentence_good", "sentence_bad"), "multiple_choice": ("context",),
               "cloze": ("context", "target")}[fmt]
    for field in strings:
        if not isinstance(example[field], str):
            raise UserError(f"{where}: field {field} must be a string, got {example[field]!r:.60}")
    if fmt == "cloze" and not example["target"]:
        raise UserError(f"{where}: field target is empty")
    if fmt == "multiple_choice":
        choices, answer = example["choices"], example["answer"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: field choices must be a list of two or more non-empty strings")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise UserError(f"{where}: field answer={answer!r} is out of range for {len(choices)} choices "
                            f"(an index from 0 to {len(choices) - 1})")


def examples(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(format, example) for each example of a JSONL task file, read a line at a time; a line that is not an
    example of the file's format is one line of error, as is a file with none."""
    fmt = None
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"task file {path} line {number}"
                try:
                    example = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
                this = _format_of(example, where)
                if fmt and this != fmt:
                    raise UserError(f"{where}: a {this.replace('_', ' ')} example in a {fmt.replace('_', ' ')} "
                                    "file; one format a file")
                fmt = this
                _check(example, fmt, where)
                yield fmt, example
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"task file {path} does not read ({e}); give JSONL files in UTF-8") from None
    if fmt is None:
        raise UserError(f"task file {path} holds no examples; give a JSONL file of one example a line")


def task_name(path: str) -> str:
    return os.path.basename(path).removesuffix(".jsonl")


def read_task(path: str) -> Task:
    """The task in one JSONL file, whole (`examples`)."""
    read = list(examples(path))
    return Task(task_name(path), read[0][0], tuple(e for _, e in read))


def stream_task(path: str, score: Callable[[Task], list[Score]], progress: Callable[[str], None],
                part_size: int = PART_EXAMPLES, every_s: float = 10.0) -> dict[str, float]:
    """The metrics of the task file at `path`, read and scored (`score`: a part's requests -> their scores) a
    part of `part_size` examples at a time, so that memory does not grow with the file; `progress` is told how
    many examples are done every `every_s` seconds, and when the file is done."""
    name, tally, told = task_name(path), None, time.monotonic()
    for fmt, chunk in _parts(examples(path), part_size):
        part = Task(name, fmt, tuple(chunk))
        tally = tally or Tally(fmt)
        tally.add(part, score(part))
        if time.monotonic() - told >= every_s:
            progress(f"{name}: {tally.examples:,} examples scored")
            told = time.monotonic()
    progress(f"{name}: {tally.examples:,} examples scored, done")
    return tally.result()


def _parts(items: Iterator[tuple[str, dict[str, Any]]], size: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    chunk: list[dict[str, Any]] = []
    fmt = ""
    for fmt, example in items:
        chunk.append(example)
        if len(chunk) == size:
            yield fmt, chunk
            chunk = []
    if chunk:
        yield fmt, chunk


def read_tasks(spec: str, first: int = 0) -> list[Task]:
    """The tasks `--tasks` names (comma-separated files, folders of *.jsonl, globs), each name once, each cut to
    its first `first` examples (0: all)."""
    tasks = [read_task(path) for path in task_files(spec)]
    if first:
        tasks = [dataclasses.replace(t, examples=t.examples[:first]) for t in tasks]
    return tasks


def task_files(spec: str) -> list[str]:
    """The JSONL files `--tasks` names: comma-separated files, folders (their *.jsonl), globs, or the name of a
    task shipped in the package (lm/data/NAME.jsonl: shakespeare_word_order)."""
    files: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        bundled = os.path.join(os.path.dirname(sources.bundled_corpus()), f"{part}.jsonl")
        if os.path.isdir(part):
            found = sorted(glob.glob(os.path.join(part, "*.jsonl")))
        elif not glob.glob(part) and os.sep not in part and os.path.isfile(bundled):
            found = [bundled]  # a task shipped in the package, by name
        else:
            found = sorted(glob.glob(part))
        if not found:
            raise UserError(f"--tasks: {part} names no task file; give JSONL files, folders of them or globs")
        files += found
    if not files:
        raise UserError("--tasks names no task file; give JSONL files, folders of them or globs")
    names = [task_name(f) for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--tasks names two task files called {twice[0]}; a task is named by its file, so give "
                        "each a name of its own")
    return files


def encode_tasks(tokenizer: AnyTokenizer, tasks: list[Task], max_len: int) -> list[list[Piece]]:
    """The tokens of every request of `tasks`, in order (loglikelihood.encode_pairs: one line for one too long)."""
    return encode_pairs(tokenizer, [r for task in tasks for r in task.requests()], max_len)


def score_tasks(token_scores: TokenScores, params: Any, tasks: list[Task], encoded: list[list[Piece]],
                max_len: int, batch_size: int, layout: Layout) -> dict[str, Any]:
    """Every task's metrics from its requests' tokens (`encode_tasks`), all scored together, and `mean_acc`: the
    mean of the tasks' `acc`."""
    scores = score_encoded(token_scores, params, encoded, max_len, batch_size, layout)
    out, first = {}, 0
    for task in tasks:
        n = len(task.requests())
        out[task.name] = task.metrics(scores[first:first + n])
        first += n
    return {"tasks": out, "mean_acc": float(np.mean([m["acc"] for m in out.values()]))}


def flat(scores: dict[str, Any]) -> dict[str, float]:
    """`score_tasks`' result as one level of numbers: `task_<name>_<metric>` and `task_mean_acc`."""
    out = {f"task_{name}_{metric}": value for name, metrics in scores["tasks"].items()
           for metric, value in metrics.items() if metric != "examples"}
    return {**out, "task_mean_acc": scores["mean_acc"]}

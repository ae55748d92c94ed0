"""A run's metrics: a console line, WORKDIR/metrics.jsonl and TensorBoard event files (through tensorboardX's
writer, without TensorFlow), written by process 0. A resumed run drops the records past the step it resumes
from (and a record torn by a write cut short, e.g. by a full disk); TensorBoard is told to hide them too."""

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

from lm import folders
from lm.errors import DiskFull, UserError, disk_full_is
from lm.evaluate.tasks import flat
from lm.run_files import EVENTS, METRICS


def duration(seconds: float) -> str:
    """3h05m, 4m07s or 12s."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def count(n: int) -> str:
    """27,712 or 124.4M or 1.24B: a number of parameters, never rounded to 0."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _disk_full_is_one_line(workdir: str) -> contextlib.AbstractContextManager:
    return disk_full_is(f"the disk filled up while writing the metrics in {workdir}; free some space and rerun the "
                        "same command to resume from the last checkpoint", DiskFull)


def _tag(key: str) -> str:
    """The TensorBoard tag of a record's key: val/..., task/... or train/..."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"task/{key[5:]}" if key.startswith("task_") else f"train/{key}"


def _kept_records(path: str, resume_step: int) -> list[str]:
    """The lines of `path` up to `resume_step`, without torn ones (with a warning if there were any)."""
    kept, torn = [], 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                torn += bool(line.strip())
                continue
            if record["step"] <= resume_step:
                kept.append(json.dumps(record) + "\n")
    if torn:
        print(f"warning: dropped {torn} torn line(s) of {path} (a write cut short)", file=sys.stderr, flush=True)
    return kept


class MetricsLog:
    """Console lines and records of one run, from `resume_step` on; `due(step)` says when a step is logged. Every
    record carries the training tokens and model FLOPs so far. Tokens/s and MFU (model FLOP/s over `peak_flops`)
    time the train steps alone: from the end of a start's first step (its compilation is said apart), and without
    the evaluations and checkpoints in between (`paused`)."""

    def __init__(self, workdir: str, resume_step: int, every: int, last_step: int, tokens_per_step: int,
                 flops_per_token: float, peak_flops: float):
        self.workdir, self.every, self.last_step = workdir, every, last_step
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS)
        self.start = self.last_time = time.time()
        self.last_logged, self.excluded, self.first_s = resume_step, 0.0, 0.0
        if not self.active:
            return
        with _disk_full_is_one_line(workdir):
            if os.path.islink(self.path) or os.path.lexists(self.path) and not os.path.isfile(self.path):
                raise UserError(f"{self.path} is not a file lm wrote (a link or a folder); move it away to resume, or "
                                "use another --workdir")
            if os.path.exists(self.path):  # rewritten whole: a kill during the rewrite loses no records
                folders.write_atomic(self.path, "".join(_kept_records(self.path, resume_step)))
            suffix = f".{os.getpid()}.{time.time_ns()}"  # a new file each start, never one an earlier start wrote
            self.events = EventsWriter(os.path.join(workdir, EVENTS), suffix)
            if resume_step:  # TensorBoard hides what an interrupted run wrote past the resumed step
                start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                self.events.write_event(event_pb2.Event(wall_time=time.time(), step=resume_step + 1, session_log=start))
            self.events.flush()

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def write(self, record: dict[str, Any] | None, line: str) -> None:
        """Prints `line`; appends `record` (if any) to the JSONL file and its numbers to the event file."""
        if not self.active:
            return
        print(line, flush=True)
        if record is None:
            return
        with _disk_full_is_one_line(self.workdir):
            with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644), "a") as f:
                f.write(json.dumps(record) + "\n")
            values = [summary_pb2.Summary.Value(tag=_tag(k), simple_value=v)
                      for k, v in record.items() if k != "step" and isinstance(v, int | float)]
            summary = summary_pb2.Summary(value=values)
            self.events.write_event(event_pb2.Event(wall_time=time.time(), step=record["step"], summary=summary))
            self.events.flush()

    def amount(self, step: int) -> dict[str, float]:
        """The training tokens and model FLOPs up to `step`."""
        tokens = step * self.tokens_per_step
        return {"train_tokens": tokens, "train_flops": tokens * self.flops_per_token}

    def first_step(self, step: int) -> None:
        """The start's first step (`step`) has run, its compilation with it: tokens/s are timed from now."""
        now = time.time()
        self.first_s, self.last_time, self.last_logged, self.excluded = now - self.last_time, now, step, 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time in the block (an evaluation, a checkpoint) is not train steps' time."""
        begun = time.time()
        try:
            yield
        finally:
            self.excluded += time.time() - begun

    def step(self, step: int, metrics: dict[str, float], skipped: int) -> None:
        """The record and line of a training step: its metrics, and tokens/s and MFU of the steps since the last
        one logged (none for a start's first step alone: its time is mostly compilation)."""
        now = time.time()
        record = {"step": step, **self.amount(step), **metrics, "skipped": skipped, "wall_time": now - self.start}
        if step > self.last_logged:
            step_s = (now - self.last_time - self.excluded) / (step - self.last_logged)
            tps = self.tokens_per_step / step_s
            record.update(tokens_per_sec=tps, mfu=self.flops_per_token * tps / self.peak_flops)
            speed = f"{tps:,.0f} tok/s | MFU {record['mfu']:.1%}"
            eta = f" | eta {duration(step_s * (self.last_step - step))}"
        else:
            speed, eta = f"first step with its compilation {self.first_s:.1f}s", ""
        self.last_time, self.last_logged, self.excluded = now, step, 0.0
        note = f" | skipped {skipped}" if skipped else ""
        self.write(record, f"step {step:>6}/{self.last_step} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                           f"grad norm {metrics['grad_norm']:.3f} | {speed} | {now - self.start:.1f}s{eta}{note}")

    def evaluation(self, step: int, result: dict[str, float], record: bool = True,
                   tasks: dict[str, Any] | None = None) -> None:
        """The record (unless not `record`) and line of a validation result, with downstream task scores (the
        result of lm.evaluate.tasks.score_tasks) if given."""
        values = {f"val_{k}": v for k, v in result.items()}
        line = (f"step {step:>6} | val loss {result['loss']:.4f} | ppl {result['perplexity']:.2f} | "
                f"bits/byte {result['bits_per_byte']:.4f}")
        if tasks:
            values.update(flat(tasks))
            line += f" | tasks mean acc {tasks['mean_acc']:.4f} over {len(tasks['tasks'])}"
        self.write({"step": step, **self.amount(step), **values} if record else None, line)

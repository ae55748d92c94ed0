"""TensorBoard event files of a run (written through tensorboardX, without TensorFlow), read back by TensorBoard
itself; a resumed run's file hides what the interrupted run wrote past the step it resumes from."""

import glob
import json
import os
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lm.train.loop import train


def _scalars(workdir: str, tag: str) -> dict[int, float]:
    events = EventAccumulator(workdir)
    events.Reload()  # TensorBoard's own reader: it checks every record's CRC
    return {e.step: e.value for e in events.Scalars(tag)}


def test_a_training_run_writes_its_loss_series_where_tensorboard_reads_it(tiny_run):
    workdir, final = tiny_run
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert len(train_loss) >= 4 and val
    for tag, series in (("train/loss", train_loss), ("val/loss", val)):
        read = _scalars(workdir, tag)
        assert read.keys() == series.keys()
        assert [read[s] for s in sorted(read)] == pytest.approx([series[s] for s in sorted(series)], rel=1e-6)
    assert "train/tokens_per_sec" in EventAccumulator(workdir).Reload().Tags()["scalars"]


def test_a_resumed_run_shows_each_step_once_the_resumed_step_included(tiny_run, tiny_config, tmp_path):
    """The run resumes from checkpoint 10 after its first life wrote steps 15 and 20: TensorBoard shows the
    first life's steps up to 10 (10 included) and the second life's after it, each step once."""
    workdir, _ = tiny_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))
    train(tiny_config, resumed)
    assert len(glob.glob(os.path.join(resumed, "events.out.tfevents.*"))) == 2
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
        want = {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
    assert sorted(want) == [5, 10, 15, 20]
    read = _scalars(resumed, "train/loss")
    assert sorted(read) == [5, 10, 15, 20]
    assert [read[s] for s in sorted(read)] == pytest.approx([want[s] for s in sorted(want)], rel=1e-6)

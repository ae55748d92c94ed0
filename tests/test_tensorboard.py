"""TensorBoard event files written without TensorFlow (lm/tensorboard.py), read back by TensorBoard itself."""

import glob
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lm import tensorboard


def test_crc32c_matches_the_standard_check_value():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value of the ASCII digits


def test_a_training_run_writes_its_loss_series_where_tensorboard_reads_it(tiny_run):
    workdir, final = tiny_run
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    events = EventAccumulator(workdir)
    events.Reload()  # TensorBoard's own reader: it checks every record's CRC
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert len(train) >= 4 and val
    for tag, series in (("train/loss", train), ("val/loss", val)):
        read = {e.step: e.value for e in events.Scalars(tag)}
        assert read.keys() == series.keys()
        assert [read[s] for s in sorted(read)] == pytest.approx([series[s] for s in sorted(series)], rel=1e-6)
    assert "train/tokens_per_sec" in events.Tags()["scalars"]

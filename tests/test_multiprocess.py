"""Real processes on 127.0.0.1: two processes of 4 devices train like one process of 8, checkpoints move between
the two, and a signal to one process stops both at the same step."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import TEST_XLA_FLAGS, TINY, USER_ENV, ReservedPorts, load_config

from lm.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, cache_dir, processes: int, steps: int = 6) -> str:
    """Trains on 8 CPU devices split over `processes` processes (`python -m lm.train`; one process: this one, with
    its 8 devices); returns process 0's output."""
    if processes == 1:
        cfg = load_config()
        cfg.data.update(cache_dir=str(cache_dir))
        cfg.train.update(steps=steps, log_every=1, eval_every=3)
        cfg.checkpoint.every = 3
        with contextlib.redirect_stdout(io.StringIO()) as out:
            train(cfg, str(workdir))
        return out.getvalue()
    env = {**USER_ENV, "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={8 // processes}"}
    with ReservedPorts() as (port,):  # the coordinator's, while the processes run
        cmd = [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(workdir),
               f"--config.data.cache_dir={cache_dir}", f"--config.train.steps={steps}",
               "--config.train.log_every=1", "--config.train.eval_every=3", "--config.checkpoint.every=3",
               f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
        procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(processes)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs[0]


def _losses(workdir) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r.get("loss", r.get("val_loss")) for r in records if "loss" in r} | {
        -r["step"]: r["val_loss"] for r in records if "val_loss" in r}  # evaluations under negative steps


def _resume_elsewhere(workdir, copy, cache_dir, processes) -> str:
    shutil.copytree(workdir, copy)
    shutil.rmtree(os.path.join(copy, "checkpoints", "6"))
    return _train(copy, cache_dir, processes)


def test_two_processes_train_like_one_and_checkpoints_move_between_them(tmp_path, cache_dir):
    two, one = tmp_path / "two", tmp_path / "one"
    out = _train(two, cache_dir, processes=2)
    assert "in 2 process(es)" in out
    _train(one, cache_dir, processes=1)
    a, b = _losses(two), _losses(one)
    assert sorted(a) == sorted(b) == [-6, -3, 1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-5)

    # A two-process checkpoint (step 3) resumes in one process, and a one-process checkpoint in two.
    out = _resume_elsewhere(two, tmp_path / "two_then_one", cache_dir, processes=1)
    assert "resuming at step 3" in out
    out = _resume_elsewhere(one, tmp_path / "one_then_two", cache_dir, processes=2)
    assert "resuming at step 3" in out
    for resumed in (_losses(tmp_path / "two_then_one"), _losses(tmp_path / "one_then_two")):
        np.testing.assert_allclose([resumed[k] for k in (4, 5, 6, -6)], [b[k] for k in (4, 5, 6, -6)], rtol=1e-5)


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(tmp_path, cache_dir):
    env = {**USER_ENV, "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=4"}
    workdir = tmp_path / "run"
    ports = ReservedPorts()  # the coordinator's, until the processes have ended
    cmd = [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(workdir),
           f"--config.data.cache_dir={cache_dir}", "--config.train.steps=1000", "--config.train.log_every=5",
           "--config.train.eval_every=1000", "--config.checkpoint.every=1000",
           f"--coordinator_address=127.0.0.1:{ports.numbers[0]}", "--num_processes=2"]
    procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    try:
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):  # written by process 0
            assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)  # process 1 only
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        ports.release()
    assert [p.returncode for p in procs] == [143, 143], errors
    steps = [int(re.search(r"stopped by SIGTERM after step (\d+); checkpoint \1 saved", e).group(1)) for e in errors]
    assert steps[0] == steps[1] < 1000, errors
    assert max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == steps[0]  # saved there

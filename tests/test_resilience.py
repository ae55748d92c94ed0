"""Runs that survive SIGKILL, SIGTERM and full disks: a resumed run is bitwise the run that was not interrupted."""

import json
import os
import re
import signal
import subprocess

import jax
import numpy as np
from conftest import ROOT, USER_ENV, final_state, signal_at, start_training, train_command

from lm.data.sources import bundled_corpus


def _losses(workdir):
    """{step: loss} of the train records in a workdir's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _steps(directory):
    return sorted(int(p) for p in os.listdir(directory) if p.isdigit()) if os.path.isdir(directory) else []


def _unfinished(directory):
    """Checkpoints being written: orbax writes STEP.orbax-checkpoint-tmp and renames it to STEP to commit."""
    return [p for p in os.listdir(directory) if "tmp" in p] if os.path.isdir(directory) else []


def test_killed_three_times_the_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, cache_dir):
    """On a mixture of two prepared corpora: the bundled one and JSONL rows (other text, other characters)."""
    steps = 60
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"Row {i}: {'0123456789' * (i % 7 + 1)} [done]"}) + "\n"
                            for i in range(400)))
    overrides = (f"--config.train.steps={steps}", "--config.checkpoint.every=10", "--config.train.log_every=1",
                 f"--config.data.mixture={bundled_corpus()}:0.7,{rows}:0.3")
    reference = tmp_path / "reference"
    result = subprocess.run(train_command(reference, cache_dir, *overrides), cwd=ROOT, env=USER_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    want = _losses(reference)
    assert sorted(want) == list(range(1, steps + 1))

    workdir = tmp_path / "killed"
    checkpoints = workdir / "checkpoints"
    logged = lambda: max(_losses(workdir), default=0) if (workdir / "metrics.jsonl").is_file() else 0  # noqa: E731
    killed_at = []  # (point, step resumed from, newest checkpoint when killed, newest step logged)

    def run_and_kill(point, ready, poll=0.1):
        """Starts (or resumes) the run, SIGKILLs it once `ready()`, and checks what it logged; returns the command."""
        newest = max(_steps(checkpoints), default=0)
        proc, cmd, out = start_training(workdir, cache_dir, ready, *overrides, poll=poll)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert (workdir / "lock").is_file()  # the killed run's lock file stays; its lock does not (rerun below)
        out = open(out).read()
        assert (f"resuming at step {newest}" if newest else "starting at step 0") in out, out
        seen = _losses(workdir)
        for step, loss in seen.items():  # every step logged so far, before and after each resume, is the reference's
            assert loss == want[step], (point, step, loss, want[step])
        killed_at.append((point, newest, max(_steps(checkpoints), default=None), max(seen, default=0)))
        return cmd

    # 1. Between two checkpoints: the steps since the last one are lost and run again.
    run_and_kill("between checkpoints", lambda out: 10 in _steps(checkpoints) and logged() >= 15)
    # 2. While a checkpoint is being written, as it commits (the unfinished one must never be taken for the latest).
    killed = subprocess.run(signal_at("KILL", f"commit:{checkpoints / '20'}", workdir, cache_dir, *overrides),
                            cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL and "resuming at step 10" in killed.stdout, killed.stderr
    assert max(_steps(checkpoints)) == 10 and _unfinished(checkpoints) == ["20.orbax-checkpoint-tmp"]
    assert all(loss == want[step] for step, loss in _losses(workdir).items()) and max(_losses(workdir)) >= 20
    killed_at.append(("as checkpoint 20 commits", 10, 10, max(_losses(workdir))))
    # 3. Just after a checkpoint commits, while the next steps run.
    committed = max(_steps(checkpoints)) + 10
    cmd = run_and_kill("after a checkpoint commits", lambda out: committed in _steps(checkpoints), poll=0.001)

    result = subprocess.run(cmd, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    print("killed at (point, resumed from, newest checkpoint, newest step logged):", killed_at)
    resumed_from = int(re.search(r"resuming at step (\d+)", result.stdout).group(1))
    assert resumed_from >= committed and "rules: embed->fsdp" in result.stdout and "MiB per device" in result.stdout
    assert _losses(workdir) == want  # every step once, each with the loss of the uninterrupted run
    assert not _unfinished(checkpoints)
    (a, a_data), (b, b_data) = final_state(reference, steps), final_state(workdir, steps)
    assert a_data == b_data
    taken = a_data["rows"]  # both corpora gave rows, about 70/30
    assert sorted(taken) == sorted([bundled_corpus(), str(rows)]) and sum(taken.values()) == steps * 8
    # Batch k's 8 rows pick their corpora by the weights with a generator seeded with (seed 0, k), as documented.
    picked = sum(int((np.random.default_rng([0, k]).choice(2, 8, p=[0.7, 0.3]) == 0).sum()) for k in range(steps))
    assert taken[bundled_corpus()] == picked, (taken, picked)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # parameters, Adam moments, step
        np.testing.assert_array_equal(x, y)


def test_sigint_and_sigterm_save_the_current_step_and_exit_130_and_143_a_second_sigint_stops_at_once(tmp_path,
                                                                                                      cache_dir):
    workdir = tmp_path / "run"
    metrics = workdir / "metrics.jsonl"
    overrides = ("--config.train.steps=300", "--config.checkpoint.every=1000", "--config.train.log_every=10")

    def start_then(signum, after_step, *wrapper):
        """Starts (or resumes) the run (through `wrapper`, if given) and, once it has logged `after_step`, sends
        it `signum`."""
        proc, cmd, out = start_training(workdir, cache_dir, lambda _: max(_losses(workdir), default=0) >= after_step
                                         if metrics.is_file() else False, *overrides, wrapper=wrapper)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
        return proc.returncode, stderr, open(out).read(), cmd

    stopped = {}
    for signum in (signal.SIGINT, signal.SIGTERM):  # each run resumes the one before it
        code, stderr, out, cmd = start_then(signum, max(stopped.values(), default=0) + 10)
        name = signal.Signals(signum).name
        assert code == 128 + signum, stderr  # 130, 143
        step = int(re.search(rf"stopped by {name} after step (\d+); checkpoint \1 saved", stderr).group(1))
        assert step < 300 and _steps(workdir / "checkpoints")[-1] == step  # saved there, no interval asked
        assert ("starting at step 0" if not stopped else f"resuming at step {stopped['SIGINT']}") in out
        stopped[name] = step
    assert stopped["SIGTERM"] > stopped["SIGINT"]
    # A second SIGINT, sent as the save that the first one asked for commits, stops at once: that save is dropped.
    code, stderr, out, _ = start_then(signal.SIGINT, stopped["SIGTERM"] + 10, "INT",
                                      f"sigint-commit:{workdir / 'checkpoints'}")
    assert code == 130 and stderr.strip().splitlines() == [
        "stopped at once by SIGINT (a checkpoint being written is dropped); rerun the same command to resume from "
        "the last checkpoint"], stderr
    assert f"resuming at step {stopped['SIGTERM']}" in out
    result = subprocess.run(cmd, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming at step {stopped['SIGTERM']}" in result.stdout and not _unfinished(workdir / "checkpoints")


def _adam_count(state):
    """How many updates the optimizer's moments have taken (the `count` leaf of its state)."""
    counts = {int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
              if getattr(path[-1], "name", None) == "count"}
    assert len(counts) == 1, counts
    return counts.pop()


def test_a_nan_step_stops_the_run_or_is_skipped_as_configured(tmp_path, cache_dir):
    common = ("--config.train.log_every=1", "--config.train.eval_every=1000")
    stopped = subprocess.run(train_command(tmp_path / "stop", cache_dir, *common, "--config.train.nan_steps=(12,)"),
                             cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 3, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [
        "error: the loss or gradients are not finite at step 12 (config.train.nonfinite='stop'); lower "
        "config.optim.lr, or set --config.train.nonfinite=skip to skip such steps; checkpoint 10 is the last good "
        "state"]
    assert _steps(tmp_path / "stop" / "checkpoints") == [1, 10] and max(_losses(tmp_path / "stop")) == 12

    # skip: step 5 and then 12, 13 are skipped; the third in a row (14) is more than max_skips=2.
    skipped = subprocess.run(train_command(tmp_path / "skip", cache_dir, *common, "--config.train.nonfinite=skip",
                                            "--config.train.max_skips=2", "--config.train.nan_steps=(5, 12, 13, 14)"),
                             cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 3, skipped.stderr
    assert "not finite at 3 steps in a row (steps 12-14), more than config.train.max_skips=2" in skipped.stderr
    assert "checkpoint 10 is the last good state" in skipped.stderr
    with open(tmp_path / "skip" / "metrics.jsonl") as f:
        records = {r["step"]: r for r in map(json.loads, f)}
    assert [records[s]["skipped"] for s in range(1, 15)] == [0] * 4 + [1] * 7 + [2, 3, 4]
    assert not np.isfinite(records[5]["loss"])  # the corrupted batch's loss
    assert all(np.isfinite(records[s]["loss"]) for s in range(1, 12) if s != 5)  # the loss after it is fine
    state, data_state = final_state(tmp_path / "skip", 10)
    assert int(state.step) == 10 and _adam_count(state) == 9  # step 5's batch was used, its update was not
    assert data_state["nonfinite"] == {"skipped": 1, "in_a_row": 0}


def test_a_full_disk_stops_the_run_with_one_line_and_the_previous_checkpoint_resumes(tmp_path, cache_dir):
    """A real full disk: a size-limited tmpfs in a private mount namespace (unshare, no privileges needed).
    Too few bytes are caught before a save starts; too few inodes (not foreseen) while orbax writes: the run is
    left room for its own files and half the inodes that its first checkpoint took (how many a save takes varies
    a little from save to save, never by half)."""
    disk, run = tmp_path / "disk", tmp_path / "disk" / "run"
    train = " ".join(train_command(run, cache_dir, "--config.train.steps=12"))
    first = " ".join(train_command(run, cache_dir, "--config.train.steps=1"))
    script = tmp_path / "full_disk.sh"
    script.write_text(f"""set -u
mkdir -p {disk}
cd {ROOT}
O={tmp_path}
attempt() {{ {train} > $O/out$1 2> $O/err$1; echo $? > $O/rc$1; ls {run}/checkpoints > $O/ls$1; }}
mount -t tmpfs -o size=1800k tmpfs {disk}
attempt 1
mount -o remount,size=16m {disk}
attempt 2
umount {disk}
mount -t tmpfs -o size=16m tmpfs {disk}
{first} > $O/first.out 2>&1 || exit 7
inodes=$(find {run}/checkpoints/1 | wc -l)
mount -o remount,nr_inodes=$(( $(df --output=iused {disk} | tail -1) + 5 + inodes / 2 )) {disk}
attempt 3
mount -o remount,nr_inodes=10000 {disk}
attempt 4
""")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)], env=USER_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stderr, (tmp_path / "first.out").read_text() if done.returncode == 7 else "")
    out = {i: {k: (tmp_path / f"{k}{i}").read_text() for k in ("rc", "out", "err", "ls")} for i in (1, 2, 3, 4)}
    checkpoints = str(run / "checkpoints")
    assert out[1]["rc"].strip() == "2" and re.fullmatch(
        rf"error: the disk is too full to save checkpoint 10: it needs about [\d.]+ MiB in {re.escape(checkpoints)}, "
        r"[\d.]+ MiB are free; free some space and rerun the same command to resume from checkpoint 1\n",
        out[1]["err"]), out[1]["err"]
    assert out[1]["ls"].split() == ["1"]  # nothing of the save that did not fit was written
    assert out[3]["rc"].strip() == "2" and out[3]["err"].splitlines() == [
        f"error: the disk filled up while writing checkpoint 10 in {checkpoints}; free some space and rerun the same "
        "command to resume from checkpoint 1"], out[3]["err"]
    assert out[3]["ls"].split() == ["1", "10.orbax-checkpoint-tmp"]
    for i in (2, 4):  # with room again, the same command resumes from the checkpoint before the full disk
        assert out[i]["rc"].strip() == "0", out[i]["err"]
        assert "resuming at step 1" in out[i]["out"] and "step     12/12" in out[i]["out"]
        assert out[i]["ls"].split() == ["10", "12"]

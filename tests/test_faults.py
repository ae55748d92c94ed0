"""Faults a user meets by hand: damaged checkpoints and metrics, two trainers on one workdir, leftovers of other
settings, readers racing a trainer, read-only folders, a workdir that names where to write, and interrupts or bad
input at any moment. Each ends in one line (a warning and the run goes on, or an error and exit status 2)."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from conftest import (
    ROOT,
    USER_ENV,
    char_tokenizer,
    one_line_error,
    run_module,
    signal_at,
    start_training,
    train_command,
)

from lm import optim
from lm.backends import select
from lm.checkpoint import integrity, manager, reader
from lm.cli import interrupt
from lm.errors import UserError
from lm.parallel import mesh as shd
from lm.tokenizer import sentencepiece
from lm.train import state as state_lib
from lm.train.loop import train

ONE_DEVICE = lambda run: shd.tensor_layout(1)  # noqa: E731


def _copy(tiny_run, tmp_path, name="run") -> str:
    """A copy of the tiny run's workdir (checkpoints 10 and 20), to damage."""
    target = str(tmp_path / name)
    shutil.copytree(tiny_run[0], target)
    return target


def _array_files(workdir: str, step: int, item: str = "*") -> list[str]:
    """The files that hold a checkpoint's array data: the OCDBT data files of params and opt_state (or of `item`),
    both the merged tree's (`ITEM/d`) and each process's (`ITEM/ocdbt.process_N/d`). Values of at most 1 KiB (small
    arrays, and the slices that the replicas of a replicated array each write) sit inline in tree nodes; a process's
    files hold its larger values and its own tree, which is no longer read once merged. How the writes pack into
    files varies from run to run, so a file's second half may hold nothing that is read."""
    item_dir = os.path.join(workdir, "checkpoints", str(step), item)
    files = sorted(glob.glob(os.path.join(item_dir, "d", "*")) + glob.glob(os.path.join(item_dir, "ocdbt.*", "d", "*")))
    held = sorted(glob.glob(os.path.join(item_dir, "**"), recursive=True))
    assert files, f"no OCDBT data files in {item_dir}, which holds {held}"
    return files


def _flip(path: str, at: float = 0.5) -> None:
    """Flips every bit of one byte of a file, `at` of the way in."""
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * at))
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _meta_file(workdir: str, step: int) -> str:
    return os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")


def _edit_meta(workdir: str, step: int, edit) -> None:
    with open(_meta_file(workdir, step)) as f:
        meta = json.load(f)
    edit(meta)
    with open(_meta_file(workdir, step), "w") as f:
        json.dump(meta, f)


def _abstract_state(workdir: str, step: int):
    ckpt, _, model_config, _, run = reader.open_run(workdir, step)
    tx, *_ = optim.optimizer(optim.OptimConfig(**run["optim"]), run["train"]["steps"])
    return ckpt, state_lib.abstract(select.model(model_config), tx, ONE_DEVICE(run))


# 1. Bytes flipped inside a checkpoint's array files.

def test_a_flipped_byte_in_any_array_file_is_caught_at_restore_or_changes_nothing_read(tiny_run, tmp_path):
    workdir = _copy(tiny_run, tmp_path)
    ckpt, abstract = _abstract_state(workdir, 20)
    want = jax.device_get(ckpt.restore(20, abstract)[0])
    files = _array_files(workdir, 20)
    caught = []
    for path in files:
        original = open(path, "rb").read()
        _flip(path)
        try:
            got = jax.device_get(ckpt.restore(20, abstract)[0])
        except integrity.Damaged as e:
            caught.append(str(e))
        else:  # the byte held nothing that is read back (e.g. an index entry of data not restored)
            for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
                np.testing.assert_array_equal(x, y)
        open(path, "wb").write(original)
    print(f"{len(caught)} of {len(files)} array files changed what is read back; each was caught: {caught}")
    assert len(files) >= 4 and caught
    assert any("does not match the checksum written at save" in why for why in caught)


def test_train_sample_and_evaluate_take_the_checkpoint_before_one_with_a_flipped_byte(tiny_run, tiny_config, tmp_path,
                                                                                      cache_dir, capsys):
    workdir = _copy(tiny_run, tmp_path)
    ckpt, abstract = _abstract_state(workdir, 20)
    for path in _array_files(workdir, 20, "params"):  # the first whose flipped byte changes a parameter read
        original = open(path, "rb").read()
        _flip(path)
        try:
            ckpt.params(20, abstract.params)
        except integrity.Damaged:
            break
        open(path, "wb").write(original)
    else:
        raise AssertionError("no flipped byte changed the restored state")
    ckpt.close()
    warning = f"warning: checkpoint 20 in {workdir} is damaged ("
    sampled = run_module("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens", "8")
    assert sampled.returncode == 0, sampled.stderr
    lines = sampled.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(warning) and lines[0].endswith("reading the one before it")
    assert sampled.stdout.startswith("--- sample 1 (step 10, 8 tokens")
    scored = run_module("lm.evaluate", "--workdir", workdir, "--cache_dir", cache_dir)
    assert scored.returncode == 0, scored.stderr
    # The same warning; the array it names may differ, as the arrays are read concurrently.
    warned = [line for line in scored.stderr.splitlines() if line.startswith("warning")]
    assert len(warned) == 1 and warned[0].startswith(warning) and warned[0].endswith("reading the one before it")
    assert json.loads(scored.stdout)["step"] == 10
    explicit = run_module("lm.sample", "--workdir", workdir, "--step", "20", "--prompt", "a")
    one_line_error(explicit, "checkpoint 20", "is damaged", "read another --step of [10]")

    capsys.readouterr()
    train(tiny_config, workdir)  # resumes from 10 and ends bitwise where the uninterrupted run ended
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("warning: damaged checkpoint 20 (") and lines[0].endswith(
        "), moved aside to checkpoints/damaged-20; resuming from checkpoint 10 instead"), lines
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "damaged-20"))
    a = jax.device_get(_abstract_state(tiny_run[0], 20)[0].restore(20, abstract)[0])
    b = jax.device_get(_abstract_state(workdir, 20)[0].restore(20, abstract)[0])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_parameters_that_are_not_finite_are_damage_a_reader_says_so_and_reads_the_one_before(tiny_run, tmp_path,
                                                                                            capsys):
    workdir = str(tmp_path / "nan")
    source = reader.read(tiny_run[0], 20, ONE_DEVICE)
    ckpt = manager.Checkpointer(workdir)
    meta = manager.make_meta(source.model, source.tokenizer, source.run)
    params = jax.device_get(source.params)
    ckpt.save_params(1, params, meta)
    poisoned = jax.tree.map(np.copy, params)
    poisoned["token_embedding"][3, 5] = np.nan  # checksums written at save match: the save itself was of a NaN
    ckpt.save_params(2, poisoned, meta)
    ckpt.wait()
    ckpt.close()
    capsys.readouterr()
    assert reader.read(workdir, None, ONE_DEVICE).step == 1
    assert _stderr_lines(capsys) == [f"warning: checkpoint 2 in {workdir} is damaged (its parameters are not finite); "
                                     "reading the one before it"]


# 2. A torn last line in metrics.jsonl, and a disk that fills during a metrics write.

def test_a_torn_metrics_line_is_dropped_on_resume_with_one_warning(tiny_run, tiny_config, tmp_path, capsys):
    workdir = _copy(tiny_run, tmp_path)
    metrics = os.path.join(workdir, "metrics.jsonl")
    before = open(metrics).read().splitlines()
    with open(metrics, "a") as f:
        f.write('{"step": 20, "loss": 3.4')  # a write cut short
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.steps = 30
    cfg.optim.schedule_steps = 20  # the schedule the run had: no warning of a changed learning rate
    capsys.readouterr()
    train(cfg, workdir)
    assert _stderr_lines(capsys) == [f"warning: dropped 1 torn line(s) of {metrics} (a write cut short)"]
    after = [json.loads(line) for line in open(metrics)]
    assert [json.dumps(r) for r in after[:len(before)]] == [json.dumps(json.loads(x)) for x in before]
    train_steps = [r["step"] for r in after if "loss" in r]
    assert train_steps == [5, 10, 15, 20, 25, 30]  # every record once, in order


def test_a_full_disk_during_a_metrics_write_is_one_line_and_the_run_resumes(tmp_path, cache_dir):
    """A real full disk: a tmpfs in a private mount namespace, filled up to 32 KiB before a run that logs every
    step (over 300 bytes each) and saves only at its end."""
    disk, run = tmp_path / "disk", tmp_path / "disk" / "run"
    first = " ".join(train_command(run, cache_dir, "--config.train.steps=10", "--config.train.log_every=1",
                                   "--config.optim.schedule_steps=200"))  # (one schedule: no warning it changed)
    long = " ".join(train_command(run, cache_dir, "--config.train.steps=200", "--config.train.log_every=1",
                                  "--config.checkpoint.every=1000", "--config.optim.schedule_steps=200"))
    script = tmp_path / "full_disk.sh"
    script.write_text(f"""set -u
mkdir -p {disk}
cd {ROOT}
O={tmp_path}
mount -t tmpfs -o size=4m tmpfs {disk}
{first} > $O/out1 2> $O/err1; echo $? > $O/rc1
free=$(df --output=avail -B1 {disk} | tail -1)
head -c $((free - 32768)) /dev/zero > {disk}/filler
{long} > $O/out2 2> $O/err2; echo $? > $O/rc2
rm {disk}/filler
{long} > $O/out3 2> $O/err3; echo $? > $O/rc3
cp {run}/metrics.jsonl $O/metrics
""")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)], env=USER_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = {i: {k: (tmp_path / f"{k}{i}").read_text() for k in ("rc", "out", "err")} for i in (1, 2, 3)}
    assert out[1]["rc"].strip() == "0", out[1]["err"]
    assert out[2]["rc"].strip() == "2" and out[2]["err"].splitlines() == [
        f"error: the disk filled up while writing the metrics in {run}; free some space and rerun the same command to "
        "resume from the last checkpoint"], out[2]["err"]
    assert "resuming at step 10" in out[3]["out"] and out[3]["rc"].strip() == "0", out[3]["err"]
    assert len(out[3]["err"].splitlines()) <= 1  # at most the warning of a torn line
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics") if '"loss"' in line]
    assert steps == list(range(1, 201))  # nothing lost but what the rerun computed again


# 3. A damaged meta in the newest checkpoint.

def test_a_newest_checkpoint_without_its_meta_is_set_aside_and_the_run_resumes(tiny_run, tmp_path, cache_dir):
    workdir = _copy(tiny_run, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20", "meta"))
    result = subprocess.run(train_command(workdir, cache_dir, "--config.train.steps=25",
                                          "--config.optim.schedule_steps=20"),  # the run's schedule, unchanged
                            cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: damaged checkpoint 20 (") and lines[0].endswith(
        "), moved aside to checkpoints/damaged-20; resuming from checkpoint 10 instead"), lines
    assert "resuming at step 10" in result.stdout and "step     25/25" in result.stdout


def test_a_truncated_newest_meta_is_set_aside(tiny_run, tmp_path):
    workdir = _copy(tiny_run, tmp_path)
    with open(_meta_file(workdir, 20), "r+") as f:
        f.truncate(100)
    ckpt = manager.Checkpointer(workdir)
    step, meta, damaged = ckpt.newest_meta()
    assert step == 10 and meta["model"]["num_layers"] == 2 and len(damaged) == 1
    assert damaged[0].startswith("20 (") and damaged[0].endswith("), moved aside to checkpoints/damaged-20")
    assert ckpt.all_steps() == [10] and os.path.isdir(os.path.join(workdir, "checkpoints", "damaged-20"))


# 4. Two trainers on one workdir.

def test_a_second_trainer_on_a_workdir_is_refused_and_the_first_run_goes_on_intact(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    overrides = ("--config.train.steps=300", "--config.checkpoint.every=20", "--config.train.log_every=5")
    first, cmd, out = start_training(workdir, cache_dir, lambda out: "step      5/300" in out, *overrides)
    second = subprocess.run(cmd, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    one_line_error(second, f"{workdir} is in use by another trainer (pid {first.pid} on ",
                   "wait for it to end or stop it, or use another --workdir")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if '"loss"' in line]
    assert steps == list(range(5, 301, 5))
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [280, 300]


# 5. A leftover tokenizer of other settings; 6. another batch size on resume.

def test_a_leftover_tokenizer_of_other_settings_is_replaced(tiny_config, tmp_path, cache_dir):
    """A run killed before its first checkpoint leaves its tokenizer; started again with other tokenizer settings,
    the run takes the tokenizer those settings make, and its data is prepared with that one."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "tokenizer.json").write_text(json.dumps(char_tokenizer(cache_dir).to_json()))
    cfg = tiny_config.copy_and_resolve_references()
    cfg.tokenizer.update(type="bpe", vocab_size=500)
    cfg.train.update(steps=2, eval_every=2)
    train(cfg, str(workdir))
    saved = reader.read(str(workdir), None, ONE_DEVICE).tokenizer
    assert saved.vocab_size == 500 and saved.encode("To be") != char_tokenizer(cache_dir).encode("To be")


def test_resuming_with_another_batch_size_is_refused(tiny_run, tiny_config, tmp_path):
    workdir = _copy(tiny_run, tmp_path)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.update(batch_size=16, steps=30)
    with pytest.raises(UserError, match=f"{workdir} holds a run trained with batch size 8, not 16; resume with "
                                        "--config.train.batch_size=8"):
        train(cfg, workdir)


# 7. Readers: damaged checkpoints of every kind, and a trainer deleting them.

def _truncate_array(w):
    for f in _array_files(w, 20, "params"):  # each (the arrays are spread over the files as the writes went)
        os.truncate(f, os.path.getsize(f) // 2)


def _remove_array(w):
    for f in _array_files(w, 20, "params"):
        os.remove(f)


def _garbage(w):
    """checkpoints/20 holding random bytes where its items were."""
    for item in ("params", "meta"):
        shutil.rmtree(os.path.join(w, "checkpoints", "20", item))
        with open(os.path.join(w, "checkpoints", "20", item), "wb") as f:
            f.write(os.urandom(4096))


DAMAGE = {
    "truncated array file": _truncate_array,
    "missing array file": _remove_array,
    "missing params": lambda w: shutil.rmtree(os.path.join(w, "checkpoints", "20", "params")),
    "missing meta": lambda w: shutil.rmtree(os.path.join(w, "checkpoints", "20", "meta")),
    "garbage": _garbage,
    "bad tokenizer": lambda w: _edit_meta(w, 20, lambda m: m["tokenizer"].update(model="Z2FyYmFnZQ==")),
    "unknown model key": lambda w: _edit_meta(w, 20, lambda m: m["model"].update(flux_capacitor=1)),
}


def test_readers_read_the_newest_good_checkpoint_past_every_kind_of_damage(tiny_run, tmp_path, capsys):
    for name, damage in DAMAGE.items():
        workdir = _copy(tiny_run, tmp_path, name.replace(" ", "_"))
        damage(workdir)
        capsys.readouterr()
        assert reader.read(workdir, None, ONE_DEVICE).step == 10, name
        lines = _stderr_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith(f"warning: checkpoint 20 in {workdir} is damaged ("), \
            (name, lines)
        with pytest.raises(UserError, match=r"checkpoint 20 in .* is damaged \(.*\); read another --step of \[10\]"):
            reader.read(workdir, 20, ONE_DEVICE)
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"], name  # readers never move
    sampled = run_module("lm.sample", "--workdir", str(tmp_path / "garbage"), "--prompt", "a", "--max_new_tokens", "4")
    assert sampled.returncode == 0 and len(sampled.stderr.strip().splitlines()) == 1, sampled.stderr
    assert "(step 10, 4 tokens" in sampled.stdout
    # Every array file gone fails many of orbax's reads at once: the reader leaves none of them running (their
    # completions would land on a closed event loop, their errors be logged as never retrieved), in a program
    # that hides nothing, as a user's own script calling the reader.
    script = ("import jax, sys; from lm.checkpoint import reader; from lm.parallel import mesh; "
              "layout = lambda run: mesh.tensor_layout(1); "
              "print(reader.read(sys.argv[1], None, layout).step)")
    read = subprocess.run([sys.executable, "-c", script, str(tmp_path / "missing_array_file")], cwd=ROOT,
                          env=USER_ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in read.stderr.splitlines() if not line.startswith("WARNING:absl:Given directory is read")]
    assert read.returncode == 0 and read.stdout == "10\n" and len(lines) == 1, read.stderr
    assert lines[0].startswith(f"warning: checkpoint 20 in {tmp_path / 'missing_array_file'} is damaged (")


def test_a_checkpoint_deleted_while_it_is_read_is_not_damage_the_reader_takes_the_newer_one(tiny_run, tmp_path,
                                                                                              capsys):
    """As a trainer does between a reader's listing and its reading: checkpoint 30 committed, then 20 deleted."""
    workdir = _copy(tiny_run, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    calls = []

    def layout_for(run):  # called once the newest checkpoint's meta is read, before its arrays are
        if not calls:
            shutil.copytree(os.path.join(checkpoints, "20"), os.path.join(checkpoints, "30.tmp"))
            os.rename(os.path.join(checkpoints, "30.tmp"), os.path.join(checkpoints, "30"))
            shutil.rmtree(os.path.join(checkpoints, "20"))
        calls.append(run)
        return ONE_DEVICE(run)

    capsys.readouterr()
    assert reader.read(workdir, None, layout_for).step == 30
    assert _stderr_lines(capsys) == [] and len(calls) == 2


def test_a_reader_takes_a_committed_checkpoint_while_a_trainer_writes_and_deletes_them(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    overrides = ("--config.train.steps=100000", "--config.checkpoint.every=5", "--config.checkpoint.keep=2",
                 "--config.train.log_every=100")
    trainer, _, _ = start_training(workdir, cache_dir, lambda _: len(os.listdir(workdir / "checkpoints")) >= 2
                                   if (workdir / "checkpoints").is_dir() else False, *overrides, poll=0.01)
    read = []
    try:  # reads until the trainer has committed (and deleted) three more checkpoints than the first one read
        while trainer.poll() is None and (len(read) < 2 or read[-1] < read[0] + 15):
            read.append(reader.read(str(workdir), None, ONE_DEVICE).step)
        sampled = run_module("lm.sample", "--workdir", str(workdir), "--prompt", "a", "--max_new_tokens", "4")
        alive = trainer.poll() is None
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.communicate(timeout=120)
    print(f"steps read while the trainer saved every 5 and kept 2: {read}")
    assert alive and read[-1] >= read[0] + 15 and read == sorted(read), read
    assert sampled.returncode == 0 and sampled.stderr == "", sampled.stderr


# 8. A read-only checkpoints folder; 9. a workdir that names where a reader writes.

def test_a_read_only_checkpoints_folder_is_one_line_before_training(tiny_run, tmp_path, cache_dir):
    workdir = _copy(tiny_run, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    command = " ".join(train_command(workdir, cache_dir, "--config.train.steps=30"))
    script = tmp_path / "read_only.sh"
    script.write_text(f"mount --bind {checkpoints} {checkpoints} && mount -o remount,bind,ro {checkpoints} && "
                      f"cd {ROOT} && {command}")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)], env=USER_ENV,
                            capture_output=True, text=True, timeout=300)
    one_line_error(result, f"cannot write in {checkpoints} (Read-only file system); make it writable or use another "
                           "--workdir")
    assert "step" not in result.stdout


def test_evaluate_writes_only_where_its_reader_says_and_names_the_data(tiny_run, tmp_path, cache_dir):
    workdir = _copy(tiny_run, tmp_path)
    chosen, secret = tmp_path / "chosen", tmp_path / "notes.txt"
    secret.write_text("private notes\n\n" * 200)
    for step in (10, 20):
        _edit_meta(workdir, step, lambda m: m["config"]["data"].update(path=str(secret), cache_dir=str(chosen)))
    mine = tmp_path / "mine"
    result = run_module("lm.evaluate", "--workdir", workdir, "--cache_dir", str(mine))
    assert result.returncode == 0, result.stderr
    assert not chosen.exists() and mine.is_dir()
    assert f"evaluating the validation split of {secret} (the run's data; --data_path chooses other data)" in \
        result.stderr.splitlines()
    assert json.loads(result.stdout)["step"] == 20
    other = run_module("lm.evaluate", "--workdir", workdir, "--cache_dir", str(mine), "--data_path",
                       os.path.join(ROOT, "lm", "data", "tinyshakespeare.txt"))
    assert other.returncode == 0 and json.loads(other.stdout)["tokens"] != json.loads(result.stdout)["tokens"]


# 10. and 11. Interrupts and bad input at any moment: one line.

def test_sigint_or_sigterm_at_start_up_or_sigint_twice_in_a_save_is_one_line_and_exit_130_or_143(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    at_once = ("stopped at once by SIGINT (a checkpoint being written is dropped); rerun the same command to resume "
               "from the last checkpoint")
    importing = subprocess.run(signal_at("INT", "import:jax", workdir, cache_dir, "--config.train.steps=500"),
                               cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert importing.returncode == 130 and importing.stderr.strip() == at_once, importing.stderr
    # SIGTERM there (a SLURM job cancelled as it starts) is the same line, with its own name and status 143.
    terminated = subprocess.run(signal_at("TERM", "import:jax", workdir, cache_dir, "--config.train.steps=500"),
                                cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert terminated.returncode == 143 and terminated.stderr.strip() == at_once.replace("SIGINT", "SIGTERM"), \
        terminated.stderr
    proc, cmd, _ = start_training(workdir, cache_dir, lambda out: "starting at step 0" in out,
                                  "--config.train.steps=500", poll=0.001)
    proc.send_signal(signal.SIGINT)  # before the first step
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and len(stderr.strip().splitlines()) == 1, stderr
    # Twice while every step saves: the second lands in the save the first asked for, as it commits.
    proc, cmd, _ = start_training(workdir, cache_dir, lambda out: "step     10/40" in out, "--config.train.steps=40",
                                  "--config.checkpoint.every=1", "--config.train.log_every=10", poll=0.001,
                                  wrapper=("INT", f"sigint-commit:{workdir / 'checkpoints'}"))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip() == at_once, stderr
    saved = [f"stopped by SIGINT after step {s}; checkpoint {s} saved in {workdir}; rerun the same command to resume"
             for s in range(10, 41)]
    # The rerun resumes; once its clean stop is said, another Ctrl-C only hurries the exit, with no second line.
    resumed = lambda out: "/40" in out.partition("resuming at step")[2]  # noqa: E731 (a step logged after it)
    proc, _, _ = start_training(workdir, cache_dir, resumed, "--config.train.steps=40",
                                "--config.checkpoint.every=1", "--config.train.log_every=10", poll=0.001)
    proc.send_signal(signal.SIGINT)
    said = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    assert said.strip() in saved and proc.returncode == 130 and not rest.strip(), said + rest


def test_bad_input_is_one_line(tmp_path, cache_dir):
    raising, without = tmp_path / "raising.py", tmp_path / "without.py"
    raising.write_text("def get_config():\n    raise ValueError('no such size')\n")
    without.write_text("SIZE = 1\n")
    one_line_error(run_module("lm.train", "--config", str(raising), "--workdir", str(tmp_path / "w")),
                   f"cannot load config file {raising}: get_config() raised ValueError: no such size")
    one_line_error(run_module("lm.train", "--config", str(without), "--workdir", str(tmp_path / "w")),
                   f"config file {without} has no get_config() function")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    one_line_error(run_module(*train_command(a_file, cache_dir)[2:]), f"--workdir {a_file} is a file, not a folder")
    fresh = tmp_path / "fresh"
    one_line_error(run_module(*train_command(fresh, cache_dir, "--config.mesh.tensor=3",
                                             "--config.mesh.cpu_devices=3")[2:]),
                   "model.num_heads=2 is not divisible by mesh tensor=3")
    assert not os.path.exists(fresh / "tokenizer.json")  # said before a tokenizer was made
    one_line_error(run_module("lm.sample", "--workdir", str(fresh), "--stop", ""), "--stop ''")


def test_a_corpus_of_one_long_line_trains_a_tokenizer(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog; " * 20000).strip()  # 900 KB on one line
    tok = sentencepiece.train([text], "bpe", 300)
    assert tok.vocab_size == 300 and tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_a_signal_that_reaches_another_thread_runs_its_handler_while_the_main_thread_waits_for_a_save():
    """The case a second Ctrl-C met in a save's commit: the signal's C handler ran outside the main thread's lock
    wait (here: the main thread blocks it, so another thread takes it), and a plain wait would hold the Python
    handler until the save ended. `interrupt.waiting` runs it within a slice; the save here ends only when the
    handler has run (or, were it held, after a minute)."""
    assert threading.current_thread() is threading.main_thread()
    handled, released = threading.Event(), threading.Event()
    sender_ready, send = threading.Event(), threading.Event()

    def sender():
        sender_ready.set()
        send.wait()
        os.kill(os.getpid(), signal.SIGUSR1)  # the main thread blocks it: this thread (or another) takes it

    def save():
        send.set()
        return released.wait(60)  # True: released by the handler; False: a minute passed without it

    previous = signal.signal(signal.SIGUSR1, lambda *_: (handled.set(), released.set()))
    thread = threading.Thread(target=sender)
    thread.start()  # before the mask: its own mask lets SIGUSR1 in
    sender_ready.wait()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        assert interrupt.waiting(save) is True  # the handler ran while the save was still waiting for it
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
        signal.signal(signal.SIGUSR1, previous)
        thread.join()


def test_a_command_that_leaves_at_once_still_joins_its_threads_runs_its_exit_handlers_and_flushes_its_output(
        tmp_path):
    """`runner.leave` skips only the interpreter's teardown: a thread that is not a daemon finishes its write, an
    idle thread pool (orbax keeps one) does not hold the exit, the exit handlers run after the threads, and what
    was printed without a flush arrives; the status is sys.exit's."""
    log = tmp_path / "log"
    script = (
        "import atexit, concurrent.futures, sys, threading, time\n"
        "from lm.cli import runner\n"
        f"log = {str(log)!r}\n"
        "def slow():\n"
        "    time.sleep(0.5)\n"
        "    open(log, 'a').write('thread\\n')\n"
        "threading.Thread(target=slow).start()\n"
        "concurrent.futures.ThreadPoolExecutor(1).submit(int).result()\n"
        "atexit.register(lambda: open(log, 'a').write('exit handler\\n'))\n"
        "print('printed', end='')\n"
        "sys.stderr.write('said')\n"
        "runner.leave(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])\n")
    for code, status, stderr in (("3", 3, "said"), ("0", 0, "said"), ("bad news", 1, "saidbad news\n")):
        log.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-c", script, code], cwd=ROOT, env=USER_ENV, capture_output=True,
                              text=True, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (status, "printed", stderr)
        assert log.read_text() == "thread\nexit handler\n"


def test_links_planted_in_a_workdir_are_never_written_through(tmp_path, cache_dir):
    """A workdir received from elsewhere with `lock` or `metrics.jsonl` a link to a user's file, or
    `metrics.jsonl` a folder, or `checkpoints` a link to a user's folder: one line each, the target untouched. Links
    at the names of the files a run writes whole (its tokenizer, its summary) are replaced by the run's files, their
    target untouched; a user's file and link at other names are kept as they are."""
    workdir, victim = tmp_path / "run", tmp_path / "victim.txt"
    workdir.mkdir()
    victim.write_text("not lm's\n")
    (workdir / "NOTES.md").write_text("my notes\n")  # a user's file and link beside what lm writes: kept as they are
    (workdir / "mine").symlink_to(victim)

    def train_here():
        command = train_command(workdir, cache_dir, "--config.train.steps=4", "--config.checkpoint.every=4")
        return subprocess.run(command, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)

    (workdir / "lock").symlink_to(victim)
    one_line_error(train_here(), f"{workdir / 'lock'} is a link", "remove it")
    os.remove(workdir / "lock")
    (workdir / "metrics.jsonl").symlink_to(victim)
    one_line_error(train_here(), f"{workdir / 'metrics.jsonl'} is not a file lm wrote", "move it away")
    os.remove(workdir / "metrics.jsonl")
    (workdir / "metrics.jsonl").mkdir()
    one_line_error(train_here(), f"{workdir / 'metrics.jsonl'} is not a file lm wrote")
    os.rmdir(workdir / "metrics.jsonl")
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    (tmp_path / "elsewhere").mkdir()
    (workdir / "checkpoints").symlink_to(tmp_path / "elsewhere")
    one_line_error(train_here(), f"{workdir / 'checkpoints'} is a link", "remove it")
    assert os.listdir(tmp_path / "elsewhere") == []
    os.remove(workdir / "checkpoints")
    for name in ("tokenizer.json", "summary.json"):
        if os.path.lexists(workdir / name):
            os.remove(workdir / name)
        (workdir / name).symlink_to(victim)
    done = train_here()
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "not lm's\n"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("tokenizer.json", "summary.json", "metrics.jsonl"):
        assert not os.path.islink(workdir / name) and json.loads((workdir / name).read_text().splitlines()[0])
        assert os.stat(workdir / name).st_mode & 0o777 == 0o666 & ~umask, name  # as open() makes a file, not private
    assert (workdir / "NOTES.md").read_text() == "my notes\n" and os.readlink(workdir / "mine") == str(victim)


def test_a_checkpoint_whose_checksums_were_deleted_is_damaged_not_read_unchecked(tiny_run, tmp_path):
    """Checkpoint 20 without its `integrity` item (its meta says it was written with one): the sampler warns that
    it is damaged and reads checkpoint 10; asked for step 20, one line. (A checkpoint written before checksums
    existed has no such mark, and is read as before: tests/fixtures/pre_redesign_run.)"""
    workdir = _copy(tiny_run, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20", "integrity"))
    sampled = run_module("lm.sample", "--workdir", workdir, "--max_new_tokens", "4")
    assert sampled.returncode == 0 and "--- sample 1 (step 10," in sampled.stdout, sampled.stderr
    assert sampled.stderr.splitlines() == [f"warning: checkpoint 20 in {workdir} is damaged (its checksums (the "
                                           "integrity item) are missing); reading the one before it"]
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--step", "20"),
                   f"checkpoint 20 in {workdir} is damaged (its checksums (the integrity item) are missing)")

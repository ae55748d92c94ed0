"""`lm.sweep --launcher slurm` and `srun ... lm.train --distributed` on a real single-node SLURM cluster started for
these tests (slurm_cluster.py): a 3-run sweep with one run that fails and one cancelled, requeued and resumed
bitwise; two srun tasks that train like one process; bad input in one line."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import slurm_cluster
from absl import flags
from conftest import ROOT, TEST_XLA_FLAGS, TINY, USER_ENV, final_state, one_line_error, train_command

from lm.errors import UserError
from lm.sweep import command, experiment
from lm.sweep import options as sweep_flags  # noqa: F401 (defines the flags command.main reads)
from lm.train.loop import train

EVENTS = os.path.join(ROOT, "tests", "events")

EXPERIMENT = """
BASE = {base!r}
FIXED = {{"data.cache_dir": {cache!r}, "train.steps": {steps}, "train.eval_every": 1000, "train.log_every": 1,
         "checkpoint.every": 5}}
SLURM = {{"time": "10"}}

def sweep(add):
    add({{"optim.lr": 0.003, "checkpoint.keep": 3}})  # the next run's twin (keep changes no step), never stopped
    add({{"optim.lr": 0.003}})  # cancelled, then requeued
    add({{"optim.name": "nosuch"}})  # fails: not an optimizer
"""


@pytest.fixture(scope="module")
def cluster():
    missing = slurm_cluster.missing()
    if missing or os.geteuid() != 0:
        pytest.fail(f"the SLURM tests start a cluster on 127.0.0.1 and need root and {', '.join(missing) or 'SLURM'}"
                    f": `{slurm_cluster.INSTALL}` (Debian), or leave them out with --deselect tests/test_slurm.py")
    c = slurm_cluster.Cluster()
    yield c
    c.stop()


def _env(cluster, devices: int = 1) -> dict[str, str]:
    return {**USER_ENV, "SLURM_CONF": cluster.env["SLURM_CONF"], "PATH": cluster.env["PATH"],
            "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"}


def _sweep(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm.sweep", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _losses(workdir) -> dict[int, float]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _holding(env: dict[str, str], holds: dict[str, str]) -> dict[str, str]:
    """`env` in which a run holds each checkpoint commit of `holds` (folder: marker file) until SIGTERM, having
    made the marker (tests/events/sitecustomize.py); sbatch passes the environment on to the runs."""
    path = os.pathsep.join(p for p in (EVENTS, env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "LM_TEST_HOLD": json.dumps(holds)}


def _wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def test_a_sweep_on_slurm_names_its_failed_run_and_its_cancelled_and_requeued_run_resumes_bitwise(
        tmp_path, cache_dir, cluster):
    steps = 40
    path = tmp_path / "three.py"
    path.write_text(EXPERIMENT.format(base=TINY, cache=cache_dir, steps=steps))
    root = str(tmp_path / "runs")
    out_dir = os.path.join(root, "three")
    good, cancelled, failing = "optim.lr=0.003,checkpoint.keep=3", "optim.lr=0.003", "optim.name=nosuch"
    env = _env(cluster)
    every = 5  # checkpoint.every in EXPERIMENT
    held = lambda step: (os.path.join(out_dir, cancelled, "checkpoints", str(step)),  # noqa: E731
                         str(tmp_path / f"held-{step}"))  # (checkpoint folder, marker made as its commit is held)
    jobs = lambda: json.load(open(os.path.join(out_dir, "slurm", "jobs.json")))  # noqa: E731

    # Submitted as one array of 3 tasks; the second holds its checkpoint 10's commit until SIGTERM, so it cannot pass
    # its checkpoint 15 before it is cancelled there.
    folder, marker = held(10)
    first = _sweep(_holding(env, {folder: marker}), str(path), "--root", root, "--launcher", "slurm")
    assert first.returncode == 0, first.stderr
    assert re.search(r"submitted job \d+: 3 run\(s\)", first.stdout) and "pending or running" in first.stdout
    script = open(os.path.join(out_dir, "slurm", "array.sbatch")).read()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --time=10" in script and "#SBATCH --requeue" in script
    _wait_for(lambda: os.path.exists(marker), "the commit of checkpoint 10")
    subprocess.run(["scancel", jobs()[cancelled]["task"]], env=env, check=True)

    # --collect --wait: the first run finished; the other two are named with their logs; nothing is resubmitted.
    collected = _sweep(env, str(path), "--root", root, "--launcher", "slurm", "--collect", "--wait")
    assert collected.returncode == 1, collected.stderr
    assert "2 of 3 runs ended unfinished" in collected.stderr and "submitted" not in collected.stdout
    stopped = re.search(rf"{re.escape(cancelled)}: ended unfinished \(stopped by SIGTERM after step (\d+); "
                        rf"checkpoint \1 saved .*\); log: (\S+)", collected.stdout)
    assert stopped, collected.stdout
    saved_at, log = int(stopped.group(1)), stopped.group(2)
    assert 10 <= saved_at <= 10 + every and "stopped by SIGTERM" in open(log).read()
    failed = re.search(rf"{re.escape(failing)}: ended unfinished \((error: config.optim.name='nosuch' [^)]*)\); "
                       r"log: (\S+)", collected.stdout)
    assert failed and failed.group(1) in open(failed.group(2)).read(), collected.stdout
    assert f"{good}: finished" in collected.stdout
    assert open(os.path.join(out_dir, "results.csv")).read().count("\n") == 2  # header and the finished run

    # Rerun: the two unfinished runs are resubmitted. The cancelled one resumes at its checkpoint; at its next
    # checkpoint's commit (held as before), SLURM requeues its task (as on preemption): it stops, starts again, and
    # resumes once more.
    old_task = jobs()[cancelled]["task"]
    after = (saved_at // every + 1) * every
    folder, marker = held(after)
    rerun = subprocess.Popen([sys.executable, "-m", "lm.sweep", str(path), "--root", root, "--launcher", "slurm",
                              "--wait"], cwd=ROOT, env=_holding(env, {folder: marker}), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: jobs()[cancelled]["task"] != old_task, "the resubmission")
    task = jobs()[cancelled]["task"]
    _wait_for(lambda: os.path.exists(marker), f"the commit of checkpoint {after} after resuming")
    subprocess.run(["scontrol", "requeue", task], env=env, check=True)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 1 and "1 of 3 runs ended unfinished (optim.name=nosuch)" in err, err
    assert f"{cancelled}: ended unfinished" in out and "resubmitting it" in out
    assert re.search(r"submitted job \d+: 2 run\(s\)", out) and f"{cancelled}: finished" in out
    second_log = open(jobs()[cancelled]["log"]).read()
    resumed = [int(s) for s in re.findall(r"resuming at step (\d+)", second_log)]
    assert len(resumed) == 2 and resumed[0] == saved_at and after <= resumed[1] <= after + every, second_log
    rows = open(os.path.join(out_dir, "results.csv")).read().splitlines()
    assert len(rows) == 3 and rows[1].startswith(f'"{good}"') and rows[2].startswith(cancelled)

    # The run never stopped (its twin): the same losses at every step, and the same final state to the bit.
    assert _losses(os.path.join(out_dir, cancelled)) == _losses(os.path.join(out_dir, good))
    (a, a_data), (b, b_data) = (final_state(os.path.join(out_dir, run), steps) for run in (good, cancelled))
    assert a_data == b_data
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):  # parameters, Adam moments, step
        np.testing.assert_array_equal(x, y)
    print(f"sweep on SLURM: cancelled after step {saved_at}, resumed at steps {resumed}, ended at {steps}; "
          f"{len(jax.tree.leaves(a))} arrays equal to the bit; failed run's log {failed.group(2)}")


def test_two_srun_tasks_of_lm_train_distributed_in_a_job_or_an_array_task_give_the_losses_of_one_process(
        tmp_path, tiny_config, cluster):
    """Each process of 4 CPU devices, against this process's 8 (the settings of test_multiprocess.py)."""
    overrides = ["--config.train.steps=6", "--config.train.log_every=1", "--config.train.eval_every=3",
                 "--config.checkpoint.every=3"]
    cache_dir = tiny_config.data.cache_dir
    # A sweep's array task of 2 processes (tasks_per_node=2): srun in the batch script, --distributed added. It is
    # submitted first and trains while the plain job below does.
    path = tmp_path / "pair.py"
    fixed = {"data.cache_dir": cache_dir, **dict(o[len("--config."):].split("=") for o in overrides)}
    path.write_text(f"BASE = {TINY!r}\nFIXED = {fixed!r}\nSLURM = {{'tasks_per_node': 2}}\n"
                    "def sweep(add):\n    add({})\n")
    sweep = ("--root", str(tmp_path / "runs"), "--launcher", "slurm")
    submitted = _sweep(_env(cluster, devices=4), str(path), *sweep)
    assert submitted.returncode == 0 and "submitted" in submitted.stdout, submitted.stdout + submitted.stderr
    # A plain job: srun as the README writes it.
    two = subprocess.run(["srun", "--ntasks=2", *train_command(tmp_path / "two", cache_dir, *overrides),
                          "--distributed"], cwd=ROOT, env=_env(cluster, devices=4), capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "in 2 process(es)" in two.stdout
    swept = _sweep(_env(cluster, devices=4), str(path), *sweep, "--collect", "--wait")
    assert swept.returncode == 0 and "[1/1] base: finished" in swept.stdout, swept.stdout + swept.stderr
    script = open(tmp_path / "runs" / "pair" / "slurm" / "array.sbatch").read()
    assert "#SBATCH --ntasks-per-node=2" in script and script.count(" --distributed ;;") == 1
    log = open(json.load(open(tmp_path / "runs" / "pair" / "slurm" / "jobs.json"))["base"]["log"]).read()
    assert "in 2 process(es)" in log
    # One process: this one.
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.update(steps=6, log_every=1, eval_every=3)
    cfg.checkpoint.every = 3
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg, str(tmp_path / "one"))
    want = _losses(tmp_path / "one")
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    for got in (_losses(tmp_path / "two"), _losses(tmp_path / "runs" / "pair" / "base")):
        assert sorted(got) == sorted(want)
        np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=1e-5)
        print("srun: largest relative difference from one process", max(abs(got[k] / want[k] - 1) for k in want))


def test_bad_slurm_input_is_one_line(tmp_path, cluster, capsys, monkeypatch):
    path = tmp_path / "bad.py"
    body = "BASE = 'configs/tiny.py'\n{}\ndef sweep(add):\n    add({{'optim.lr': 0.1}})\n"
    path.write_text(body.format("SLURM = {'time': '1-00:00:00', 'gpus_per_node': 8}"))
    # --dry_run prints the batch script: the file's resources, and the flags' over them.
    experiment.run(str(path), str(tmp_path / "runs"), dry_run=True, launcher="slurm", resources={"gpus_per_node": 4})
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-0\n" in script and "#SBATCH --time=1-00:00:00\n" in script
    assert "#SBATCH --gpus-per-node=4\n" in script and " --config.optim.lr=0.1 ;;" in script
    path.write_text(body.format(""))
    no_sbatch = _sweep({**USER_ENV, "PATH": os.path.dirname(sys.executable)}, str(path), "--root",
                       str(tmp_path / "runs"), "--launcher", "slurm")
    one_line_error(no_sbatch, "needs SLURM's sbatch, which is not on PATH", "--launcher local")
    try:  # a resource flag without --launcher slurm (the command's flags parsed in this process, then reset)
        argv = flags.FLAGS(["lm.sweep", str(path), "--partition=gpu"])
        with pytest.raises(UserError, match=r"^--partition is for --launcher slurm; add --launcher slurm$"):
            command.main(argv)
    finally:
        flags.FLAGS.unparse_flags()
    for name in ("SLURM_CONF", "PATH"):  # in this process from here on: SLURM's commands and the test cluster
        monkeypatch.setenv(name, cluster.env[name])
    with pytest.raises(UserError, match=r"sbatch refused the sweep: Invalid partition name specified \(resources: "
                       r".*partition=nosuch; script: "):
        experiment.run(str(path), str(tmp_path / "runs"), launcher="slurm", resources={"partition": "nosuch"})
    path.write_text(body.format("SLURM = {'nodes': 0}"))
    with pytest.raises(UserError, match=rf"SLURM in {path}: nodes \(nodes per run\) must be an integer of at least 1"):
        experiment.run(str(path), str(tmp_path / "runs"), launcher="slurm")
    for given, match in (("{'gpus': 1}", "has no resource 'gpus'; it takes nodes, "),
                         ("{'time': '1 hour'}", "time must be a SLURM time limit"),
                         ("{'partition': 3}", "partition must be a name"),
                         ("['gpu']", "must be a dict")):
        path.write_text(body.format(f"SLURM = {given}"))
        with pytest.raises(UserError, match=match):
            experiment.run(str(path), str(tmp_path / "runs"), launcher="slurm")
    path.write_text(body.format(""))
    with pytest.raises(UserError, match="lm.sweep's flags: gpus_per_node"):
        experiment.run(str(path), str(tmp_path / "runs"), launcher="slurm", resources={"gpus_per_node": -1})
    assert not os.path.exists(tmp_path / "runs" / "bad" / "slurm" / "jobs.json")  # nothing was submitted


def test_the_batch_script_carries_max_running_account_and_cpus_per_task_from_file_and_flags(tmp_path, capsys):
    """lm.sweep --launcher slurm --dry_run, its flags parsed in this process: the experiment file's SLURM dict
    gives account and cpus_per_task, a flag gives max_running over the file's (the array's %N), for 3 runs."""
    path = tmp_path / "three.py"
    path.write_text(f"BASE = {TINY!r}\nSLURM = {{'account': 'lab7', 'cpus_per_task': 6, 'max_running': 3}}\n"
                    "def sweep(add):\n    for lr in (0.1, 0.2, 0.3):\n        add({'optim.lr': lr})\n")
    try:
        argv = flags.FLAGS(["lm.sweep", str(path), f"--root={tmp_path / 'runs'}", "--launcher=slurm", "--dry_run",
                            "--max_running=2"])
        command.main(argv)
    finally:
        flags.FLAGS.unparse_flags()
    script = capsys.readouterr().out
    sbatch = [line for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert "#SBATCH --array=0-2%2" in sbatch, script  # 3 tasks, at most 2 at once: the flag over the file's 3
    assert "#SBATCH --account=lab7" in sbatch and "#SBATCH --cpus-per-task=6" in sbatch, script
    assert f"#SBATCH --output={tmp_path / 'runs' / 'three' / 'slurm'}/%A_%a.log" in sbatch, script  # --root
    assert script.count(" --config.optim.lr=") == 3 and not (tmp_path / "runs").exists()  # nothing submitted
    experiment.run(str(path), str(tmp_path / "runs"), dry_run=True, launcher="slurm",
                   resources={"account": "lab8", "cpus_per_task": 2})  # flags given: over the file's
    sbatch = [line for line in capsys.readouterr().out.splitlines() if line.startswith("#SBATCH ")]
    assert {"#SBATCH --array=0-2%3", "#SBATCH --account=lab8", "#SBATCH --cpus-per-task=2"} <= set(sbatch), sbatch
    path.write_text(f"BASE = {TINY!r}\ndef sweep(add):\n    add({{'optim.lr': 0.1}})\n")  # no resources: none asked
    experiment.run(str(path), str(tmp_path / "runs"), dry_run=True, launcher="slurm")
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-0\n" in script and "--account" not in script and "--cpus-per-task" not in script
    assert "#SBATCH --nodes=1\n" in script and "--distributed" not in script
    experiment.run(str(path), str(tmp_path / "runs"), dry_run=True, launcher="slurm", resources={"nodes": 2})
    script = capsys.readouterr().out  # 2 nodes: a run of 2 processes, which lm.train --distributed joins
    assert "#SBATCH --nodes=2\n" in script and script.count(" --config.optim.lr=0.1 --distributed ;;") == 1, script

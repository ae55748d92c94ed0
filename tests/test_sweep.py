"""`python -m lm.sweep`: dry-run commands that run, a 2-run sweep of the tiny config that resumes an interrupted run
and finishes both, a rerun that trains nothing, the results table against each run's JSONL, and every experiment
file loading and expanding."""

import functools
import glob
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess

import numpy as np
import pytest
from conftest import ROOT, TEST_XLA_FLAGS, TINY, USER_ENV

from lm import config as config_lib
from lm.errors import Stopped, UserError
from lm.plot import figure
from lm.sweep import experiment, slurm

EXPERIMENT = """
BASE = {base!r}
FIXED = {{"data.cache_dir": {cache!r}, "train.steps": 10, "train.eval_every": 10, "train.log_every": 2,
         "checkpoint.every": 2}}

def sweep(add):
    add({{"optim.lr": 0.001}})
    add({{"optim.lr": 0.003, "model.num_layers": 1}})
"""


def _mtimes(root: str) -> dict[str, float]:
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{root}/**/*", recursive=True)}


def test_dry_run_commands_run_a_sweep_resumes_and_finishes_its_runs_and_a_rerun_trains_nothing(tmp_path, cache_dir,
                                                                                                capfd, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)  # the runs see the CPU devices a user has, not the eight
    path = tmp_path / "two_lrs.py"
    path.write_text(EXPERIMENT.format(base=TINY, cache=cache_dir))
    root = str(tmp_path / "runs")
    names = ["optim.lr=0.001", "optim.lr=0.003,model.num_layers=1"]

    # --dry_run prints the commands and trains nothing; the second, run as printed, trains its run to the end.
    assert experiment.run(str(path), root, dry_run=True) == [] and not os.path.exists(root)
    commands = capfd.readouterr().out.strip().splitlines()
    assert len(commands) == 2 and all(" -m lm.train --config " in c for c in commands)
    done = subprocess.run(shlex.split(commands[1]), cwd=ROOT, env=USER_ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "runs" / "two_lrs" / names[1] / "summary.json").read_text())["steps"] == 10

    # The first run is interrupted: its printed command stops at a non-finite step 6, checkpoint 4 its last.
    stopped = subprocess.run(shlex.split(commands[0]) + ["--config.train.nan_steps=(6,)"], cwd=ROOT, env=USER_ENV,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 3 and "checkpoint 4 is the last good state" in stopped.stderr, stopped.stderr
    # The sweep resumes the first run from there and skips the second, which its printed command finished. A user's
    # file and link in its folder are kept; links at the names of its results are replaced, not written through.
    out_dir, victim = tmp_path / "runs" / "two_lrs", tmp_path / "victim.txt"
    victim.write_text("not lm's\n")
    (out_dir / "NOTES.md").write_text("my notes\n")
    for name in ("mine", "results.md", "results.csv", "loss.png"):
        (out_dir / name).symlink_to(victim)
    capfd.readouterr()
    rows = experiment.run(str(path), root)
    assert victim.read_text() == "not lm's\n" and (out_dir / "NOTES.md").read_text() == "my notes\n"
    assert os.readlink(out_dir / "mine") == str(victim)
    assert not any(os.path.islink(out_dir / name) for name in ("results.md", "results.csv", "loss.png"))
    out = capfd.readouterr().out
    assert f"{names[0]}: training in" in out and f"{names[1]}: finished earlier, skipped" in out
    assert "resuming at step 4" in out and "starting at step 0" not in out
    assert [r["run"] for r in rows] == names
    for row in rows:
        with open(os.path.join(root, "two_lrs", row["run"], "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        train = [r for r in records if "loss" in r]
        assert [r["step"] for r in train] == [2, 4, 6, 8, 10] and row["train_loss"] == train[-1]["loss"]
        assert row["val_loss"] == [r["val_loss"] for r in records if "val_loss" in r][-1]
        assert row["tokens"] == train[-1]["train_tokens"] == 10 * 8 * 32  # steps x batch x context
        assert row["flops"] == train[-1]["train_flops"] > 0 and row["tokens_per_sec"] > 0 and row["wall_s"] > 0
    assert rows[0]["parameters"] > rows[1]["parameters"] > 0  # two layers, then one
    table = (tmp_path / "runs" / "two_lrs" / "results.md").read_text().splitlines()
    assert len(table) == 4 and names[1] in table[3]
    assert os.path.getsize(tmp_path / "runs" / "two_lrs" / "loss.png") > 0

    before = _mtimes(os.path.join(root, "two_lrs"))
    assert experiment.run(str(path), root) == rows
    assert capfd.readouterr().out.count("finished earlier, skipped") == 2
    after = _mtimes(os.path.join(root, "two_lrs"))
    assert {p: t for p, t in after.items() if "/results." not in p and not p.endswith("loss.png")} == \
        {p: t for p, t in before.items() if "/results." not in p and not p.endswith("loss.png")}  # nothing retrained
    # A link planted at a run's folder: the sweep would train into what it points to; it refuses in one line.
    os.rename(out_dir / names[1], tmp_path / "moved")
    (out_dir / names[1]).symlink_to(tmp_path / "moved")
    with pytest.raises(UserError, match=f"^{re.escape(str(out_dir / names[1]))} is a link; lm does not write through "
                                        "links in its folders: remove it$"):
        experiment.run(str(path), root)


def test_a_failing_run_stops_a_local_sweep_with_its_exit_status_and_starts_no_later_run(tmp_path, cache_dir, capfd,
                                                                                         monkeypatch):
    """docs/reference.md: here, a run that fails stops the sweep with its exit status (lm.train's 2 for a config
    value it refuses), and a rerun goes on from it; the run after it is not started."""
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)
    path = tmp_path / "bad_norm.py"
    path.write_text(f"BASE = {TINY!r}\nFIXED = {{'data.cache_dir': {cache_dir!r}, 'train.steps': 2}}\n"
                    "def sweep(add):\n    add({'model.norm': 'bogus'})\n    add({'optim.lr': 0.001})\n")
    root = tmp_path / "runs"
    with pytest.raises(Stopped) as stopped:
        experiment.run(str(path), str(root))
    assert stopped.value.status == 2
    assert "run model.norm=bogus ended with exit status 2; rerun the sweep" in str(stopped.value)
    captured = capfd.readouterr()
    assert "[1/2] model.norm=bogus: training in" in captured.out and "[2/2]" not in captured.out, captured.out
    assert "config.model.norm must be one of ('layernorm', 'rmsnorm'), got 'bogus'" in captured.err  # lm.train's line
    assert not (root / "bad_norm" / "optim.lr=0.001").exists() and not (root / "bad_norm" / "results.md").exists()


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                                        if "def sweep(" in open(p).read()))
def test_every_experiment_file_loads_and_expands(path):
    base, fixed, runs, _, resources = experiment.load(path)
    assert os.path.isfile(os.path.join(ROOT, base)) and runs
    slurm.resources(resources, path)  # SLURM resources, where given, are ones lm.sweep takes
    names = [experiment.run_name({**o}) for o in runs]
    assert len(set(names)) == len(names)  # every run gets a workdir of its own
    spec = importlib.util.spec_from_file_location("base", os.path.join(ROOT, base))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for overrides in runs:  # every run's config is one lm.train accepts
        cfg = module.get_config()
        for key, value in {**fixed, **overrides}.items():
            *sections, name = key.split(".")  # 'optim.lr', or a top-level key such as 'seed'
            functools.reduce(lambda c, k: c[k], sections, cfg)[name] = value
        config_lib.build(cfg)


def test_the_scaling_fit_recovers_a_known_power_law():
    spec = importlib.util.spec_from_file_location("scaling", os.path.join(ROOT, "experiments", "scaling.py"))
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    n = np.array([2.5e4, 5.7e4, 1.5e5, 4.5e5, 7.9e5])
    a, alpha, c = scaling.fit_power_law(n, 9.0 * n**-0.35 + 1.4)
    assert (a, alpha, c) == pytest.approx((9.0, 0.35, 1.4), rel=1e-4)
    a, alpha, c = scaling.fit_power_law(n, 3.0 * n**-0.2)  # no floor: c stays at 0, not below
    assert c == pytest.approx(0.0, abs=1e-6) and alpha == pytest.approx(0.2, rel=1e-4)


def test_an_experiment_file_without_a_sweep_is_named(tmp_path):
    (tmp_path / "empty.py").write_text("BASE = 'configs/tiny.py'\n")
    with pytest.raises(UserError, match=r"empty.py needs BASE \(a config file\) and def sweep\(add\)"):
        experiment.load(str(tmp_path / "empty.py"))


SEEDS_EXPERIMENT = """
BASE = {base!r}
FIXED = {{"data.cache_dir": {cache!r}, "train.steps": 4, "train.eval_every": 4, "train.log_every": 2,
         "train.eval_batches": 2, "checkpoint.every": 4}}
SEEDS = (0, 1)
BASELINE = {{"optim.lr": 0.001}}

def sweep(add):
    add({{"optim.lr": 0.001}})
    add({{"optim.lr": 0.01}})
"""


def _welch_p(a, b):
    """Two-sided p-value of Welch's t-test, by hand: t, the Welch-Satterthwaite degrees of freedom, and twice the
    t density's tail past |t|, integrated numerically in u = |t| / x (so the whole tail is a finite interval)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = abs(np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    u = np.linspace(1e-9, 1.0, 400_001)
    x = t / u
    density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x ** 2 / df) ** (
        -(df + 1) / 2)
    f = density * t / u ** 2  # dx = t / u^2 du
    return 2.0 * float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(u)))


def test_a_seeds_sweep_writes_each_arms_mean_deviation_and_welch_p_value(tmp_path, cache_dir, monkeypatch):
    """2 arms x 2 seeds (the fewest with a sample deviation) on the tiny config: results.md's arms table holds the
    mean and sample deviation of each arm's final validation losses and Welch's p-value against the baseline,
    recomputed here from the runs' own metrics.jsonl."""
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)
    path = tmp_path / "seeds.py"
    path.write_text(SEEDS_EXPERIMENT.format(base=TINY, cache=cache_dir))
    rows = experiment.run(str(path), str(tmp_path / "runs"))
    assert [r["run"] for r in rows] == [f"optim.lr={lr},seed={s}" for lr in ("0.001", "0.01") for s in (0, 1)]
    losses = {}
    for row in rows:
        with open(tmp_path / "runs" / "seeds" / row["run"] / "metrics.jsonl") as f:
            final = [json.loads(line)["val_loss"] for line in f if "val_loss" in line][-1]
        losses.setdefault(row["run"].split(",")[0], []).append(final)
    assert len(set(losses["optim.lr=0.001"])) == 2  # the seeds differ
    table = (tmp_path / "runs" / "seeds" / "results.md").read_text()
    arms = re.findall(r"^\| (optim\.lr=[\d.]+) \| 2 \| ([\d.]+) \| ([\d.]+) \| ([\d.e-]*) \|$", table, re.M)
    assert [a for a, _, _, _ in arms] == ["optim.lr=0.001", "optim.lr=0.01"], table
    for arm, mean, std, _ in arms:
        assert float(mean) == pytest.approx(np.mean(losses[arm]), abs=1e-4)
        assert float(std) == pytest.approx(np.std(losses[arm], ddof=1), abs=1e-4)
    assert arms[0][3] == ""  # the baseline against itself: no p-value
    want = _welch_p(losses["optim.lr=0.01"], losses["optim.lr=0.001"])
    print(f"arms {losses}; Welch p {arms[1][3]} (by hand {want:.4g})")
    assert float(arms[1][3]) == pytest.approx(want, rel=1e-3)  # 4 significant digits; Student's t is 12% off
    # loss.png draws each arm's mean training loss and its band: the numbers behind it, from the records.
    groups = {arm: [str(tmp_path / "runs" / "seeds" / f"{arm},seed={s}") for s in (0, 1)] for arm in losses}
    for arm, (xs, mean, std) in figure.arm_curves(groups, "steps").items():
        train = []
        for workdir in groups[arm]:
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                train.append([r["loss"] for r in map(json.loads, f) if "loss" in r])
        assert list(xs) == [2, 4]
        np.testing.assert_allclose(mean, np.mean(train, axis=0), rtol=1e-12)
        np.testing.assert_allclose(std, np.std(train, axis=0, ddof=1), rtol=1e-12)
    assert os.path.getsize(tmp_path / "runs" / "seeds" / "loss.png") > 0


def test_bad_seeds_or_baseline_are_one_line(tmp_path):
    for body, match in (("SEEDS = (0, 0)", "must be distinct integers"), ("BASELINE = 0.001", "must be the overrides"),
                        ("SEEDS = (0, 1)\nBASELINE = {'optim.lr': 0.5}", "names the arm 'optim.lr=0.5'")):
        path = tmp_path / "bad.py"
        path.write_text(f"BASE = 'configs/tiny.py'\n{body}\ndef sweep(add):\n    add({{'optim.lr': 0.1}})\n")
        with pytest.raises(UserError, match=match):
            experiment.load(str(path))

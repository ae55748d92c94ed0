"""An experiment: its file, its runs (here one after another, or on SLURM), and the table and plot of their results.

An experiment file names a base config and adds one set of overrides per run:

    BASE = "configs/shakespeare_char.py"
    FIXED = {"train.steps": 2000}          # optional: overrides of every run, left out of the run names

    def sweep(add):
        for lr in (3e-4, 1e-3, 3e-3):
            add({"optim.lr": lr})

    SEEDS = (0, 1, 2)                      # optional: each run once per seed, with mean, std and Welch's p-value
    BASELINE = {"optim.lr": 1e-3}          # optional with SEEDS: the arm the others are tested against (seeds.py)
    SLURM = {"partition": "gpu", "time": "4:00:00"}   # optional: resources under --launcher slurm (slurm.py)

Each run trains in ROOT/NAME/<its overrides> with `python -m lm.train`. A run whose workdir holds `summary.json`
(written when training reaches its last step) is skipped; any other is started, or resumed from its last
checkpoint: here one after another, or as a SLURM job array (slurm.py). `--dry_run` prints the commands instead,
one per line (with --launcher slurm, the batch script). At the end, of the finished runs:
ROOT/NAME/results.csv and results.md (overrides, parameters, tokens, FLOPs, final train and validation loss,
bits per byte, wall time, tokens/s; with SEEDS, each arm's mean, deviation and p-value) and ROOT/NAME/loss.png
(every run's loss curves; with SEEDS, each arm's mean curve and its band).
"""

import csv
import importlib.util
import io
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from lm import folders
from lm.errors import Stopped, UserError
from lm.plot import figure
from lm.run_files import SUMMARY
from lm.sweep import seeds, slurm

COLUMNS = ("run", "parameters", "tokens", "flops", "train_loss", "val_loss", "val_bits_per_byte", "wall_s",
           "tokens_per_sec")


class Experiment(NamedTuple):
    """An experiment file's base config, fixed overrides, one override dict per run (`seed` among them when the
    file gives SEEDS), the name of its BASELINE arm (None: none) and its SLURM resources (unchecked)."""

    base: str
    fixed: dict[str, Any]
    runs: list[dict[str, Any]]
    baseline: str | None
    slurm: Any


def load(path: str) -> Experiment:
    """The experiment file `path`."""
    if not os.path.isfile(path):
        raise UserError(f"experiment file {path} does not exist; pass experiments/NAME.py")
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "BASE") or not hasattr(module, "sweep"):
        raise UserError(f"{path} needs BASE (a config file) and def sweep(add); see lm/sweep/experiment.py")
    runs: list[dict[str, Any]] = []
    module.sweep(lambda overrides: runs.append(dict(overrides)))
    if not runs:
        raise UserError(f"sweep() in {path} added no run")
    seed_list = tuple(getattr(module, "SEEDS", ()))
    integers = all(isinstance(x, int) and not isinstance(x, bool) for x in seed_list)
    if len(set(seed_list)) != len(seed_list) or not integers:
        raise UserError(f"SEEDS in {path} must be distinct integers, e.g. SEEDS = (0, 1, 2); got {seed_list!r}")
    if seed_list:
        runs = [{**o, "seed": s} for o in runs for s in seed_list]
    baseline = getattr(module, "BASELINE", None)
    if baseline is not None and not isinstance(baseline, dict):
        raise UserError(f"BASELINE in {path} must be the overrides of one arm, e.g. {{'optim.lr': 0.001}}; got "
                        f"{baseline!r}")
    if baseline is not None and run_name(baseline) not in {arm(o) for o in runs}:
        raise UserError(f"BASELINE in {path} names the arm {run_name(baseline)!r}, which sweep() does not add; "
                        f"arms: {', '.join(dict.fromkeys(arm(o) for o in runs))}")
    return Experiment(module.BASE, dict(getattr(module, "FIXED", {})), runs,
                      None if baseline is None else run_name(baseline), getattr(module, "SLURM", {}))


def run_name(overrides: dict[str, Any]) -> str:
    """A workdir name from overrides, e.g. optim.lr=0.001,model.num_layers=4 ('base' for none)."""
    name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^\w.,=+-]", "_", name)


def arm(overrides: dict[str, Any]) -> str:
    """The name of the arm a run belongs to: its run name without its seed."""
    return run_name({k: v for k, v in overrides.items() if k != "seed"})


def command(base: str, workdir: str, overrides: dict[str, Any]) -> list[str]:
    """The `python -m lm.train` command line of one run."""
    return [sys.executable, "-m", "lm.train", "--config", base, "--workdir", workdir,
            *(f"--config.{k}={v}" for k, v in overrides.items())]


def result_row(name: str, workdir: str) -> dict[str, Any]:
    """A results-table row of a finished run, from its summary.json and metrics.jsonl."""
    with open(os.path.join(workdir, SUMMARY)) as f:
        summary = json.load(f)
    records = figure.read_metrics(workdir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    wall, previous = 0.0, 0.0
    for r in train:  # a resumed run restarts its clock: add up the segments
        wall += previous if r["wall_time"] < previous else 0.0
        previous = r["wall_time"]
    return {"run": name, "parameters": summary["parameters"], "tokens": train[-1]["train_tokens"],
            "flops": train[-1]["train_flops"], "train_loss": train[-1]["loss"],
            "val_loss": val[-1]["val_loss"] if val else float("nan"),
            "val_bits_per_byte": val[-1]["val_bits_per_byte"] if val else float("nan"), "wall_s": wall + previous,
            "tokens_per_sec": statistics.median([r["tokens_per_sec"] for r in train if "tokens_per_sec" in r]
                                                or [float("nan")])}


def write_tables(rows: list[dict[str, Any]], out_dir: str, more: Sequence[str] = ()) -> None:
    """results.csv and results.md (the table, then the lines `more`) in `out_dir`, each written whole."""
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    folders.write_atomic(os.path.join(out_dir, "results.csv"), csv_text.getvalue())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    folders.write_atomic(os.path.join(out_dir, "results.md"), "\n".join([*lines, *more]) + "\n")


class Run(NamedTuple):
    """One run of a sweep: its name, its arm's name, its workdir and its overrides (the file's FIXED ones
    included)."""

    name: str
    arm: str
    workdir: str
    overrides: dict[str, Any]


def finished(workdir: str) -> bool:
    """Whether the run in `workdir` trained to its last step (the workdir holds summary.json)."""
    return os.path.exists(os.path.join(workdir, SUMMARY))


def run(path: str, root: str, dry_run: bool = False, launcher: str = "local", collect: bool = False,
        wait: bool = False, resources: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runs the experiment `path` here one run after another (launcher 'local'), or submits its unfinished runs
    to SLURM ('slurm': `collect` only gathers, `wait` waits for the submitted runs to end; `resources` from flags
    over the file's SLURM dict); with `dry_run`, prints the commands (slurm: the batch script) instead. Writes
    the results of the finished runs and returns their rows."""
    exp = load(path)
    name = os.path.basename(path)[:-3]
    out_dir = os.path.join(root, name)
    planned = [Run(run_name(o), arm(o), os.path.join(out_dir, run_name(o)), {**exp.fixed, **o}) for o in exp.runs]
    for folder in (out_dir, *(r.workdir for r in planned)):  # named by the sweep: a link there was planted
        folders.not_a_link(folder)
    commands = {r.name: command(exp.base, r.workdir, r.overrides) for r in planned}
    if launcher == "slurm":
        res = slurm.resources(resources or {}, "lm.sweep's flags", slurm.resources(exp.slurm, f"SLURM in {path}"))
        if slurm.processes(res) > 1:
            commands = {k: [*v, "--distributed"] for k, v in commands.items()}
    if dry_run:
        if launcher == "slurm":
            print(slurm.script(out_dir, list(commands.values()), res, name), end="")
        else:
            print("\n".join(shlex.join(c) for c in commands.values()))
        return []
    if launcher == "slurm":
        ended = slurm.launch(name, out_dir, [(r.name, r.workdir, commands[r.name]) for r in planned], finished,
                             res, submit=not collect, wait=wait)
    else:
        ended = []
        for i, r in enumerate(planned):
            if finished(r.workdir):
                print(f"[{i + 1}/{len(planned)}] {r.name}: finished earlier, skipped", flush=True)
                continue
            print(f"[{i + 1}/{len(planned)}] {r.name}: training in {r.workdir}", flush=True)
            done = subprocess.run(commands[r.name])
            if done.returncode != 0:
                raise Stopped(f"run {r.name} ended with exit status {done.returncode}; rerun the sweep to resume "
                              "it", done.returncode)
    rows = results(out_dir, [r for r in planned if finished(r.workdir)], exp)
    if ended:
        raise Stopped(f"{len(ended)} of {len(planned)} runs ended unfinished ({', '.join(ended)}); their logs are "
                      "named above; rerun the sweep to resubmit them", 1)
    return rows


def results(out_dir: str, done: list[Run], exp: Experiment) -> list[dict[str, Any]]:
    """results.csv, results.md and loss.png of the finished runs `done`; their rows."""
    if not done:
        return []
    rows = [result_row(r.name, r.workdir) for r in done]
    if any("seed" in o for o in exp.runs):
        values: dict[str, list[float]] = {}
        workdirs: dict[str, list[str]] = {}
        for row, r in zip(rows, done, strict=True):
            values.setdefault(r.arm, []).append(row["val_loss"])
            workdirs.setdefault(r.arm, []).append(r.workdir)
        baseline = exp.baseline if exp.baseline in values else None
        write_tables(rows, out_dir, seeds.markdown(seeds.arm_rows(values, baseline), baseline))
        figure.plot_arms(workdirs, os.path.join(out_dir, "loss.png"), "tokens")
    else:
        write_tables(rows, out_dir)
        figure.plot([r.workdir for r in done], os.path.join(out_dir, "loss.png"), "tokens")
    print(f"results of {len(done)} run(s): {out_dir}/results.md, results.csv, loss.png")
    return rows

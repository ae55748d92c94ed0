"""The SLURM launcher: a sweep's unfinished runs go to SLURM as one job array (sbatch), one task per run, and the
queue (squeue) tells which are still pending or running.

Resources come from the experiment file's `SLURM = {...}` dict, then from lm.sweep's flags of the same names:

    SLURM = {"partition": "gpu", "time": "4:00:00", "nodes": 2, "gpus_per_node": 8, "account": "lab"}

Each task runs `srun python -m lm.train ...` in the sweep's working directory; a task of several processes
(nodes x tasks_per_node > 1) adds `--distributed`, which finds the processes from SLURM's environment. Its output
goes to ROOT/NAME/slurm/JOB_TASK.log, and ROOT/NAME/slurm/jobs.json records which task and log each run had last.
Tasks are requeued when preempted (`--requeue`) and get SIGTERM two minutes before their time limit: the trainer
then saves a checkpoint, and a requeued or resubmitted task resumes from it.
"""

import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from lm import folders
from lm.errors import UserError

RESOURCES = {  # key: (default, what it means); 0 or '' leaves the cluster's default
    "nodes": (1, "nodes per run"),
    "tasks_per_node": (1, "processes per node (one per node sees all of its GPUs)"),
    "gpus_per_node": (0, "GPUs per node"),
    "cpus_per_task": (0, "CPU cores per process"),
    "time": ("", "time limit per run, e.g. 120 (minutes), 4:00:00 or 1-00:00:00"),
    "partition": ("", "partition"),
    "account": ("", "account charged"),
    "max_running": (0, "tasks of the array running at once"),
}
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
JOBS = "jobs.json"
POLL_S = (1.0, 30.0)  # seconds between looks at the queue while waiting: the first, growing by half to the last
FILES_POLL_S = 1.0  # seconds between looks at the runs' own files while waiting (a finished run is seen at once)


def resources(given: Any, source: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resources `given` (from `source`, named in errors) over `base` (None: the defaults), each checked."""
    if not isinstance(given, dict):
        raise UserError(f"{source} must be a dict such as {{'partition': 'gpu', 'time': '4:00:00'}}; got {given!r}")
    out = dict(base) if base is not None else {k: default for k, (default, _) in RESOURCES.items()}
    for key, value in given.items():
        if key not in RESOURCES:
            raise UserError(f"{source} has no resource {key!r}; it takes {', '.join(RESOURCES)}")
        default = RESOURCES[key][0]
        if isinstance(default, int):
            least = 1 if key in ("nodes", "tasks_per_node") else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"{source}: {key} ({RESOURCES[key][1]}) must be an integer of at least {least}; "
                                f"got {value!r}")
        elif key == "time":
            value = str(value)
            if value and not _TIME.match(value):
                raise UserError(f"{source}: time must be a SLURM time limit such as 120 (minutes), 4:00:00 or "
                                f"1-00:00:00; got {value!r}")
        elif not isinstance(value, str) or not re.fullmatch(r"[\w.,-]*", value):
            raise UserError(f"{source}: {key} must be a name such as 'gpu'; got {value!r}")
        out[key] = value
    return out


def processes(res: dict[str, Any]) -> int:
    """The processes of one run's task."""
    return res["nodes"] * res["tasks_per_node"]


def script(out_dir: str, tasks: list[list[str]], res: dict[str, Any], name: str) -> str:
    """The batch script of a job array whose task i runs the command `tasks[i]` under srun."""
    logs = os.path.abspath(os.path.join(out_dir, "slurm"))
    array = f"0-{len(tasks) - 1}" + (f"%{res['max_running']}" if res["max_running"] else "")
    options = {"job-name": f"lm-sweep-{name}", "array": array, "nodes": res["nodes"],
               "ntasks-per-node": res["tasks_per_node"], "output": f"{logs}/%A_%a.log", "open-mode": "append",
               "chdir": os.getcwd(), "signal": "TERM@120", "gpus-per-node": res["gpus_per_node"],
               "cpus-per-task": res["cpus_per_task"], "time": res["time"], "partition": res["partition"],
               "account": res["account"]}
    lines = ["#!/bin/bash", f"# The runs of the sweep {name}, one per array task (lm/sweep/slurm.py)."]
    lines += [f"#SBATCH --{k}={v}" for k, v in options.items() if v]
    lines += ["#SBATCH --requeue", 'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) srun {shlex.join(cmd)} ;;" for i, cmd in enumerate(tasks)]
    lines += ["esac"]
    return "\n".join(lines) + "\n"


def submit_array(out_dir: str, runs: list[tuple[str, list[str]]], res: dict[str, Any], name: str) -> str:
    """Submits `runs` ((name, train command) pairs) as one job array; records each run's task and log in
    jobs.json; returns the job id."""
    folder = folders.not_a_link(os.path.join(out_dir, "slurm"))
    os.makedirs(folder, exist_ok=True)
    batch = os.path.join(folder, "array.sbatch")
    folders.write_atomic(batch, script(out_dir, [cmd for _, cmd in runs], res, name))
    done = subprocess.run(["sbatch", "--parsable", batch], capture_output=True, text=True)
    if done.returncode != 0:
        said = ([ln for ln in done.stderr.splitlines() if ln.strip()] or [f"exit status {done.returncode}"])[-1]
        said = said.removeprefix("sbatch: error: ").removeprefix("Batch job submission failed: ")
        raise UserError(f"sbatch refused the sweep: {said} (resources: "
                        f"{', '.join(f'{k}={v}' for k, v in res.items() if v)}; script: {batch})")
    job = done.stdout.strip().split(";")[0]
    jobs = recorded(out_dir)
    for i, (run, _) in enumerate(runs):
        jobs[run] = {"task": f"{job}_{i}", "log": os.path.join(folder, f"{job}_{i}.log")}
    folders.write_json(os.path.join(folder, JOBS), jobs, indent=1)  # whole, for whoever reads it
    return job


def recorded(out_dir: str) -> dict[str, dict[str, str]]:
    """jobs.json: each submitted run's last task id and log."""
    path = os.path.join(out_dir, "slurm", JOBS)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def queued() -> set[str]:
    """The ids (JOB_TASK) of this user's array tasks that SLURM has pending or running."""
    done = subprocess.run(["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format", "%i"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"squeue failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return set(done.stdout.split())


def last_words(log: str) -> str:
    """What a run's log says last: the trainer's last 'error: ' or 'stopped by' line, else the log's last line."""
    if not os.path.exists(log):
        return "no log"
    with open(log, errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("error: ", "stopped by "))]
    return (said or lines or ["empty log"])[-1]


def need(*commands: str) -> None:
    """Stops with one line if a SLURM command is not on PATH."""
    for c in commands:
        if shutil.which(c) is None:
            raise UserError(f"--launcher slurm needs SLURM's {c}, which is not on PATH: run the sweep where SLURM's "
                            "commands are (a login node), or use --launcher local")


def launch(name: str, out_dir: str, runs: list[tuple[str, str, list[str]]], finished: Callable[[str], bool],
           res: dict[str, Any], submit: bool, wait: bool) -> list[str]:
    """Says where each run of `runs` ((name, workdir, train command)) stands (`finished(workdir)`: trained to its
    end); with `submit`, submits those neither finished nor queued as one array; with `wait`, waits until none is
    queued. Returns the runs that ended unfinished (failed, cancelled, out of time) and were not resubmitted."""
    need(*(["sbatch"] if submit else []), "squeue")
    queue, jobs = queued(), recorded(out_dir)

    def state(run: str, workdir: str) -> str:
        if finished(workdir):
            return "finished"
        if run not in jobs:
            return "new"
        return "queued" if jobs[run]["task"] in queue else "ended"

    states = {run: state(run, workdir) for run, workdir, _ in runs}
    todo = [(run, cmd) for run, _, cmd in runs if states[run] in ("new", "ended")] if submit else []
    if todo:
        for run, _ in todo:
            if states[run] == "ended":
                print(f"{run}: ended unfinished ({last_words(jobs[run]['log'])}); log: {jobs[run]['log']}; "
                      "resubmitting it", flush=True)
        job = submit_array(out_dir, todo, res, name)
        print(f"submitted job {job}: {len(todo)} run(s), logs in {os.path.join(out_dir, 'slurm')}", flush=True)
        jobs = recorded(out_dir)
        queue |= {jobs[run]["task"] for run, _ in todo}  # queued now, whether or not squeue shows them yet
        states = {run: state(run, workdir) for run, workdir, _ in runs}
    pause = POLL_S[0]
    look = time.monotonic() + pause
    while wait and "queued" in states.values():
        time.sleep(FILES_POLL_S)
        if time.monotonic() >= look:
            pause = min(pause * 1.5, POLL_S[1])
            look = time.monotonic() + pause
            queue = queued()
        states = {run: state(run, workdir) for run, workdir, _ in runs}
    ended = []
    for i, (run, workdir, _) in enumerate(runs):
        where = f"[{i + 1}/{len(runs)}] {run}:"
        if finished(workdir):
            print(f"{where} finished", flush=True)
        elif states[run] == "queued":
            print(f"{where} pending or running as task {jobs[run]['task']}", flush=True)
        elif states[run] == "ended":
            ended.append(run)
            print(f"{where} ended unfinished ({last_words(jobs[run]['log'])}); log: {jobs[run]['log']}", flush=True)
        else:
            print(f"{where} not submitted (rerun without --collect to submit it)", flush=True)
    if "queued" in states.values():
        print("rerun with --collect (or --wait) to gather the runs when they end", flush=True)
    return ended

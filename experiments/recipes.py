"""Which optimizer and which schedule train the bundled character-level model furthest at equal tokens?

    python experiments/recipes.py      # the runs in runs/recipes/, then experiments/recipes.md and recipes.png

Every arm trains `configs/shakespeare_char_fast.py` (4 layers, width 96, context 64, batch 12, RoPE) for 400
steps, 307,200 tokens, with three seeds (parameters and data order), changing only the optimizer and its learning rate,
or only the schedule. The validation loss is measured every 40 steps on the first 24 batches of the validation split (a
curve cheap enough to find the tokens each run needs to reach TARGET), and at the end on all of it (`lm.evaluate`).
Written: a table of each arm's mean and spread (min-max over seeds) of the final loss and of the tokens to TARGET,
and the mean validation curve of each arm against tokens with its min-max band.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from lm.cli import runner
from lm.errors import UserError
from lm.plot import figure
from lm.sweep import experiment

BASE = "configs/shakespeare_char_fast.py"
FIXED = {"train.steps": 400, "checkpoint.every": 400,  # the recipe ships at 340 steps; the comparison ran 400
         "train.eval_every": 40, "train.eval_batches": 24, "train.log_every": 40}
SEEDS = (0, 1, 2)
TARGET = 2.1  # validation loss (nats per character) whose tokens the table reports
# arm -> overrides. Optimizers at equal tokens, each at a learning rate suited to it (AdamW at the 2,000-step lr
# sweep's best and at the higher rate a short run may take, Lion at a tenth of AdamW's as its authors advise,
# schedule-free AdamW at AdamW's higher rate, held constant); then the recipe's Muon under each schedule.
ARMS = {
    "adamw, cosine, lr 3e-3": {"optim.name": "adamw", "optim.lr": 3e-3, "optim.min_lr": 3e-4},
    "adamw, cosine, lr 1e-2": {"optim.name": "adamw", "optim.lr": 1e-2, "optim.min_lr": 1e-3},
    "lion, cosine, lr 1e-3": {"optim.name": "lion", "optim.lr": 1e-3, "optim.min_lr": 1e-4},
    "schedule-free adamw, lr 1e-2": {"optim.name": "schedule_free_adamw", "optim.schedule": "constant",
                                     "optim.lr": 1e-2},
    "muon, cosine (the recipe)": {},
    "muon, wsd linear": {"optim.schedule": "wsd"},
    "muon, wsd 1-sqrt": {"optim.schedule": "wsd", "optim.cooldown": "1-sqrt"},
    "muon, linear": {"optim.schedule": "linear"},
    "muon, constant": {"optim.schedule": "constant"},
}
HERE = os.path.dirname(os.path.abspath(__file__))


def sweep(add):  # each arm once per seed of SEEDS (lm.sweep adds the seed)
    for overrides in ARMS.values():
        add(overrides)


def tokens_to(records: list[dict], target: float) -> float:
    """Training tokens at the first validation record at or below `target` (nan if none)."""
    for r in records:
        if r.get("val_loss", np.inf) <= target:
            return float(r["train_tokens"])
    return float("nan")


def final_loss(workdir: str) -> float:
    """The final checkpoint's loss on the whole validation split, by `python -m lm.evaluate`."""
    done = subprocess.run([sys.executable, "-m", "lm.evaluate", "--workdir", workdir], capture_output=True,
                          text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["loss"])


def spread(values: list[float], fmt: str) -> str:
    """'mean (min-max)' of the values that are numbers, with how many reached, or 'not reached'."""
    got = [v for v in values if not np.isnan(v)]
    if not got:
        return "not reached"
    text = f"{fmt.format(statistics.mean(got))} ({fmt.format(min(got))}-{fmt.format(max(got))})"
    return text if len(got) == len(values) else f"{text}, {len(got)} of {len(values)} seeds"


def write_report(out_dir: str, root: str) -> list[str]:
    """recipes.md (command, table, findings left to the reader of the table) and recipes.png in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir = os.path.join(root, "recipes")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    lines = []
    for i, (arm, overrides) in enumerate(ARMS.items()):
        finals, reached, curves, walls = [], [], [], []
        for seed in SEEDS:
            workdir = os.path.join(runs_dir, experiment.run_name({**overrides, "seed": seed}))
            records = figure.read_metrics(workdir)
            finals.append(final_loss(workdir))
            reached.append(tokens_to(records, TARGET))
            curves.append([(r["train_tokens"], r["val_loss"]) for r in records if "val_loss" in r])
            walls.append(experiment.result_row(arm, workdir)["wall_s"])
        tokens = np.array([t for t, _ in curves[0]], np.float64)
        losses = np.array([[v for _, v in c] for c in curves])
        colour = f"C{i % 10}"
        ax.plot(tokens, losses.mean(0), color=colour, label=arm, linestyle="--" if arm.startswith("muon") else "-")
        ax.fill_between(tokens, losses.min(0), losses.max(0), color=colour, alpha=0.15)
        lines.append(f"| {arm} | {spread(finals, '{:.4f}')} | {statistics.pstdev(finals):.4f} | "
                     f"{spread(reached, '{:,.0f}')} | {statistics.mean(walls):.1f} |")
    ax.axhline(TARGET, color="gray", linestyle=":", label=f"target {TARGET}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats per character; first 24 batches)")
    ax.set_ylim(1.7, 3.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "recipes.png"))
    plt.close(fig)
    header = ["arm", "final val loss, mean (min-max)", "std", f"tokens to val {TARGET}, mean (min-max)",
              "wall s (training loop, 10 partial evaluations)"]
    table = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header), *lines]
    with open(os.path.join(out_dir, "recipes.md"), "w") as f:
        f.write("\n".join([f"# {__doc__.splitlines()[0]}", "", "    python experiments/recipes.py", "",
                           f"Base `{BASE}` with {FIXED}, seeds {SEEDS}; final loss on the whole validation split. "
                           f"Run {time.strftime('%Y-%m-%d')}; what it found: [README.md](README.md).",
                           "", "![](recipes.png)", "", *table, ""]))
    return table


def main(argv: Sequence[str]) -> None:
    if len(argv) != 1:
        raise UserError("usage: python experiments/recipes.py [--root runs] [--out experiments]")
    experiment.run(os.path.abspath(__file__), flags.FLAGS.root)
    print("\n".join(write_report(flags.FLAGS.out, flags.FLAGS.root)))


if __name__ == "__main__":
    flags.DEFINE_string("root", "runs", "Where the folder of runs goes.")
    flags.DEFINE_string("out", HERE, "Where recipes.md and recipes.png go.")
    runner.run(sys.modules[__name__], __name__, uses_jax=False)

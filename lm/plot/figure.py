"""The loss curves of runs in one PNG.

Each run's `metrics.jsonl` gives its training loss (a line) and validation loss (markers on a dashed line),
against steps, training tokens or training FLOPs (model FLOPs, as in MFU); one colour per run, labelled by its
workdir's name. `plot_arms` draws runs grouped into arms (one run per seed): each arm's mean training loss with a
band of one standard deviation across its seeds.
"""

import json
import os
from collections.abc import Sequence

import numpy as np

from lm import folders
from lm.errors import UserError
from lm.run_files import METRICS

AXES = {"steps": ("step", "step"), "tokens": ("train_tokens", "training tokens"),
        "flops": ("train_flops", "training FLOPs")}


def read_metrics(workdir: str) -> list[dict]:
    """The records of `workdir`'s metrics.jsonl; a UserError if it has none."""
    path = os.path.join(workdir, METRICS)
    if not os.path.isfile(path):
        raise UserError(f"{workdir} has no metrics.jsonl; pass the workdir of a run (its --workdir)")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise UserError(f"{path} is empty: the run logged no step yet")
    return records


def curves(records: list[dict], x: str) -> dict[str, tuple[list[float], list[float]]]:
    """{'train': (xs, losses), 'val': (xs, losses)} with x one of AXES."""
    key = AXES[x][0]
    out = {}
    for name, loss in (("train", "loss"), ("val", "val_loss")):
        points = [(r[key], r[loss]) for r in records if loss in r and key in r]
        out[name] = ([p[0] for p in points], [p[1] for p in points])
    return out


def arm_curves(arms: dict[str, Sequence[str]], x: str) -> dict[str, tuple[np.ndarray, ...]]:
    """Per arm: (xs, mean, standard deviation) of its runs' training loss at the points every run logged."""
    out = {}
    for arm, workdirs in arms.items():
        runs = [dict(zip(*curves(read_metrics(w), x)["train"], strict=True)) for w in workdirs]
        xs = np.array(sorted(set.intersection(*(set(r) for r in runs))), dtype=float)
        losses = np.array([[r[v] for v in xs] for r in runs])  # [seeds, points]
        std = losses.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(xs))
        out[arm] = (xs, losses.mean(axis=0), std)
    return out


def _save(fig: object, ax: object, x: str, out: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(AXES[x][1])
    ax.set_ylabel("loss (nats per token)")
    if x != "steps":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves: long run names fit
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with folders.replacing(out) as tmp:  # whole, and never through a link at `out`
        fig.savefig(tmp, format=os.path.splitext(out)[1][1:] or "png", bbox_inches="tight")
    plt.close(fig)


def plot_arms(arms: dict[str, Sequence[str]], out: str, x: str = "steps") -> None:
    """Writes each arm's mean training loss with a band of one standard deviation across its runs to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, (arm, (xs, mean, std)) in enumerate(arm_curves(arms, x).items()):
        ax.plot(xs, mean, color=f"C{i % 10}", label=f"{arm} ({len(arms[arm])} seeds)")
        ax.fill_between(xs, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2)
    _save(fig, ax, x, out)


def plot(workdirs: Sequence[str], out: str, x: str = "steps") -> None:
    """Writes the train and validation loss curves of `workdirs` against `x` to the PNG `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, workdir in enumerate(workdirs):
        lines = curves(read_metrics(workdir), x)
        label, colour = os.path.basename(os.path.normpath(workdir)), f"C{i % 10}"
        ax.plot(*lines["train"], color=colour, label=f"{label} train")
        if lines["val"][0]:
            ax.plot(*lines["val"], color=colour, linestyle="--", marker="o", markersize=3, label=f"{label} val")
    _save(fig, ax, x, out)

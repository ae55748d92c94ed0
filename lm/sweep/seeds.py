"""Statistics across seeds: an experiment file with `SEEDS = (0, 1, 2)` runs each arm (each set of overrides
`sweep` adds) once per seed; results.md then gives each arm's mean and sample standard deviation of the final
validation loss over its seeds, and the p-value of Welch's t-test (unequal variances, scipy) of that arm against
the arm the file names as `BASELINE` (its overrides)."""

import math
import statistics
from typing import Any

from lm.errors import UserError


def arm_rows(values: dict[str, list[float]], baseline: str | None) -> list[dict[str, Any]]:
    """Per arm (in order): seeds, mean, standard deviation and Welch's p-value against `baseline` (None: none)."""
    if baseline is not None and baseline not in values:
        raise UserError(f"BASELINE names the arm {baseline!r}, which sweep() does not add; arms: {', '.join(values)}")
    out = []
    for arm, xs in values.items():
        p = float("nan")
        if baseline is not None and arm != baseline and len(xs) > 1 and len(values[baseline]) > 1:
            from scipy import stats  # here: it takes a second and more to import, and few sweeps compare seeds

            p = float(stats.ttest_ind(xs, values[baseline], equal_var=False).pvalue)
        out.append({"arm": arm, "seeds": len(xs), "val_loss_mean": statistics.fmean(xs),
                    "val_loss_std": statistics.stdev(xs) if len(xs) > 1 else float("nan"), "p_vs_baseline": p})
    return out


def markdown(rows: list[dict[str, Any]], baseline: str | None) -> list[str]:
    """The arms table as markdown lines."""
    head = f"p vs {baseline}" if baseline else "p"
    lines = ["", f"| arm | seeds | val_loss mean | val_loss std | {head} |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        p = "" if math.isnan(r["p_vs_baseline"]) else f"{r['p_vs_baseline']:.4g}"
        lines.append(f"| {r['arm']} | {r['seeds']} | {r['val_loss_mean']:.4f} | {r['val_loss_std']:.4f} | {p} |")
    return lines

"""How does the character-level model's validation loss fall with its size, trained on the bundled corpus at 20
tokens per parameter?

    python experiments/scaling.py      # the runs in runs/scaling/, then experiments/scaling.md and scaling.png

Trains each size of SIZES through `lm.sweep` (finished runs are skipped on rerun, interrupted ones resume), then
fits L(N) = a * N^(-alpha) + c to the final validation loss, N being the parameters outside the token and
position embeddings (as in Kaplan et al.), and writes the table, the fit and its plot.
"""

import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from lm.cli import runner
from lm.data import sources
from lm.errors import UserError
from lm.sweep import experiment

BASE = "configs/shakespeare_char.py"
TOKENS_PER_PARAMETER = 20
BATCH, CONTEXT = 32, 64  # 2,048 tokens a step for every size
FIXED = {"train.batch_size": BATCH, "model.max_len": CONTEXT, "optim.lr": 3e-3, "optim.min_lr": 3e-4,
         "train.log_every": 50, "checkpoint.every": 500}
SIZES = ((1, 32, 2), (2, 32, 2), (2, 48, 3), (2, 64, 4), (3, 64, 4), (4, 64, 4))  # (layers, width, heads)
HERE = os.path.dirname(os.path.abspath(__file__))


def non_embedding_parameters(layers: int, width: int) -> int:
    """Parameters of a GPT-2 style stack outside the embeddings: per layer 12 d^2 + 13 d, and the final norm."""
    return layers * (12 * width**2 + 13 * width) + 2 * width


def sweep(add):
    for layers, width, heads in SIZES:
        steps = -(-TOKENS_PER_PARAMETER * non_embedding_parameters(layers, width) // (BATCH * CONTEXT))
        add({"model.num_layers": layers, "model.embed_dim": width, "model.num_heads": heads, "train.steps": steps,
             "optim.warmup_steps": max(steps // 20, 1), "train.eval_every": max(steps // 4, 1)})


def fit_power_law(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """(a, alpha, c) of L = a * n^(-alpha) + c, c >= 0, by least squares: (a, c) are linear given alpha, and
    alpha is searched on a grid, then on a finer grid around the best."""
    n, loss = np.asarray(n, np.float64), np.asarray(loss, np.float64)

    def best_given(alpha: float) -> tuple[float, float, float]:
        x = n ** -alpha
        (a, c), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), loss, rcond=None)
        if c < 0:  # the floor cannot be negative: fit a alone
            a, c = float(x @ loss / (x @ x)), 0.0
        return float(np.sum((a * x + c - loss) ** 2)), float(a), float(c)

    grid = np.linspace(0.005, 2.0, 400)
    for _ in range(3):
        errors = [best_given(alpha)[0] for alpha in grid]
        i = int(np.argmin(errors))
        step = grid[1] - grid[0]
        grid = np.linspace(max(grid[i] - step, 1e-4), grid[i] + step, 200)
    alpha = float(grid[int(np.argmin([best_given(a)[0] for a in grid]))])
    _, a, c = best_given(alpha)
    return a, alpha, c


def write_report(rows: list[dict], out_dir: str) -> tuple[float, float, float]:
    """scaling.md (command, table, fit) and scaling.png (loss against N with the fitted curve) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = np.array([non_embedding_parameters(layers, width) for layers, width, _ in SIZES], np.float64)
    val = np.array([r["val_loss"] for r in rows])
    a, alpha, c = fit_power_law(n, val)
    fit_line = f"L(N) = {a:.4g} * N^(-{alpha:.3f}) + {c:.3f}"

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(n, val, "o", color="C0", label="final validation loss")
    ax.plot(n, [r["train_loss"] for r in rows], "x", color="C1", label="final training loss (last batch)")
    grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
    ax.plot(grid, a * grid ** -alpha + c, "-", color="C0", alpha=0.6, label=fit_line)
    if c > 0:
        ax.axhline(c, color="gray", linestyle=":", label=f"fitted floor c = {c:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # with no floor, the law is a straight line here
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(f"tiny Shakespeare, characters, {TOKENS_PER_PARAMETER} tokens per parameter")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling.png"))
    plt.close(fig)

    header = ("layers", "width", "heads", "N", "parameters", "tokens", "epochs", "train FLOPs", "train loss",
              "val loss", "fit", "wall s", "tokens/s")
    with open(sources.bundled_corpus(), encoding="utf-8") as f:
        train_chars = 0.9 * len(f.read())  # the training split: the first 90% (validation_fraction 0.1)
    lines = [f"# {__doc__.splitlines()[0]} {__doc__.splitlines()[1]}", "",
             "    python experiments/scaling.py", "",
             f"Base config `{BASE}` with {FIXED}; per size: its steps for {TOKENS_PER_PARAMETER} x N tokens "
             f"({BATCH} x {CONTEXT} tokens a step), 5% warmup, cosine decay.", "",
             f"Fit to the validation loss: **{fit_line}** (alpha = {alpha:.3f})", "", "![](scaling.png)", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (layers, width, heads), size, r in zip(SIZES, n, rows, strict=True):
        cells = (layers, width, heads, f"{size:,.0f}", f"{r['parameters']:,}", f"{r['tokens']:,}",
                 f"{r['tokens'] / train_chars:.1f}", f"{r['flops']:.3g}", f"{r['train_loss']:.4f}",
                 f"{r['val_loss']:.4f}", f"{a * size ** -alpha + c:.4f}", f"{r['wall_s']:.0f}",
                 f"{r['tokens_per_sec']:,.0f}")
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    with open(os.path.join(out_dir, "scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return a, alpha, c


def main(argv: Sequence[str]) -> None:
    if len(argv) != 1:
        raise UserError("usage: python experiments/scaling.py [--root runs] [--out experiments]")
    rows = experiment.run(os.path.abspath(__file__), flags.FLAGS.root)
    a, alpha, c = write_report(rows, flags.FLAGS.out)
    print(f"L(N) = {a:.4g} * N^(-{alpha:.3f}) + {c:.3f}; wrote {flags.FLAGS.out}/scaling.md and scaling.png")


if __name__ == "__main__":
    flags.DEFINE_string("root", "runs", "Where the folder of runs goes.")
    flags.DEFINE_string("out", HERE, "Where scaling.md and scaling.png go.")
    runner.run(sys.modules[__name__], __name__, uses_jax=False)

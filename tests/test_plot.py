"""`python -m lm.plot`: loss curves of real runs in one PNG, and one-line errors for what is not a run."""

import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
from conftest import one_line_error, run_module
from PIL import Image

from lm.plot import figure

# Two hand-made runs: steps, training tokens and training FLOPs that no affine map (on a linear or a log axis) takes
# one to another, and losses that bend, so each axis and each loss puts its points where no other would.
STEPS = [1, 2, 3, 4, 5, 6]
TOKENS = [100, 300, 400, 800, 1600, 2000]
FLOPS = [1e3, 1e4, 2e4, 1e6, 3e6, 1e7]
RUNS = {"run_a": ([4.0, 3.1, 2.7, 2.2, 2.1, 1.5], {2: 3.6, 4: 2.9, 6: 2.4}),
        "run_b": ([5.0, 4.5, 3.2, 3.0, 2.5, 2.3], {3: 3.9, 6: 3.3})}
X_VALUES = {"steps": (STEPS, False), "tokens": (TOKENS, True), "flops": (FLOPS, True)}


def _write_runs(root):
    """The RUNS as workdirs holding only the metrics.jsonl a run writes (train records, then validation ones)."""
    for name, (losses, val) in RUNS.items():
        os.makedirs(root / name)
        with open(root / name / "metrics.jsonl", "w") as f:
            for i, (step, loss) in enumerate(zip(STEPS, losses, strict=True)):
                sizes = {"step": step, "train_tokens": TOKENS[i], "train_flops": FLOPS[i]}
                f.write(json.dumps({**sizes, "loss": loss, "tokens_per_sec": 1000.0}) + "\n")
                if step in val:
                    f.write(json.dumps({**sizes, "val_loss": val[step]}) + "\n")
    return [str(root / name) for name in RUNS]


def _drawn(svg):
    """The data a written SVG figure draws, in its pixels: {(colour, 'train' | 'val'): [(x, y), ...]} from each
    clipped line (the legend's samples are not clipped) and the validation markers."""
    ns = {"svg": "http://www.w3.org/2000/svg", "xlink": "http://www.w3.org/1999/xlink"}
    out = {}
    for g in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}g"):
        if not g.get("id", "").startswith("line2d_"):
            continue
        path = g.find("svg:path", ns)
        style = path.get("style", "") if path is not None else ""
        colour = re.search(r"(?<![-\w])stroke: (#\w+)", style)
        if path is None or path.get("clip-path") is None or colour is None:
            continue
        kind = "val" if "stroke-dasharray" in style else "train"
        if colour.group(1) in ("#b0b0b0", "#000000"):  # grid lines and ticks
            continue
        d = path.get("d")
        assert set(re.findall(r"[A-Za-z]", d)) <= {"M", "L"}, d
        numbers = [float(v) for v in re.findall(r"-?[\d.]+(?:e[-+]?\d+)?", d)]
        out[colour.group(1), kind] = list(zip(numbers[::2], numbers[1::2], strict=True))
        if kind == "val":
            markers = [(float(u.get("x")), float(u.get("y"))) for u in g.iter("{http://www.w3.org/2000/svg}use")]
            assert markers == out[colour.group(1), kind]  # a marker on each validation point
    return out


def _affine_residual(values, pixels):
    """How far (in pixels) `pixels` are from the best affine map of `values`."""
    a = np.stack([np.asarray(values, float), np.ones(len(values))], axis=1)
    fit = np.linalg.lstsq(a, np.asarray(pixels, float), rcond=None)[0]
    return float(np.abs(a @ fit - pixels).max()), fit[0]


def _assert_draws_the_runs(svg, x):
    """Each run's train and validation losses, at their x values, are the points drawn in its colour on one set of
    axes: pixel x an affine map of x (of log x on the log axes), pixel y one of the loss (upwards)."""
    drawn = _drawn(svg)
    xs, log = X_VALUES[x]
    xs_of = dict(zip(STEPS, np.log10(xs) if log else xs, strict=True))
    values, pixels = [], []
    for i, (losses, val) in enumerate(RUNS.values()):
        colour = ["#1f77b4", "#ff7f0e"][i]  # matplotlib's C0, C1
        train, dashed = drawn[colour, "train"], drawn[colour, "val"]
        assert len(train) == len(STEPS) and len(dashed) == len(val), (train, dashed)
        values += [(xs_of[s], loss) for s, loss in zip(STEPS, losses, strict=True)]
        values += [(xs_of[s], loss) for s, loss in val.items()]
        pixels += train + dashed
    values, pixels = np.asarray(values), np.asarray(pixels)
    (x_err, x_scale), (y_err, y_scale) = (_affine_residual(values[:, k], pixels[:, k]) for k in (0, 1))
    assert x_err < 0.01 and y_err < 0.01 and x_scale > 0 > y_scale, (x_err, y_err, x_scale, y_scale)
    for other, (other_xs, other_log) in X_VALUES.items():  # the test tells the axes apart
        if other != x:
            other_of = dict(zip(STEPS, np.log10(other_xs) if other_log else other_xs, strict=True))
            series = [other_of[s] for _, val in RUNS.values() for s in [*STEPS, *val]]
            assert _affine_residual(series, pixels[:, 0])[0] > 5, other


def test_the_figure_draws_each_runs_losses_where_its_records_put_them(tmp_path):
    workdirs = _write_runs(tmp_path)
    for x in ("steps", "flops"):
        figure.plot(workdirs, str(tmp_path / f"{x}.svg"), x)
        _assert_draws_the_runs(tmp_path / f"{x}.svg", x)
    figure.plot(workdirs, str(tmp_path / "loss.png"), "steps")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 400  # the axes and their legend


def test_curves_follow_the_runs_records_on_every_axis(tiny_run):
    workdir, _ = tiny_run
    records = figure.read_metrics(workdir)
    trained = [r for r in records if "loss" in r]
    for x, key in (("steps", "step"), ("tokens", "train_tokens"), ("flops", "train_flops")):
        xs, losses = figure.curves(records, x)["train"]
        assert xs == [r[key] for r in trained] and losses == [r["loss"] for r in trained]
        assert all(b > a for a, b in zip(xs, xs[1:], strict=False))
    steps, _ = figure.curves(records, "steps")["train"]
    tokens, _ = figure.curves(records, "tokens")["train"]
    assert tokens[-1] / steps[-1] == tokens[0] / steps[0] > 0  # the same tokens every step
    assert figure.curves(records, "flops")["val"][0]


def test_the_command_draws_several_runs_on_the_axis_asked_and_names_a_workdir_that_is_not_a_run(tmp_path):
    """--x and --out reach the figure: the runs' points against training tokens, on a log axis, in the file named
    (an SVG here, to read the points back; a .png name writes a PNG, as the first test shows)."""
    workdirs = _write_runs(tmp_path / "runs")
    out = tmp_path / "curves" / "loss.svg"
    result = run_module("lm.plot", *workdirs, "--x=tokens", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: loss against training tokens of 2 run(s)" in result.stdout
    _assert_draws_the_runs(out, "tokens")
    assert re.findall(r"<!-- (run_\w \w+) -->", out.read_text()) == ["run_a train", "run_a val", "run_b train",
                                                                       "run_b val"]  # the legend
    one_line_error(run_module("lm.plot", str(tmp_path)), f"{tmp_path} has no metrics.jsonl")
    one_line_error(run_module("lm.plot"), "no workdir given")
    assert not os.path.exists("loss.png")

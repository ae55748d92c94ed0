"""`python -m lm.plot`: loss curves of real runs in one PNG, and one-line errors for what is not a run."""

import os

from conftest import one_line_error, run_module
from PIL import Image

from lm.plot import figure


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


def test_the_command_writes_one_png_of_several_runs_and_names_a_workdir_that_is_not_a_run(tiny_run, tmp_path):
    workdir, _ = tiny_run
    out = tmp_path / "curves" / "loss.png"
    result = run_module("lm.plot", workdir, workdir, "--x=tokens", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "loss against training tokens of 2 run(s)" in result.stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 400  # the axes and their legend
    one_line_error(run_module("lm.plot", str(tmp_path)), f"{tmp_path} has no metrics.jsonl")
    one_line_error(run_module("lm.plot"), "no workdir given")
    assert not os.path.exists("loss.png")

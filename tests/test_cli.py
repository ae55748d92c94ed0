"""The command-line tools as a user runs them: one-line errors, resume after SIGKILL, evaluate and sample."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_config_key_typo_names_the_key(tmp_path, cache_dir):
    result = _run("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.model.num_layer=2")
    _one_line_error(result, "config.model.num_layer", "num_layers")


@pytest.mark.parametrize("flag,message", [
    ("--config.model.num_heads=3", "not divisible"),
    ("--config.model.num_layers=abc", "num_layers"),
    ("--config.tokenizer.type=word", "tokenizer.type"),
    ("--config.mesh.data=3", "config.mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 1 are present"),
])
def test_bad_config_values_are_one_line(flag, message, tmp_path):
    _one_line_error(_run("lm.train", "--config", TINY, "--workdir", str(tmp_path), flag), message)


def test_cpu_devices_split_the_host_into_a_data_parallel_mesh(tmp_path, cache_dir):
    result = _run("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=2",
                  "--config.train.steps=2", f"--config.data.cache_dir={cache_dir}")
    assert result.returncode == 0, result.stderr
    assert "mesh (data=2, fsdp=1, tensor=1) over 2 devices" in result.stdout, result.stdout
    assert "val loss" in result.stdout
    _one_line_error(_run("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=-1"),
                    "config.mesh.cpu_devices must be >= 0")


def test_missing_and_empty_data_are_one_line(tmp_path, cache_dir):
    missing = tmp_path / "missing.txt"
    result = _run("lm.train", "--config", TINY, "--workdir", str(tmp_path / "w1"), f"--config.data.path={missing}",
                  f"--config.data.cache_dir={cache_dir}")
    _one_line_error(result, str(missing), "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = _run("lm.train", "--config", TINY, "--workdir", str(tmp_path / "w2"), f"--config.data.path={empty}",
                  f"--config.data.cache_dir={cache_dir}")
    _one_line_error(result, "is empty")


def test_prompt_longer_than_the_context_is_one_line(tiny_run):
    workdir, _ = tiny_run
    _one_line_error(_run("lm.sample", "--workdir", workdir, "--prompt", "x" * 100), "context is 32")


def test_evaluate_and_sample_from_a_workdir(tiny_run):
    workdir, _ = tiny_run
    result = _run("lm.evaluate", "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 20 and 0 < metrics["bits_per_byte"] < 8 and metrics["perplexity"] > 1
    args = ("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens", "60", "--num_samples", "3",
            "--seed", "0", "--temperature", "1.0", "--top_k", "0")
    first, second = _run(*args), _run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    samples = first.stdout.split("--- sample")[1:]
    assert len(samples) == 3 and len(set(samples)) == 3


def test_sample_batches_prompts_from_flags_and_a_jsonl_file(tiny_run, tmp_path):
    workdir, _ = tiny_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "KING:"}\n\nplain line\n')
    result = _run("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--prompt", "JULIET:", "--prompt_file",
                  str(prompts), "--num_samples", "2", "--max_new_tokens", "10", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in ("ROMEO:", "JULIET:", "KING:", "plain line") for _ in (0, 1)]
    assert all(r["stop_reason"] in ("eos", "length") and 0 <= r["tokens"] <= 10 for r in rows)
    _one_line_error(_run("lm.sample", "--workdir", workdir, "--top_p", "1.5"), "0 < top_p <= 1")
    _one_line_error(_run("lm.sample", "--workdir", workdir, "--temperature", "-1"), "temperature >= 0")
    _one_line_error(_run("lm.sample", "--workdir", str(tmp_path)), "holds no checkpoints")


def test_sample_split_over_devices_or_from_int8_weights(tiny_run):
    workdir, _ = tiny_run
    args = ("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "30",
            "--temperature", "0", "--format", "jsonl")
    one, split, int8 = _run(*args), _run(*args, "--tensor", "2"), _run(*args, "--quantize", "int8")
    for result in (one, split, int8):
        assert result.returncode == 0, result.stderr
    assert split.stdout == one.stdout  # two devices, the same greedy text
    assert [json.loads(line)["prompt"] for line in int8.stdout.strip().splitlines()] == ["ROMEO:", "KING:"]
    _one_line_error(_run(*args, "--tensor", "3"), "is not divisible by mesh")


def test_bench_prints_its_figures_and_profile():
    result = _run("lm.bench", "--config", TINY, "--repeats", "1", "--depths", "1,2", "--profile")
    assert result.returncode == 0, result.stderr
    for figure in ("tokens/s", "MFU", "float32 matmul measured now", "where the step's time goes", "ratio"):
        assert figure in result.stdout, result.stdout
    shares = re.findall(r"^  (.+?)\s+([\d.]+)%  \(forward", result.stdout, re.M)
    parts = {part for part, _ in shares}
    assert {"MLP matmuls", "attention projections", "loss, optimizer update and the rest"} <= parts, result.stdout
    assert abs(sum(float(share) for _, share in shares) - 100) < 1, result.stdout


def test_bench_times_decoding_per_weight_format():
    result = _run("lm.bench", "--config", TINY, "--decode", "--decode_batches", "1,2", "--new_tokens", "8",
                  "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^  batch +(\d+) lm (\w+) +([\d.]+) tokens/s .* ([\d.]+)% of the bandwidth bound", result.stdout,
                      re.M)
    want = [(b, f) for b in "12" for f in ("none", "bfloat16", "int8")]
    assert [(b, f) for b, f, _, _ in rows] == want, result.stdout
    assert all(float(t) > 0 and float(p) > 0 for _, _, t, p in rows)
    assert "of greedy tokens equal" in result.stdout and "copy bandwidth" in result.stdout


def _start_training(workdir, cache_dir, ready, *overrides):
    """`python -m lm.train` on the tiny config in a subprocess, once `ready()`: (process, command, env)."""
    cmd = [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(workdir),
           "--config.train.eval_every=1000", f"--config.data.cache_dir={cache_dir}", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    return proc, cmd, env


def test_sigterm_saves_the_current_step_and_exits_143_then_the_run_resumes_there(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    metrics = workdir / "metrics.jsonl"
    proc, cmd, env = _start_training(workdir, cache_dir, lambda: metrics.is_file() and metrics.read_text().strip(),
                                     "--config.train.steps=300", "--config.checkpoint.every=1000",
                                     "--config.train.log_every=10")
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    print(f"stopped {time.time() - sent:.1f} s after SIGTERM: {stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 143, stderr
    stopped_at = int(re.search(r"stopped by SIGTERM after step (\d+); checkpoint \1 saved", stderr).group(1))
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert 10 <= stopped_at < 300 and max(saved) == stopped_at  # a step no save interval asked for
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming at step {stopped_at}" in result.stdout


def test_sigkill_then_rerun_resumes_and_finishes(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    proc, cmd, env = _start_training(workdir, cache_dir, lambda: (workdir / "checkpoints" / "100").is_dir(),
                                     "--config.train.steps=400", "--config.checkpoint.every=50",
                                     "--config.train.log_every=50")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(json.loads(line)["step"] for line in open(workdir / "metrics.jsonl"))
    assert killed_at < 400
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mesh (data=1, fsdp=1, tensor=1) over 1 devices" in result.stdout and "rules: embed->fsdp" in result.stdout
    assert "MiB per device" in result.stdout
    resumed_from = int(result.stdout.split("resuming at step ")[1].split()[0])
    assert 100 <= resumed_from < 400 and resumed_from % 50 == 0
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [r["step"] for r in records if "loss" in r]  # train records (evaluation ones carry val_loss)
    assert steps == sorted(steps) and steps[-1] == 400 and len(steps) == len(set(steps))

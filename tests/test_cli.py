"""The command-line tools as a user runs them: one-line errors, evaluate, sample and bench."""

import json
import re

import pytest
from conftest import TINY, one_line_error, run_module


def test_config_key_typo_names_the_key(tmp_path, cache_dir):
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.model.num_layer=2")
    one_line_error(result, "config.model.num_layer", "num_layers")


@pytest.mark.parametrize("flag,message", [
    ("--config.model.num_heads=3", "not divisible"),
    ("--config.model.num_layers=abc", "num_layers"),
    ("--config.tokenizer.type=word", "tokenizer.type"),
    ("--config.mesh.data=3", "config.mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 1 are present"),
])
def test_bad_config_values_are_one_line(flag, message, tmp_path):
    one_line_error(run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), flag), message)


def test_cpu_devices_split_the_host_into_a_data_parallel_mesh(tmp_path, cache_dir):
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=2",
                        "--config.train.steps=2", f"--config.data.cache_dir={cache_dir}")
    assert result.returncode == 0, result.stderr
    assert "mesh (data=2, fsdp=1, tensor=1) over 2 devices" in result.stdout, result.stdout
    assert "val loss" in result.stdout
    one_line_error(run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=-1"),
                   "config.mesh.cpu_devices must be >= 0")


def test_missing_and_empty_data_are_one_line(tmp_path, cache_dir):
    missing = tmp_path / "missing.txt"
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path / "w1"),
                        f"--config.data.path={missing}", f"--config.data.cache_dir={cache_dir}")
    one_line_error(result, str(missing), "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path / "w2"),
                        f"--config.data.path={empty}", f"--config.data.cache_dir={cache_dir}")
    one_line_error(result, "is empty")


def test_prompt_longer_than_the_context_is_one_line(tiny_run):
    workdir, _ = tiny_run
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--prompt", "x" * 100), "context is 32")


def test_evaluate_and_sample_from_a_workdir(tiny_run):
    workdir, _ = tiny_run
    result = run_module("lm.evaluate", "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 20 and 0 < metrics["bits_per_byte"] < 8 and metrics["perplexity"] > 1
    args = ("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens", "60", "--num_samples", "3",
            "--seed", "0", "--temperature", "1.0", "--top_k", "0")
    first, second = run_module(*args), run_module(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    samples = first.stdout.split("--- sample")[1:]
    assert len(samples) == 3 and len(set(samples)) == 3


def test_sample_batches_prompts_from_flags_and_a_jsonl_file(tiny_run, tmp_path):
    workdir, _ = tiny_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "KING:"}\n\nplain line\n')
    result = run_module("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--prompt", "JULIET:", "--prompt_file",
                        str(prompts), "--num_samples", "2", "--max_new_tokens", "10", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in ("ROMEO:", "JULIET:", "KING:", "plain line") for _ in (0, 1)]
    assert all(r["stop_reason"] in ("eos", "length") and 0 <= r["tokens"] <= 10 for r in rows)
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--top_p", "1.5"), "0 < top_p <= 1")
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--temperature", "-1"), "temperature >= 0")
    one_line_error(run_module("lm.sample", "--workdir", str(tmp_path)), "holds no checkpoints")


def test_sample_split_over_devices_or_from_int8_weights(tiny_run):
    workdir, _ = tiny_run
    args = ("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "30",
            "--temperature", "0", "--format", "jsonl")
    one, split, int8 = run_module(*args), run_module(*args, "--tensor", "2"), run_module(*args, "--quantize", "int8")
    for result in (one, split, int8):
        assert result.returncode == 0, result.stderr
    assert split.stdout == one.stdout  # two devices, the same greedy text
    assert [json.loads(line)["prompt"] for line in int8.stdout.strip().splitlines()] == ["ROMEO:", "KING:"]
    one_line_error(run_module(*args, "--tensor", "3"), "is not divisible by mesh")


def test_bench_prints_its_figures_and_profile():
    result = run_module("lm.bench", "--config", TINY, "--repeats", "1", "--depths", "1,2", "--profile")
    assert result.returncode == 0, result.stderr
    for figure in ("tokens/s", "MFU", "float32 matmul measured now", "where the step's time goes", "ratio"):
        assert figure in result.stdout, result.stdout
    shares = re.findall(r"^  (.+?)\s+([\d.]+)%  \(forward", result.stdout, re.M)
    parts = {part for part, _ in shares}
    assert {"MLP matmuls", "attention projections", "loss, optimizer update and the rest"} <= parts, result.stdout
    assert abs(sum(float(share) for _, share in shares) - 100) < 1, result.stdout


def test_bench_times_decoding_per_weight_format():
    result = run_module("lm.bench", "--config", TINY, "--decode", "--decode_batches", "1,2", "--new_tokens", "8",
                        "--repeats", "1")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^  batch +(\d+) lm (\w+) +([\d.]+) tokens/s .* ([\d.]+)% of the bandwidth bound", result.stdout,
                      re.M)
    want = [(b, f) for b in "12" for f in ("none", "bfloat16", "int8")]
    assert [(b, f) for b, f, _, _ in rows] == want, result.stdout
    assert all(float(t) > 0 and float(p) > 0 for _, _, t, p in rows)
    assert "of greedy tokens equal" in result.stdout and "copy bandwidth" in result.stdout

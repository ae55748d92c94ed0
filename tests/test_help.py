"""Every command explains itself: `--help` and `-h` list the command's own flags with their meaning and exit 0,
before JAX is imported; `lm.train --print_config` prints the resolved run config, key by key with its meaning,
and trains nothing."""

import subprocess
import sys

import ml_collections
import pytest
from conftest import ROOT, TINY, run_module

from lm import config as config_lib

# Each command's own flags, as its documentation names them (README.md, docs/reference.md).
FLAGS = {
    "lm.train": ["config", "workdir", "print_config", "coordinator_address", "num_processes", "process_id",
                 "distributed"],
    "lm.sample": ["workdir", "step", "prompt", "prompt_file", "max_new_tokens", "temperature", "top_k", "top_p",
                  "num_samples", "stop", "format", "seed", "quantize", "tensor"],
    "lm.evaluate": ["workdir", "step", "split", "data_path", "decode_errors", "cache_dir", "tasks", "batch_size",
                    "harness", "harness_include", "limit"],
    "lm.prepare": ["config", "out", "workers"],
    "lm.convert": ["workdir", "hf_dir", "export", "overwrite", "step", "scan_layers"],
    "lm.bench": ["config", "repeats", "profile", "decode", "data", "decode_batches", "decode_tensor", "decode_formats",
                 "prompt_len", "new_tokens", "tasks", "task_examples", "depths"],
    "lm.sweep": ["root", "dry_run", "launcher", "collect", "wait", "nodes", "tasks_per_node", "gpus_per_node",
                 "cpus_per_task", "time", "partition", "account", "max_running"],
    "lm.plot": ["x", "out"],
}


def _flat(cfg, prefix: str = ""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _imported(stderr: str) -> set[str]:
    """The modules `python -X importtime` says were imported."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", list(FLAGS))
def test_help_lists_the_commands_own_flags_and_exits_0_without_importing_jax(command):
    for ask in ("--help", "-h"):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", command, ask], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        listed = [line.split(":")[0].strip()[2:] for line in result.stdout.splitlines() if line.startswith("  --")]
        assert set(FLAGS[command]) <= set(listed), (command, listed)
        assert not [f for f in listed if f not in FLAGS[command] and f != "help"], (command, listed)  # no library's
        assert f"python -m {command}" in result.stdout  # its usage
        modules = _imported(result.stderr)
        assert "absl.flags" in modules and "jax" not in modules and "optax" not in modules, command


def test_train_help_says_how_overrides_work_and_where_every_key_is_listed():
    out = run_module("lm.train", "--help").stdout
    assert "--config.train.steps=500" in out and "--print_config" in out


def test_print_config_shows_every_key_resolved_with_its_meaning_and_trains_nothing(tmp_path):
    result = run_module("lm.train", "--config", TINY, "--config.optim.lr=0.02", "--print_config",
                        "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "optim.lr = 0.02  # peak learning rate, after a linear warmup" in lines
    assert "optim.b2 = 0.99  # the second moment's decay (AdamW)" in lines  # a default the config file keeps
    assert "model.mlp_dim = 128  # MLP width; 0: 4 * embed_dim" in lines  # resolved: configs/tiny.py's width 32
    keys = [line.split(" = ")[0] for line in lines]
    assert sorted(keys) == sorted(_flat(config_lib.defaults()))  # every key of every section, once
    assert not (tmp_path / "run").exists()
    defaults = run_module("lm.train", "--print_config")  # no config file: the defaults
    assert defaults.returncode == 0 and "optim.lr = 0.001  # peak learning rate" in defaults.stdout


def test_a_sweeps_collect_starts_without_importing_jax(tmp_path):
    """`lm.sweep --collect` only reads the runs' files and SLURM's queue (which may not answer here: then one line
    of error); either way it gets there without JAX."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "lm.sweep", "experiments/lr_sweep.py",
                             "--launcher", "slurm", "--collect", "--root", str(tmp_path)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    modules = _imported(result.stderr)
    assert "lm.sweep.experiment" in modules and "jax" not in modules and "scipy" not in modules, result.stderr[-500:]


def test_the_model_imports_no_optimizer():
    """The model depends on its own config alone: importing it loads neither optax nor the optimizer module."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lm.model.transformer"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    modules = _imported(result.stderr)
    assert result.returncode == 0 and "lm.model.config" in modules, result.stderr[-500:]
    assert "optax" not in modules and "lm.optim" not in modules and "lm.config" not in modules

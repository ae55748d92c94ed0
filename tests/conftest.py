"""Test setup: 8 fake CPU devices (set before jax is imported), a shared dataset cache, a trained tiny run, and
helpers that run the command-line tools as a user does."""

import importlib.util
import os
import subprocess
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
USER_ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user has


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ARGS` as a user runs it, from the repository root."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=USER_ENV, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command failed with exit status 2 and one line on stderr that contains every fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load_config(path: str = TINY):
    """`get_config()` of a config file."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_config(cache_dir):
    """The tiny config with the shared dataset cache; tests copy it before changing it."""
    cfg = load_config()
    cfg.data.cache_dir = cache_dir
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory):
    """A workdir in which the tiny config trained to the end: (workdir, final validation metrics)."""
    from lm.train import train

    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    return workdir, train(tiny_config, workdir)


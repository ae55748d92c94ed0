"""Test setup: 8 fake CPU devices (set before jax is imported), a shared dataset cache, a trained tiny run."""

import importlib.util
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")


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

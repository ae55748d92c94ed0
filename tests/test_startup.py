"""A start builds each thing once: the run config from the ConfigDict, the optimizer, and the model's abstract
parameters (traced from the model), whether the run is fresh, resumed or started from another run's parameters.
A fresh run also traces the model once with a stand-in vocabulary, to find a model the mesh does not divide before
it trains a tokenizer; a run from another's parameters traces that run's model too."""

import pytest

from lm import config as config_lib
from lm import optim
from lm.parallel import placement
from lm.train.loop import train


@pytest.fixture
def counted(monkeypatch):
    """{what: times built} while the block runs."""
    counts = {"config": 0, "optimizer": 0, "model traced": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(config_lib, "build", counting("config", config_lib.build))
    monkeypatch.setattr(optim, "optimizer", counting("optimizer", optim.optimizer))

    def reset():
        counts.update({k: 0 for k in counts})
        placement.boxed_shapes.cache_clear()

    def read():
        return {**counts, "model traced": placement.boxed_shapes.cache_info().misses}

    return reset, read


def test_a_fresh_a_resumed_and_an_init_from_start_each_build_the_config_optimizer_and_abstract_model_once(
        tiny_config, tmp_path, counted):
    reset, read = counted
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.update(steps=2, eval_every=2)
    reset()
    train(cfg, str(tmp_path / "run"))
    assert read() == {"config": 1, "optimizer": 1, "model traced": 2}  # fresh: the stand-in, then the model
    cfg.train.steps = 3
    reset()
    train(cfg, str(tmp_path / "run"))
    assert read() == {"config": 1, "optimizer": 1, "model traced": 1}  # resumed
    cfg.init_from = str(tmp_path / "run")
    reset()
    train(cfg, str(tmp_path / "other"))
    assert read() == {"config": 1, "optimizer": 1, "model traced": 2}  # the other run's model, then this one's

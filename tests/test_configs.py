"""The shipped model configs: each trains on a CPU through the smoke-test override its docstring gives, and the
family shapes hold the parameter counts their published models have (counted from shapes only, no memory)."""

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest
from conftest import load_config, score_by_hand

from lm import config as config_lib
from lm.backends import select
from lm.checkpoint import reader
from lm.convert import llama
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.run_files import METRICS
from lm.train.loop import train

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
MODELS = ["gpt2_124m", "gpt2_350m", "llama_150m", "llama3_1b", "qwen3_150m", "qwen3_0_6b", "qwen2_0_5b",
          "mistral_150m", "mistral_7b"]


def _smoke_override(name: str) -> dict[str, str]:
    """The `--config.KEY=VALUE` flags after "Smoke test on a CPU:" in a config file's docstring."""
    with open(os.path.join(CONFIGS, f"{name}.py")) as f:
        doc = f.read().split('"""')[1]
    return dict(re.findall(r"--config\.(\S+?)=(\S+?)\.?(?=\s|$)", doc.split("Smoke test on a CPU:")[1]))


def _set(cfg, key: str, text: str) -> None:
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = type(node[last])(text)


def _smoke_config(name: str):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.py"))
    override = _smoke_override(name)
    assert {"model.num_layers", "model.embed_dim", "train.steps"} <= set(override), override
    for key, text in override.items():
        _set(cfg, key, text)
    return cfg


def test_gpt2_medium_smoke_tests_as_the_same_model_as_gpt2_small():
    """So the test below trains one of them."""
    assert _smoke_config("gpt2_350m").model == _smoke_config("gpt2_124m").model


@pytest.mark.parametrize("name", [m for m in MODELS if m != "gpt2_350m"])
def test_model_configs_train_on_a_cpu_with_the_override_their_docstring_gives(name, tiny_config, tmp_path, capsys):
    cfg = _smoke_config(name)
    cfg.data.cache_dir = tiny_config.data.cache_dir
    cfg.tokenizer.update(vocab_size=512, sample_chars=100_000)  # a quick tokenizer: the configs are under test
    cfg.model.max_len = 32
    cfg.model.sliding_window = min(cfg.model.sliding_window, 16)  # shorter than the context, where a family has one
    cfg.train.update(batch_size=8, steps=3, log_every=1, eval_every=3, eval_batches=2)
    result = train(cfg, str(tmp_path), devices=jax.devices()[:1])  # the configs, not the mesh, are under test
    assert "mesh (data=1, fsdp=1, tensor=1) over 1 device in 1 process(es)" in capsys.readouterr().out
    with open(tmp_path / METRICS) as f:
        first = json.loads(f.readline())
    vocab = reader.open_run(str(tmp_path))[2].vocab_size
    # Initialized near uniform (logits of std ~0.02 x sqrt(64)): the first loss is ln V plus ~0.01.
    assert first["step"] == 1 and abs(first["loss"] - np.log(vocab)) < 0.05, (first, vocab)
    nll, count, nbytes = score_by_hand(str(tmp_path), max_batches=2)  # the validation loss, recomputed
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert result["bits_per_byte"] == pytest.approx(nll / np.log(2) / nbytes, rel=1e-4)


# Parameter counts of the released models (their model cards and safetensors headers), and the family each exports
# as: the shipped shapes are those models, not approximations of them.
PUBLISHED = {"llama3_1b": (1_235_814_400, "llama"), "qwen3_0_6b": (596_049_920, "qwen3"),
             "qwen2_0_5b": (494_032_768, "qwen2"), "mistral_7b": (7_241_732_096, "mistral"),
             "gpt2_124m": (124_439_808, None)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_family_configs_have_the_parameters_of_the_released_models(name):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.py"))
    c = config_lib.model_config(config_lib.build(cfg), cfg.tokenizer.vocab_size)
    scanned = dataclasses.replace(c, scan_layers=True)  # the same parameters, traced once instead of per layer
    layout = shd.tensor_layout(1)
    count = sum(x.size for x in jax.tree.leaves(placement.abstract_params(select.model(scanned), layout)))
    want, family = PUBLISHED[name]
    if name == "gpt2_124m":
        want += (50304 - 50257) * 768  # the embedding table padded to a multiple of 128 rows
    assert count == want
    if family:
        assert llama.family_of(c) == family

"""Same losses on DP (one flat gradient all-reduce on CPUs), FSDP, TP and mixes; FSDP memory; bad meshes."""

import dataclasses
import glob
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import load_config

from lm import config as config_lib
from lm import optim
from lm.backends import cpu_data_parallel, cpu_devices, select
from lm.bench.step import synthetic_batch
from lm.checkpoint import reader
from lm.errors import UserError
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.config import MeshConfig
from lm.run_files import METRICS
from lm.train import state as state_lib
from lm.train.loop import train
from lm.train.step import loss_and_grads

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]  # data, FSDP, tensor parallel, all three
CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def _divisible_tiny(tiny_config, mesh=(8, 1, 1), steps=5, optimizer="adamw"):
    """The tiny config with 8 heads and a 512-piece vocabulary, so that every 8-device mesh divides it."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.optim.name = optimizer
    if optimizer == "schedule_free_adamw":
        cfg.optim.schedule = "constant"
    cfg.tokenizer.update(type="bpe", vocab_size=512, sample_chars=100_000)  # a quick tokenizer
    cfg.model.update(num_heads=8, embed_dim=64)
    cfg.train.update(steps=steps, log_every=1, eval_every=1000)
    cfg.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
    return cfg


def _params(workdir):
    ckpt, step, model_config, _, _ = reader.open_run(workdir)
    layout = shd.tensor_layout(1)
    leaves = jax.tree_util.tree_leaves_with_path(ckpt.params(step, placement.abstract_params(
        select.model(model_config), layout)))
    return {jax.tree_util.keystr(path): x for path, x in leaves}


# The key bias adds one constant to all of a query's scores: its gradient is zero in exact arithmetic, float noise
# whose sign follows the reduction order, and Lion's sign update makes that noise a whole step of lr.
NOISE_ONLY = {"lion": ["['blocks']['attn']['key']['bias']"]}


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "lion", "schedule_free_adamw"])
def test_same_losses_and_parameters_on_every_mesh(optimizer, tiny_config, tmp_path, capfd):
    """AdamW on each one-axis mesh; the other optimizers (their state sharded as AdamW's is) on data parallelism
    and the mesh of all three axes at once."""
    losses, params = {}, {}
    meshes = MESHES[:3] if optimizer == "adamw" else [MESHES[0], MESHES[3]]
    jax.config.update("jax_enable_compilation_cache", False)  # XLA warns while it compiles: compile afresh
    try:
        for mesh in meshes:
            workdir = str(tmp_path / "x".join(map(str, mesh)))
            train(_divisible_tiny(tiny_config, mesh, optimizer=optimizer), workdir)
            with open(os.path.join(workdir, METRICS)) as f:
                losses[mesh] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
            params[mesh] = _params(workdir)
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    base = meshes[0]
    assert len(losses[base]) == 5
    for mesh in meshes[1:]:
        np.testing.assert_allclose(losses[mesh], losses[base], rtol=1e-5, err_msg=str(mesh))
        assert params[mesh].keys() == params[base].keys()
        for name in params[base].keys() - set(NOISE_ONLY.get(optimizer, [])):
            np.testing.assert_allclose(np.asarray(params[mesh][name]), np.asarray(params[base][name]), atol=1e-4,
                                       rtol=0, err_msg=f"{mesh} {name}")
    err = capfd.readouterr().err
    assert "Involuntary full rematerialization" not in err


def test_fsdp_shards_parameters_and_optimizer_state_evenly(tiny_config):
    cfg = _divisible_tiny(tiny_config, (1, 8, 1))
    model = select.model(config_lib.model_config(config_lib.build(cfg), vocab_size=512))
    tx = optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    state = state_lib.create(model, tx, shd.make_layout(cfg.mesh), seed=0)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    held = shd.bytes_per_device(state)
    print(f"FSDP over 8 devices: {total} bytes in all, per device {sorted(set(held.values()))} "
          f"(at most {max(held.values()) / total:.4f} of the total; bound 1/8 + 2% = {1 / 8 * 1.02:.4f})")
    assert len(held) == 8
    assert max(held.values()) <= total / 8 * 1.02


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_names_every_parameter_dimension(path):
    cfg = load_config(path)
    config_lib.build(cfg)
    c = config_lib.model_config(config_lib.build(cfg), vocab_size=cfg.tokenizer.vocab_size)
    model = select.model(dataclasses.replace(c, num_layers=min(c.num_layers, 2)))  # every layer is named alike
    boxed = jax.eval_shape(lambda: placement.boxed_params(model, 0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)


def test_bad_meshes_stop_with_one_line_naming_the_sizes(tiny_config, tmp_path):
    def fails(match, **changes):
        cfg = tiny_config.copy_and_resolve_references()
        for key, value in changes.items():
            section, name = key.split("__")
            cfg[section][name] = value
        with pytest.raises(UserError, match=match) as e:
            train(cfg, str(tmp_path / "w"))
        assert "\n" not in str(e.value)

    fails(r"config.mesh \(data=3, fsdp=1, tensor=1\) needs 3 devices but 8 are present", mesh__data=3)
    fails(r"config.mesh \(data=3, fsdp=1, tensor=-1\) does not divide the 8 devices", mesh__data=3, mesh__tensor=-1)
    fails(r"model.num_heads=2 is not divisible by mesh tensor=8", mesh__data=1, mesh__tensor=8)
    fails(r"vocabulary size=68 is not divisible by mesh tensor=8", mesh__data=1, mesh__tensor=8, model__num_heads=8)
    fails(r"model.mlp_dim=33 is not divisible by mesh tensor=2", mesh__data=4, mesh__tensor=2, model__mlp_dim=33)
    fails(r"model.num_kv_heads=2 is not divisible by mesh tensor=4", mesh__data=2, mesh__tensor=4, model__num_heads=4,
          model__num_kv_heads=2, tokenizer__vocab_size=512, tokenizer__type="bpe")
    fails(r"batch_size=12 is not divisible by the data-parallel size 8", train__batch_size=12)


def test_cpu_devices_zero_means_one_per_core_as_the_mesh_and_batch_allow():
    per_core = MeshConfig(cpu_devices=0)
    assert cpu_devices.cpu_device_count(per_core, batch_size=12, cores=2) == 2
    assert cpu_devices.cpu_device_count(per_core, batch_size=12, cores=8) == 6  # 8 does not divide 12
    assert cpu_devices.cpu_device_count(per_core, batch_size=7, cores=4) == 1
    assert cpu_devices.cpu_device_count(MeshConfig(tensor=2, cpu_devices=0), batch_size=12, cores=5) == 4
    assert cpu_devices.cpu_device_count(MeshConfig(data=1, fsdp=2, cpu_devices=0), 12, cores=16) == 2
    assert cpu_devices.cpu_device_count(MeshConfig(cpu_devices=3), batch_size=12, cores=2) == 3
    assert cpu_devices.cpu_device_count(MeshConfig(), batch_size=12, cores=2) == 1  # the default


def test_a_data_parallel_cpu_step_reduces_its_gradients_in_one_buffer_with_the_same_result(tiny_config):
    cfg = _divisible_tiny(tiny_config, (8, 1, 1))
    model = select.model(config_lib.model_config(config_lib.build(cfg), vocab_size=512))
    tx, *_ = optim.optimizer(cfg.optim, cfg.train.steps)
    layout = shd.make_layout(cfg.mesh)
    state = state_lib.create(model, tx, layout, seed=0)
    assert cpu_data_parallel.batch_axes(layout, state.params) == ("data",)
    sums = select.gradient_sums(layout, state.params)
    for mesh in ((1, 8, 1), (1, 1, 8), (2, 2, 2)):  # parameters split: XLA's own all-reduces
        split = shd.make_layout(_divisible_tiny(tiny_config, mesh).mesh)
        abstract = state_lib.abstract(model, tx, split).params
        assert cpu_data_parallel.batch_axes(split, abstract) == () and select.gradient_sums(split, abstract) is None
    batch = synthetic_batch(layout, 16, cfg.model.max_len, 512)
    with layout.scope():  # with 2 microbatches and z-loss: every part of the objective
        flat = jax.jit(lambda p, b: loss_and_grads(model, p, b, 2, 1e-4, sums)).lower(state.params, batch).compile()
        reductions = re.findall(r"= (\S+) all-reduce\(", flat.as_text())
        n = sum(x.size for x in jax.tree.leaves(state.params)) + 2  # every gradient, the loss sum and the count
        assert reductions == [f"f32[{n}]{{0}}"], reductions
        spmd = jax.jit(lambda p, b: loss_and_grads(model, p, b, 2, 1e-4))(state.params, batch)
        for a, b in zip(jax.tree.leaves(flat(state.params, batch)), jax.tree.leaves(spmd), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

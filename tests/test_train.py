"""Training: the loss falls, checkpoints round-trip, and a resumed run is the run that was not interrupted."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import char_tokenizer

from lm import config as config_lib
from lm import optim
from lm.backends import select
from lm.checkpoint import manager, reader
from lm.data import corpus
from lm.data.batches import TrainBatches
from lm.errors import UserError
from lm.model import objective
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.config import MeshConfig
from lm.run_files import METRICS
from lm.train import state as state_lib
from lm.train.loop import train
from lm.train.step import loss_and_grads


def _records(workdir):
    with open(os.path.join(workdir, METRICS)) as f:
        return [json.loads(line) for line in f]


def test_loss_falls_within_a_few_steps(tiny_run):
    workdir, final = tiny_run
    losses = [r["loss"] for r in _records(workdir) if "loss" in r]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.5, losses
    assert final["loss"] < np.log(68) - 0.5  # well below a uniform guess over the characters
    assert set(_records(workdir)[0]) >= {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "wall_time"}


def _restored_params(workdir, step):
    ckpt, step, model_config, _, _ = reader.open_run(workdir, step)
    model = select.model(model_config)
    layout = shd.make_layout(MeshConfig())
    return ckpt.params(step, placement.abstract_params(model, layout))


def test_resumed_run_equals_uninterrupted_run(tiny_run, tiny_config, tmp_path):
    workdir, final = tiny_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "20"))  # as if killed after the step-10 checkpoint
    again = train(tiny_config, resumed)
    assert again == final
    a, b = _restored_params(workdir, 20), _restored_params(resumed, 20)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    losses = lambda w: [(r["step"], r["loss"]) for r in _records(w) if "loss" in r]  # noqa: E731
    assert losses(resumed) == losses(workdir)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tiny_run, tiny_config, tmp_path,
                                                                             capsys):
    workdir, final = tiny_run
    damaged = str(tmp_path / "damaged")
    shutil.copytree(workdir, damaged)
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(damaged, "checkpoints", "20", "params"))
                  for f in fs if os.path.basename(d) == "d"]  # the arrays' bytes
    for path in data_files:  # as if the disk filled up halfway through writing them
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    again = train(tiny_config, damaged)
    err = capsys.readouterr().err
    assert "warning: damaged checkpoint 20 (" in err, err
    assert "moved aside to checkpoints/damaged-20; resuming from checkpoint 10 instead" in err, err
    assert os.path.isdir(os.path.join(damaged, "checkpoints", "damaged-20"))
    assert again == final  # steps 11-20 ran again, exactly as the first time
    a, b = _restored_params(workdir, 20), _restored_params(damaged, 20)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip_restores_the_saved_state(tiny_config, tmp_path, cache_dir):
    cfg = tiny_config
    tok = char_tokenizer(cache_dir)
    components, _, _ = corpus.open_data(cfg.data, tok, 33)
    model_config = config_lib.model_config(config_lib.build(cfg), tok.vocab_size)
    model = select.model(model_config)
    tx, *_ = optim.optimizer(cfg.optim, 10)
    layout = shd.make_layout(MeshConfig(data=2, fsdp=2, tensor=2))
    state = state_lib.create(model, tx, layout, seed=4)
    state = state.replace(step=state.step + 7)
    it = TrainBatches(components, 8, seed=0)
    next(it)
    ckpt = manager.Checkpointer(str(tmp_path), every=1, keep=2)
    ckpt.save(7, state, it.get_state(), manager.make_meta(model_config, tok, cfg.to_dict()))
    ckpt.wait()
    want_batch = next(it)["tokens"]

    for sizes in (MeshConfig(data=2, fsdp=2, tensor=2), MeshConfig(data=1, fsdp=8)):  # same and other mesh
        template = state_lib.abstract(model, tx, shd.make_layout(sizes))
        restored, data_state = ckpt.restore(7, template)
        assert int(restored.step) == 7
        for x, y, t in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(template), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert y.sharding == t.sharding
    fresh_it = TrainBatches(components, 8, seed=0)
    fresh_it.set_state(data_state)
    np.testing.assert_array_equal(next(fresh_it)["tokens"], want_batch)
    _, step, saved_config, saved_tok, _ = reader.open_run(str(tmp_path))
    assert step == 7 and saved_config == model_config and saved_tok.proto == tok.proto


def test_unknown_key_in_a_config_file_is_named(tiny_config):
    cfg = tiny_config.copy_and_resolve_references()
    cfg.model.num_layer = 3
    with pytest.raises(UserError, match=r"config\.model\.num_layer \(did you mean 'num_layers'\?\)"):
        config_lib.build(cfg)


def test_prompt_targets_add_nothing_to_the_loss_or_the_gradients():
    """Two packed documents, [BOS] prompt answer [EOS] each: the loss and its gradients are those of the answers'
    and EOS's next-token terms alone, computed here straight from the logits."""
    model = select.model(config_lib.ModelConfig(vocab_size=50, max_len=15, num_layers=2, num_heads=2,
                                                 embed_dim=16, mlp_dim=32))
    params = jax.jit(lambda: nn.unbox(placement.boxed_params(model, 0)))()
    tokens = jnp.array([[1, 7, 8, 9, 20, 21, 2, 1, 10, 11, 30, 31, 32, 2, 0, 0]])  # BOS=1, EOS=2, then padding
    segments = jnp.array([[1] * 7 + [2] * 7 + [0, 0]])
    positions = jnp.array([[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0, 0]])
    loss_mask = jnp.array([[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0]])  # answers and EOS
    batch = {"tokens": tokens, "segment_ids": segments, "positions": positions, "loss_mask": loss_mask}
    counted = [3, 4, 5, 9, 10, 11, 12]  # inputs whose next token is an answer token or EOS

    def reference(p):
        logits = model.apply({"params": p}, tokens[:, :-1], positions[:, :-1], segments[:, :-1])[0]
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[0, 1:, None], axis=-1)[:, 0]
        return nll[jnp.array(counted)].mean()

    loss, grads = jax.jit(lambda p, b: loss_and_grads(model, p, b))(params, batch)
    want_loss, want_grads = jax.jit(jax.value_and_grad(reference))(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    unmasked = jax.jit(lambda p, b: objective.mean_loss(model, p, b))(
        params, {k: v for k, v in batch.items() if k != "loss_mask"})
    assert abs(float(unmasked) - float(loss)) > 1e-3  # the mask made a difference

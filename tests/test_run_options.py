"""Run-config keys and command flags that change what a run does, each checked against a value worked out here:
when a run logs, evaluates, saves and keeps checkpoints; the seed, z-loss and microbatches of its train step; the
mesh rules; the tokenizer's sample; and the flags of `lm.evaluate` and `lm.prepare`."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, final_state, run_module, score_by_hand
from jax.sharding import PartitionSpec

from lm import config as config_lib
from lm import optim
from lm.axes import DEFAULT_RULES
from lm.backends import select
from lm.checkpoint import reader
from lm.data import corpus
from lm.data.batches import TrainBatches, eval_batches
from lm.data.config import DataConfig
from lm.data.sources import bundled_corpus
from lm.errors import UserError
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.config import MeshConfig
from lm.run_files import METRICS, SUMMARY
from lm.tokenizer.config import TokenizerConfig
from lm.train import loop, startup
from lm.train.loop import train


def _records(workdir):
    with open(os.path.join(workdir, METRICS)) as f:
        return [json.loads(line) for line in f]


def test_a_runs_step_counts_decide_when_it_logs_evaluates_saves_and_keeps_checkpoints(tiny_config, tmp_path,
                                                                                     capsys):
    """20 steps of 8 rows of 32 tokens on one device, logged every 6 steps,
    evaluated on 1 validation batch every 8, saved every 6 and the newest 2 kept: train records at 6, 12, 18 and
    the last step 20; evaluations at 8, 16 and 20; checkpoints 18 and 20 left; 20 x 8 rows taken; the evaluation at
    20 is the loss of the first 8 validation rows, scored by hand."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.update(batch_size=8, steps=20, log_every=6, eval_every=8, eval_batches=1)
    cfg.checkpoint.update(every=6, keep=2)
    workdir = str(tmp_path / "run")
    train(cfg, workdir, devices=jax.devices()[:1])  # the step counts, not the mesh, are under test
    out = capsys.readouterr().out
    records = _records(workdir)
    assert [r["step"] for r in records if "loss" in r] == [6, 12, 18, 20]
    assert [r["step"] for r in records if "val_loss" in r] == [8, 16, 20]
    assert "step      6/20 | loss" in out and "step     20/20 | loss" in out, out
    assert [r["train_tokens"] for r in records if "loss" in r] == [s * 8 * 32 for s in (6, 12, 18, 20)]
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [18, 20]
    _, data_state = final_state(workdir, 20)
    assert sum(data_state["rows"].values()) == 20 * 8
    nll, count, _ = score_by_hand(workdir, max_batches=1)
    last = records[-1]
    assert last["step"] == 20 and last["val_tokens"] == count <= 8 * 32
    assert last["val_loss"] == pytest.approx(nll / count, rel=1e-5)
    with open(os.path.join(workdir, SUMMARY)) as f:
        assert json.load(f)["steps"] == 20


def _objective_by_hand(model, params, batch, z_loss):
    """(mean next-token loss plus z_loss * mean log(Z)^2, mean loss) over the targets that continue their
    document, from the model's logits with a log-softmax written out here."""
    tokens, segments, positions = (jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions"))
    logits = model.apply({"params": params}, tokens[:, :-1], positions[:, :-1], segments[:, :-1])
    top = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    log_z = jnp.log(jnp.exp(logits - top).sum(-1)) + top[..., 0]
    picked = jnp.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    counted = ((segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)).astype(jnp.float32)
    n = counted.sum()
    nll = ((log_z - picked) * counted).sum() / n
    return nll + z_loss * (log_z**2 * counted).sum() / n, nll


def test_the_train_step_takes_the_seed_z_loss_and_microbatches_of_the_config(tiny_config, tmp_path):
    """Seed 5, z-loss 0.1, 16 rows in 2 microbatches, on a mesh that splits the batch 8 ways and the parameters 4
    ways. The step the loop compiles holds the batch as 2 slices of 8 rows of 33 tokens (with 1 microbatch, no such
    slices); its loss is that of parameters initialized with seed 5 on the first batch of seed 5's data order, and
    its gradient norm that of that loss plus the z-loss, both computed here. Seed 0's parameters or batch, or no
    z-loss, give other values."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.seed = 5
    cfg.train.update(batch_size=16, microbatches=2, z_loss=0.1)
    cfg.mesh.update(data=2, fsdp=4)
    layout = shd.make_layout(cfg.mesh)
    run = config_lib.build(cfg)
    start = startup.start(run, str(tmp_path / "run"), layout, optim.optimizer(run.optim, run.train.steps))
    start.checkpointer.close()
    batch = next(start.batches)
    single = cfg.copy_and_resolve_references()
    single.train.microbatches = 1
    steps = {1: loop._compiled_step(single, layout, start), 2: loop._compiled_step(cfg, layout, start)}
    with layout.scope():
        programs = {m: step.lower(start.state, layout.global_batch(batch)).as_text() for m, step in steps.items()}
        _, metrics = steps[2](start.state, layout.global_batch(batch))
    assert "tensor<16x33xi32>" in programs[1] and "tensor<2x8x33xi32>" not in programs[1]
    assert "tensor<2x8x33xi32>" in programs[2]

    model = start.model
    components, _, _ = corpus.open_data(cfg.data, start.tokenizer, model.config.max_len + 1)
    one = shd.tensor_layout(1)
    params = {seed: jax.device_get(placement.init_params(model, one, seed)) for seed in (0, 5)}
    batches = {seed: next(TrainBatches(components, 16, seed)) for seed in (0, 5)}

    @jax.jit
    def by_hand(p, b, z):  # (mean loss, norm of the gradient of the mean loss plus z-loss)
        (_, nll), grads = jax.value_and_grad(lambda q: _objective_by_hand(model, q, b, z), has_aux=True)(p)
        return nll, jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))

    want_loss, want_norm = (float(x) for x in by_hand(params[5], batches[5], 0.1))
    print(f"first loss {float(metrics['loss']):.6f} (by hand {want_loss:.6f}); gradient norm "
          f"{float(metrics['grad_norm']):.6f} (by hand {want_norm:.6f})")
    assert float(metrics["loss"]) == pytest.approx(want_loss, rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(want_norm, rel=1e-4)
    for p, b in ((params[0], batches[5]), (params[5], batches[0])):
        assert abs(float(by_hand(p, b, 0.1)[0]) - want_loss) > 1e-3  # the seed decides both
    assert abs(float(by_hand(params[5], batches[5], 0.0)[1]) - want_norm) > 1e-2 * want_norm  # the z-loss counts


def test_microbatches_that_do_not_divide_each_devices_rows_are_one_line_before_a_tokenizer_is_made(tiny_config,
                                                                                                   tmp_path):
    """8 rows over 8 data-parallel devices is 1 row each, which 2 microbatches cannot split (the step would fail
    to reshape it); 16 rows is 2 each."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.train.update(batch_size=8, microbatches=2)
    with pytest.raises(UserError, match=r"^config.train.microbatches=2 does not divide the 1 row\(s\) of each of the "
                                        r"8 data-parallel devices \(config.train.batch_size=8\); use fewer "):
        train(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "tokenizer.json")
    cfg.train.batch_size = 16
    run = config_lib.build(cfg)
    startup.check_batch(run, shd.make_layout(run.mesh))


def test_the_mesh_rules_of_a_config_decide_where_each_parameter_lives(tiny_config):
    """Rules as a run's saved config holds them (JSON lists), with `embed` mapped to no mesh axis: the token
    embedding [vocabulary, embed] is split over `tensor` alone, where the default rules split its embed axis over
    `fsdp` as well."""
    cfg = tiny_config.copy_and_resolve_references()
    model = select.model(config_lib.model_config(config_lib.build(cfg), vocab_size=128))
    rules = [[name, None if name == "embed" else (list(axes) if isinstance(axes, tuple) else axes)]
             for name, axes in DEFAULT_RULES]
    specs = {}
    for which, mesh in (("default", MeshConfig(data=2, fsdp=2, tensor=2)),
                        ("given", MeshConfig(data=2, fsdp=2, tensor=2, rules=rules))):
        layout = shd.make_layout(mesh)
        specs[which] = placement.abstract_params(model, layout)["token_embedding"].sharding.spec
    assert specs["default"] == PartitionSpec("tensor", "fsdp")
    assert specs["given"] == PartitionSpec("tensor", None) or specs["given"] == PartitionSpec("tensor")
    assert "embed->" not in shd.run_layout({"mesh": {"data": 2, "fsdp": 2, "tensor": 2, "rules": rules}}).describe()


def test_a_fresh_runs_tokenizer_is_trained_on_its_first_sample_chars_characters(tmp_path):
    """Documents of 'a', 'b' and 'c' first and of 'x', 'y' and 'z' after: a character tokenizer trained on the
    first 2,000 characters has pieces for 'a', 'b', 'c', the space and the newline (always a piece) besides <unk>,
    <s> and </s>, and reads 'xyz' as unknown; trained on all of them, it has 'x', 'y' and 'z' as well."""
    text = "\n\n".join(["abc cab bca " * 10] * 40 + ["xyz zyx yzx " * 10] * 40)
    (tmp_path / "c.txt").write_text(text)
    d = DataConfig(path=str(tmp_path / "c.txt"), cache_dir=str(tmp_path))
    sampled = corpus.fresh_tokenizer(d, TokenizerConfig(type="char", sample_chars=2000))
    whole = corpus.fresh_tokenizer(d, TokenizerConfig(type="char", sample_chars=0))
    pieces = lambda tok: {tok.decode([i]) for i in range(3, tok.vocab_size)}  # noqa: E731 (after the specials)
    assert sampled.vocab_size == 3 + 5 and pieces(sampled) == set("abc \n")
    assert whole.vocab_size == 3 + 8 and pieces(whole) == set("abcxyz \n")
    assert sampled.encode("xyz") == [0] and 0 not in whole.encode("xyz")  # <unk> to the sampled one only


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens, positions, segments):
    return model.apply({"params": params}, tokens, positions, segments)


def _scored_by_hand(workdir, step, data, split):
    """(summed loss in nats, targets counted) of checkpoint `step` on every row of `split` of `data`, from the
    model's logits with a log-softmax written out here."""
    ckpt, step, c, tok, _ = reader.open_run(workdir, step)
    model = select.model(c)
    layout = shd.tensor_layout(1)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    ckpt.close()
    nll = count = 0
    for b in eval_batches(corpus.eval_splits(data, tok, c.max_len + 1, split), 8):
        tokens, segments = b["tokens"], b["segment_ids"]
        logits = np.asarray(_forward(model, params, tokens[:, :-1], b["positions"][:, :-1], segments[:, :-1]),
                            np.float64)
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        counted = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        nll -= np.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0][counted].sum()
        count += int(counted.sum())
    return nll, count


def test_evaluate_scores_the_step_split_and_data_it_is_given(tiny_run, tmp_path):
    """`lm.evaluate --step 10 --split train --data_path FILE --cache_dir DIR --batch_size 3`: the loss of
    checkpoint 10 (not the newest, 20) on the training split of FILE (not its validation split, nor the run's
    data), recomputed here, with the data prepared under DIR."""
    workdir, _ = tiny_run
    with open(bundled_corpus(), encoding="utf-8") as f:
        (tmp_path / "other.txt").write_text(f.read()[-3000:])
    cache = tmp_path / "cache"
    result = run_module("lm.evaluate", "--workdir", workdir, "--step", "10", "--split", "train", "--data_path",
                        str(tmp_path / "other.txt"), "--cache_dir", str(cache), "--batch_size", "3")
    assert result.returncode == 0, result.stderr
    assert os.path.isdir(cache) and os.listdir(cache)  # prepared there by the command (before the scoring below)
    got = json.loads(result.stdout)
    data = DataConfig(path=str(tmp_path / "other.txt"), cache_dir=str(cache))
    nll, count = _scored_by_hand(workdir, 10, data, "train")
    assert got["step"] == 10 and got["split"] == "train" and got["tokens"] == count
    assert got["loss"] == pytest.approx(nll / count, rel=1e-5)
    newest, _ = _scored_by_hand(workdir, 20, data, "train")
    held_out = _scored_by_hand(workdir, 10, data, "validation")[1]
    assert abs(newest / count - nll / count) > 1e-3 and held_out != count  # other checkpoint, other split


def test_prepare_writes_into_out_with_the_workers_it_is_given(tmp_path):
    """`lm.prepare --out DIR --workers 3` on a folder of 3 files (a task each), with config.data.workers=1:
    3 processes prepare them into DIR, and nothing is prepared in the cache folder."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    with open(bundled_corpus(), encoding="utf-8") as f:
        text = f.read()
    for i in range(3):
        (folder / f"{i}.txt").write_text(text[i * 20_000:(i + 1) * 20_000])
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run_module("lm.prepare", "--config", TINY, f"--config.data.path={folder}",
                        f"--config.data.cache_dir={cache}", "--config.data.workers=1", "--workers", "3", "--out",
                        str(out))
    assert result.returncode == 0, result.stderr
    assert "3 of 3 tasks to do, 3 process(es)" in result.stdout, result.stdout
    assert f"shard(s) at {out}" in result.stdout and os.path.isfile(out / "manifest.json")
    assert not [p for p in os.listdir(cache) if p != "tokenizers"]  # nothing prepared in the cache

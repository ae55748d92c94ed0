"""Fine-tuning with config.init_from: a new run starts from another run's (or an imported GPT-2's) parameters
and tokenizer, with a fresh optimizer and step, and its first loss is the source model's loss on that batch."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
from conftest import ROOT, USER_ENV, train_command

from lm.backends import select
from lm.checkpoint import reader
from lm.convert.hf import import_hf
from lm.data import corpus
from lm.data.batches import TrainBatches
from lm.errors import UserError
from lm.model import objective
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.run_files import METRICS
from lm.train.loop import train

GPT2_BPE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_bpe")
ONE = jax.devices()[:1]  # the fine-tunes train on one device: the conversions, not the mesh, are under test


def _first_record(workdir):
    with open(os.path.join(workdir, METRICS)) as f:
        return json.loads(f.readline())


def _source_loss_on_first_batch(cfg, source):
    """The mean loss of the source model itself (its own layers, scanned or not, and vocabulary padding, as
    saved) on the first batch a run of `cfg` trains on."""
    ckpt, step, saved, tok, _ = reader.open_run(source)
    layout = shd.make_layout(cfg.mesh)
    model = select.model(saved)
    params = ckpt.params(step, placement.abstract_params(model, layout))
    components, _, _ = corpus.open_data(cfg.data, tok, saved.max_len + 1)
    batches = TrainBatches(components, cfg.train.batch_size, cfg.seed)
    with layout.scope():
        return float(jax.jit(lambda p, b: objective.mean_loss(model, p, b))(params, layout.global_batch(next(batches))))


def test_first_loss_of_a_fine_tune_is_the_source_loss_on_that_batch(tiny_run, tiny_config, tmp_path):
    source, _ = tiny_run
    cfg = tiny_config.copy_and_resolve_references()
    cfg.init_from = source
    cfg.seed = 7  # another data order than the source run's
    cfg.train.update(steps=2, log_every=1, eval_every=1000)
    train(cfg, str(tmp_path / "ft"), devices=ONE)
    first = _first_record(str(tmp_path / "ft"))
    want = _source_loss_on_first_batch(cfg, source)
    print(f"first fine-tune loss {first['loss']:.6f}, source loss on that batch {want:.6f}")
    assert first["step"] == 1 and first["loss"] == pytest.approx(want, rel=1e-5)
    _, step, _, tok, _ = reader.open_run(str(tmp_path / "ft"))
    assert step == 2 and tok.proto == reader.open_run(source)[3].proto  # the source's tokenizer came along
    assert not os.path.exists(tmp_path / "ft" / "tokenizer.json")  # none was made


def test_fine_tune_converts_layers_and_vocabulary_padding_either_way(tiny_config, tmp_path):
    """An imported GPT-2 (scanned, vocabulary 400 unpadded) fine-tunes unrolled with the table padded to 512 rows;
    that run fine-tunes scanned and unpadded again. Each first loss is the source model's own on that batch."""
    import_hf(GPT2_BPE, str(tmp_path / "gpt2"), scan_layers=True)
    cfg = tiny_config.copy_and_resolve_references()
    cfg.init_from = str(tmp_path / "gpt2") + ":0"
    cfg.model.update(num_layers=2, num_heads=4, embed_dim=32, max_len=64, scan_layers=False, vocab_multiple=128)
    cfg.train.update(steps=2, log_every=1, eval_every=1000, eval_batches=2)
    result = train(cfg, str(tmp_path / "unrolled"), devices=ONE)
    first = _first_record(str(tmp_path / "unrolled"))
    assert first["loss"] == pytest.approx(_source_loss_on_first_batch(cfg, str(tmp_path / "gpt2")), rel=1e-5)
    assert np.isfinite(result["loss"]) and result["bits_per_byte"] > 0
    ckpt, step, c, tok, _ = reader.open_run(str(tmp_path / "unrolled"))
    expected = json.load(open(os.path.join(GPT2_BPE, "expected.json")))
    assert c.vocab_size == 400 and tok.encode(expected["texts"][0]) == expected["ids"][0]
    params = ckpt.params(step, placement.abstract_params(select.model(c), shd.make_layout(cfg.mesh)))
    assert params["token_embedding"].shape == (512, 32) and "block_1" in params

    back = cfg.copy_and_resolve_references()
    back.init_from = str(tmp_path / "unrolled")  # its step-2 checkpoint: unrolled, 512 rows
    back.seed = 3
    back.model.update(scan_layers=True, vocab_multiple=1)
    train(back, str(tmp_path / "scanned"), devices=ONE)
    source_loss = _source_loss_on_first_batch(back, str(tmp_path / "unrolled"))
    assert _first_record(str(tmp_path / "scanned"))["loss"] == pytest.approx(source_loss, rel=1e-5)
    ckpt, step, c, _, _ = reader.open_run(str(tmp_path / "scanned"))
    params = ckpt.params(step, placement.abstract_params(select.model(c), shd.make_layout(back.mesh)))
    assert params["token_embedding"].shape == (400, 32) and params["blocks"]["mlp"]["fc"]["kernel"].shape[0] == 2


def test_init_from_errors_are_one_line(tiny_run, tiny_config, tmp_path):
    source, _ = tiny_run
    cfg = tiny_config.copy_and_resolve_references()
    cfg.init_from = source
    cfg.model.num_layers = 3
    with pytest.raises(UserError, match=r"holds a model of another shape \(model.num_layers: 3 here, 2 there\)"):
        train(cfg, str(tmp_path / "a"))
    cfg.init_from = str(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no checkpoints"):
        train(cfg, str(tmp_path / "b"))
    cfg.init_from = source + ":12345"
    with pytest.raises(UserError, match="has no checkpoint at step 12345"):
        train(cfg, str(tmp_path / "c"))
    import_hf(GPT2_BPE, str(tmp_path / "gpt2"))
    with pytest.raises(UserError, match="holds imported weights"):
        train(tiny_config, str(tmp_path / "gpt2"))


def test_a_fine_tune_says_how_many_training_tokens_the_inherited_tokenizer_cannot_read(tmp_path, cache_dir):
    """A run's character tokenizer, made from lowercase text, inherited by a run on uppercase text: each training
    document 'THE CAT SAT' is 7 tokens, BOS, <unk> (a run of characters it cannot read is one), space, <unk>,
    space, <unk>, EOS: 3 of 7 are <unk>. The fine-tune says so once, at its start (it once trained on them without
    a word); the source run, on its own text, says nothing."""
    source, target = tmp_path / "lower.txt", tmp_path / "upper.txt"
    source.write_text("the cat sat on the mat\n\n" * 2000)
    target.write_text("THE CAT SAT\n\n" * 1000)  # 900 documents in training, the last tenth held out
    first = subprocess.run(train_command(tmp_path / "a", cache_dir, f"--config.data.path={source}",
                                         "--config.train.steps=2"), cwd=ROOT, env=USER_ENV, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    tuned = subprocess.run(train_command(tmp_path / "b", cache_dir, f"--config.data.path={target}",
                                         f"--config.init_from={tmp_path / 'a'}", "--config.train.steps=2"),
                           cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0 and tuned.stderr.splitlines() == [
        f"warning: the tokenizer of {tmp_path / 'a'} cannot read 2,700 of the 6,300 training tokens (42.9%): they "
        "are <unk>; give a tokenizer made for this data, or train one (a run of its own)"], tuned.stderr

"""Parity with the Llama family in Hugging Face `transformers`: Llama (grouped-query attention, Llama 3 RoPE scaling,
untied head, sharded safetensors), Qwen2 (query/key/value biases, tied head), Qwen3 (QK-norm, a head width of its
own) and Mistral (a sliding window shorter than the inputs), each built with random weights and saved by
`transformers` (tests/fixtures/families, made by tests/fixtures/make_family_fixtures.py): imported logits and
greedy continuations equal the reference's, exports give back the same tensors and the config.json that
`transformers` loaded with the same logits, and a fine-tune from the imported Llama starts at its loss."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lm.backends import select
from lm.checkpoint import reader
from lm.convert.hf import export_hf, import_hf, read_tensors
from lm.data import corpus
from lm.data.batches import TrainBatches
from lm.errors import UserError
from lm.model.transformer import init_cache
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.sample.generate import decode, model_apply
from lm.train.loop import train

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "families")
FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _open(workdir, attention="auto"):
    ckpt, step, c, tok, _ = reader.open_run(workdir)
    c = type(c).from_dict({**c.to_dict(), "attention": attention})
    model = select.model(c)
    layout = shd.tensor_layout(1)
    return c, model, ckpt.params(step, placement.abstract_params(model, layout)), tok


def _logits(model, params, tokens):
    positions = np.tile(np.arange(tokens.shape[1]), (tokens.shape[0], 1))
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions, np.ones_like(tokens)))


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_logits_and_greedy_tokens_are_those_of_transformers(family, tmp_path):
    folder = os.path.join(FIXTURES, family)
    import_hf(folder, str(tmp_path / "w"), scan_layers=family != "qwen2")  # one family unrolled
    c, model, params, _ = _open(str(tmp_path / "w"))
    tokens, want = np.load(os.path.join(folder, "tokens.npy")), np.load(os.path.join(folder, "logits.npy"))
    got = _logits(model, params, tokens)
    print(f"{family}: max |lm - transformers| logit difference {np.abs(got - want).max():.2e} (logits up to "
          f"{np.abs(want).max():.1f})")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    greedy = np.load(os.path.join(folder, "greedy.npy"))[None]  # 8 prompt tokens, then 40 of transformers'
    assert len(set(greedy[0, 8:].tolist())) >= 20  # a continuation that varies: 21 to 32 distinct tokens of 40
    out, _ = decode(model_apply(model), params, init_cache(c, 1), greedy[:, :8], jax.random.key(0), 40, 0.0)
    assert np.asarray(out).tolist() == greedy[:, 8:].tolist()


def test_the_options_each_family_needs_come_from_its_config(tmp_path):
    seen = {}
    for family in FAMILIES:
        import_hf(os.path.join(FIXTURES, family), str(tmp_path / family))
        c = reader.open_run(str(tmp_path / family))[2]
        seen[family] = (c.kv_heads, c.head_dim, c.qkv_bias, c.qk_norm, c.sliding_window, c.tie_embeddings,
                        c.rope_scaling)
    assert seen == {"llama": (2, 8, False, False, 0, False, "llama3"), "qwen2": (2, 8, True, False, 0, True, "none"),
                    "qwen3": (2, 16, False, True, 0, False, "none"), "mistral": (1, 8, False, False, 8, False, "none")}


LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_scaling": "llama3", "rope_factor": 8.0, "rope_low_freq_factor": 1.0,
               "rope_high_freq_factor": 4.0, "rope_original_max_len": 32}  # the Llama fixture's config.json


def test_a_config_json_of_transformers_before_5_keeps_its_rope_scaling(tmp_path):
    """transformers < 5 writes `rope_theta` at the top and the scaling under `rope_scaling` (older still: "type"
    for "rope_type"); an import of either form has the RoPE settings of the fixture's `rope_parameters`."""
    from lm.convert import llama

    hf = _copy("llama", tmp_path)
    config = json.load(open(hf / "config.json"))
    scaling = {k: v for k, v in config.pop("rope_parameters").items() if k != "rope_theta"}
    json.dump({**config, "rope_theta": 500000.0, "rope_scaling": scaling}, open(hf / "config.json", "w"))
    import_hf(str(hf), str(tmp_path / "w"))
    c = reader.open_run(str(tmp_path / "w"))[2]
    assert {k: getattr(c, k) for k in LLAMA3_ROPE} == LLAMA3_ROPE
    scaling["type"] = scaling.pop("rope_type")
    c = llama.model_config({**config, "rope_theta": 500000.0, "rope_scaling": scaling})
    assert {k: getattr(c, k) for k in LLAMA3_ROPE} == LLAMA3_ROPE
    c = llama.model_config({**config, "rope_theta": 1e6})  # no scaling at all: the plain RoPE of that base
    assert (c.rope_theta, c.rope_scaling) == (1e6, "none")


@pytest.mark.parametrize("attention", ["xla", "cpu", "reference"])
def test_every_attention_implementation_honours_the_sliding_window(attention, tmp_path):
    """Mistral's window (8) is shorter than the inputs (40): each implementation gives transformers' logits."""
    folder = os.path.join(FIXTURES, "mistral")
    import_hf(folder, str(tmp_path / "w"))
    _, model, params, _ = _open(str(tmp_path / "w"), attention)
    got = _logits(model, params, np.load(os.path.join(folder, "tokens.npy")))
    np.testing.assert_allclose(got, np.load(os.path.join(folder, "logits.npy")), atol=1e-4, rtol=0)
    with pytest.raises(AssertionError):  # the same weights without the window: another model
        import_hf(folder, str(tmp_path / "nowindow"))
        c, _, params, _ = _open(str(tmp_path / "nowindow"), attention)
        unwindowed = select.model(type(c).from_dict({**c.to_dict(), "sliding_window": 0}))
        np.testing.assert_allclose(_logits(unwindowed, params, np.load(os.path.join(folder, "tokens.npy"))),
                                   np.load(os.path.join(folder, "logits.npy")), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_gives_back_the_tensors_and_the_config_transformers_loaded(family, tmp_path):
    folder = os.path.join(FIXTURES, family)
    import_hf(folder, str(tmp_path / "w"))
    done = subprocess.run([sys.executable, "-m", "lm.convert", "--workdir", str(tmp_path / "w"), "--export",
                           str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"as {family}" in done.stdout, done.stderr
    got, want = load_file(str(tmp_path / "hf" / "model.safetensors")), read_tensors(folder)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        np.testing.assert_array_equal(got[name], tensor, err_msg=name)
    exported = json.load(open(tmp_path / "hf" / "config.json"))
    assert exported == json.load(open(os.path.join(folder, "export_config.json")))


def test_fine_tune_from_an_imported_llama_starts_at_its_own_loss(tiny_config, tmp_path):
    """The first loss of a run with init_from an imported Llama equals the cross-entropy computed here, by hand,
    from the imported model's logits (the logits the test above pins to transformers') on that first batch."""
    folder = os.path.join(FIXTURES, "llama")
    import_hf(folder, str(tmp_path / "llama"))
    cfg = tiny_config.copy_and_resolve_references()
    cfg.init_from = str(tmp_path / "llama")
    imported = reader.open_run(str(tmp_path / "llama"))[2].to_dict()
    cfg.model.update({k: v for k, v in imported.items() if k != "vocab_size"}, max_len=64)  # a shorter context
    cfg.train.update(steps=1, log_every=1, eval_every=1000)
    train(cfg, str(tmp_path / "ft"), devices=jax.devices()[:1])  # the import, not the mesh, is under test
    with open(tmp_path / "ft" / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    c, model, params, tok = _open(str(tmp_path / "llama"))
    assert (tok.bos_id, tok.eos_id) == (0, 1)  # <|begin_of_text|>, <|end_of_text|>: the files name them, ids 0, 1
    components, _, _ = corpus.open_data(cfg.data, tok, cfg.model.max_len + 1)  # the run's context, 64
    batch = next(TrainBatches(components, cfg.train.batch_size, cfg.seed))
    tokens = np.asarray(batch["tokens"])  # [B, T + 1]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions, segments = np.asarray(batch["positions"])[:, :-1], np.asarray(batch["segment_ids"])[:, :-1]
    logits = np.asarray(jax.jit(model.apply)({"params": params}, inputs, positions, segments), np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    mask = np.asarray(batch["segment_ids"])[:, 1:] == np.asarray(batch["segment_ids"])[:, :-1]
    mask &= np.asarray(batch["segment_ids"])[:, 1:] > 0
    want = float((nll * mask).sum() / mask.sum())
    print(f"first fine-tune loss {first['loss']:.6f}, the imported Llama's loss on that batch {want:.6f}")
    assert first["step"] == 1 and first["loss"] == pytest.approx(want, rel=1e-5)


def _one_line_error(*args):
    done = subprocess.run([sys.executable, "-m", "lm.convert", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    return lines[0]


def _copy(family, tmp_path, name="hf"):
    out = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, family), out)
    return out


def test_bad_folders_get_one_line_each(tmp_path):
    hf = _copy("qwen3", tmp_path)
    config = json.load(open(hf / "config.json"))
    json.dump({**config, "architectures": ["GemmaForCausalLM"]}, open(hf / "config.json", "w"))
    line = _one_line_error("--hf_dir", str(hf), "--workdir", str(tmp_path / "w1"))
    assert "'GemmaForCausalLM' is not supported" in line and "LlamaForCausalLM" in line and "GPT2LMHeadModel" in line

    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}
    json.dump({**config, "rope_parameters": rope}, open(hf / "config.json", "w"))
    assert "rope scaling type 'yarn' is not supported" in _one_line_error("--hf_dir", str(hf), "--workdir",
                                                                           str(tmp_path / "w2"))
    json.dump(config, open(hf / "config.json", "w"))
    tensors = load_file(str(hf / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "layers.1.self_attn.k_norm" not in k}, str(hf / "model.safetensors"))
    line = _one_line_error("--hf_dir", str(hf), "--workdir", str(tmp_path / "w3"))
    assert "lack tensors (model.layers.1.self_attn.k_norm.weight)" in line
    save_file({**tensors, "model.layers.0.mlp.up_proj.weight": np.zeros((81, 32), np.float32)},
              str(hf / "model.safetensors"))
    line = _one_line_error("--hf_dir", str(hf), "--workdir", str(tmp_path / "w4"))
    assert "model.layers.0.mlp.up_proj.weight" in line and "(81, 32)" in line and "(80, 32)" in line

    llama = _copy("llama", tmp_path, "llama")
    (llama / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    line = _one_line_error("--hf_dir", str(llama), "--workdir", str(tmp_path / "w5"))
    assert "the tokenizer in" in line and "does not load" in line
    for path, name in ((tmp_path / "w1", "w1"), (tmp_path / "w5", "w5")):
        assert not (path / "checkpoints").exists() or not os.listdir(path / "checkpoints"), name


def test_a_config_field_lm_cannot_honour_is_refused():
    from lm.convert import llama

    base = json.load(open(os.path.join(FIXTURES, "qwen2", "config.json")))
    with pytest.raises(UserError, match="use_sliding_window"):
        llama.model_config({**base, "use_sliding_window": True})
    with pytest.raises(UserError, match="hidden_act='gelu' is not supported"):
        llama.model_config({**base, "hidden_act": "gelu"})
    with pytest.raises(UserError, match="attention_bias"):
        llama.model_config({**base, "model_type": "llama", "attention_bias": True})


def test_export_refuses_a_model_no_family_matches(tmp_path):
    import_hf(os.path.join(FIXTURES, "qwen3"), str(tmp_path / "w"))
    _, _, c, _, _ = reader.open_run(str(tmp_path / "w"))
    from lm.convert import llama

    with pytest.raises(UserError, match="matches no Hugging Face family"):
        llama.family_of(type(c).from_dict({**c.to_dict(), "sliding_window": 4}))  # QK-norm and a window
    export_hf(str(tmp_path / "w"), str(tmp_path / "hf"))
    assert json.load(open(tmp_path / "hf" / "config.json"))["architectures"] == ["Qwen3ForCausalLM"]

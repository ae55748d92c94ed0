"""Parity with Hugging Face GPT-2: models built and saved by `transformers` (tests/fixtures/gpt2_tiny and
gpt2_bpe, made by tests/fixtures/make_gpt2_fixture.py) import into workdirs whose logits, tokenizer ids and
greedy text equal the reference's, and export back; an lm model exports to the files `transformers` loaded with
lm's logits (tests/fixtures/lm_export)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece as spm
from conftest import USER_ENV, contents, one_line_error, wide_params
from fixtures import lm_export_source
from safetensors.numpy import load_file

from lm.backends import select
from lm.checkpoint.reader import open_run
from lm.convert.gpt2 import hf_config, model_config
from lm.convert.hf import export_hf, import_hf
from lm.errors import UserError
from lm.model.transformer import init_cache
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.config import MeshConfig
from lm.sample.generate import decode, model_apply
from lm.tokenizer import sentencepiece
from lm.tokenizer.huggingface import HFTokenizer

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_tiny")
EXPORTED = os.path.join(os.path.dirname(__file__), "fixtures", "lm_export")
BPE_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt2_bpe")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logits(workdir, tokens):
    ckpt, step, c, tokenizer, _ = open_run(workdir)
    assert tokenizer is None and step == 0
    model = select.model(c)
    params = ckpt.params(step, placement.abstract_params(model, shd.make_layout(MeshConfig())))
    positions = np.tile(np.arange(tokens.shape[1]), (tokens.shape[0], 1))
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions, np.ones_like(tokens)))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_imported_gpt2_gives_the_logits_of_transformers(scan_layers, tmp_path):
    import_hf(FIXTURE, str(tmp_path / "w"), scan_layers)
    tokens = np.load(os.path.join(FIXTURE, "tokens.npy"))
    want = np.load(os.path.join(FIXTURE, "logits.npy"))
    got = _logits(str(tmp_path / "w"), tokens)
    print(f"max |lm - transformers| logit difference: {np.abs(got - want).max():.2e} (logits up to "
          f"{np.abs(want).max():.1f})")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_round_trips_the_safetensors(tmp_path):
    import_hf(FIXTURE, str(tmp_path / "w"))
    export_hf(str(tmp_path / "w"), str(tmp_path / "hf"))
    original, exported = load_file(os.path.join(FIXTURE, "model.safetensors")), load_file(str(tmp_path / "hf" /
                                                                                              "model.safetensors"))
    assert set(exported) == {k for k in original if not k.endswith(".attn.bias")}
    for k, v in exported.items():
        np.testing.assert_array_equal(v, original[k])
    configs = [json.load(open(p)) for p in (tmp_path / "hf" / "config.json", os.path.join(FIXTURE, "config.json"))]
    assert model_config(configs[0]) == model_config(configs[1])


def test_export_writes_what_transformers_loaded_with_lm_logits(tmp_path):
    """An lm model (unrolled layers, 90 ids in 96 padded rows) exported by `python -m lm.convert --export` gives
    the files that `transformers` loaded when the fixture was made (make_gpt2_fixture.py checked its logits
    against lm's there), and lm's logits are the ones `transformers` computed from them."""
    c, params = lm_export_source.load(os.path.join(EXPORTED, lm_export_source.PARAMS))
    lm_export_source.write_workdir(c, params, str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-m", "lm.convert", "--workdir", str(tmp_path / "run"), "--export",
                           str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got, want = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(os.path.join(EXPORTED,
                                                                                             "model.safetensors"))
    assert sorted(got) == sorted(want) and got["transformer.wte.weight"].shape == (90, 32)
    for name, tensor in want.items():
        np.testing.assert_array_equal(got[name], tensor, err_msg=name)
    assert json.load(open(tmp_path / "hf" / "config.json")) == json.load(open(os.path.join(EXPORTED, "config.json")))
    logits = lm_export_source.lm_logits(str(tmp_path / "run"), lm_export_source.TOKENS)
    np.testing.assert_allclose(logits, np.load(os.path.join(EXPORTED, "logits.npy")), atol=1e-4, rtol=0)


def test_export_names_the_start_and_end_ids_of_the_run_tokenizer():
    """A SentencePiece run's <s> and </s> (ids 1 and 2 by SentencePiece's convention, 0 being <unk>) become
    config.json's bos_token_id and eos_token_id; a run without a tokenizer names none."""
    tok = sentencepiece.train(["to be or not to be\n"], "char", 40)
    pieces = spm.SentencePieceProcessor(model_proto=tok.proto)
    hf = hf_config(lm_export_source.CONFIG, {"bos": tok.bos_id, "eos": tok.eos_id})
    assert (hf["bos_token_id"], hf["eos_token_id"]) == (pieces.piece_to_id("<s>"), pieces.piece_to_id("</s>")) == (1, 2)
    hf = hf_config(lm_export_source.CONFIG, {})
    assert hf["bos_token_id"] is None and hf["eos_token_id"] is None


@pytest.mark.parametrize("fixture", ["gpt2_tiny", "gpt2_bpe"])
def test_greedy_decoding_gives_the_tokens_of_transformers_generate(fixture, tmp_path):
    """lm's cached decode loop, token for token against `generate(do_sample=False)` of the saved model: two rows of
    6 random ids + 20 tokens (gpt2_tiny), a text prompt after <|endoftext|> + 16 tokens (gpt2_bpe)."""
    folder = os.path.join(os.path.dirname(__file__), "fixtures", fixture)
    import_hf(folder, str(tmp_path / "w"))
    ckpt, step, c, _, _ = open_run(str(tmp_path / "w"))
    params = ckpt.params(step, placement.abstract_params(select.model(c), shd.tensor_layout(1)))
    if fixture == "gpt2_tiny":
        greedy = np.load(os.path.join(folder, "greedy.npy"))
        prompt, want = greedy[:, :6], greedy[:, 6:]
    else:
        expected = json.load(open(os.path.join(folder, "expected.json")))
        prompt, want = np.asarray([expected["prompt_ids"]]), np.asarray([expected["greedy"]])
    got, _ = decode(model_apply(select.model(c)), params, init_cache(c, len(prompt)), prompt, jax.random.key(0),
                    want.shape[1], 0.0)
    assert np.asarray(got).tolist() == want.tolist()


def test_convert_cli_and_its_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "lm.convert", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    ok = run("--hf_dir", FIXTURE, "--workdir", str(tmp_path / "w"), "--noscan_layers")
    assert ok.returncode == 0 and "imported a 2-layer model" in ok.stdout, ok.stderr
    ckpt, step, c, _, _ = open_run(str(tmp_path / "w"))
    assert not c.scan_layers and {"block_0", "block_1"} <= set(ckpt.params(step, placement.abstract_params(
        select.model(c), shd.tensor_layout(1))))  # unrolled
    again = run("--hf_dir", FIXTURE, "--workdir", str(tmp_path / "w"))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [again.stderr.strip()]
    assert "already holds checkpoints" in again.stderr
    sample = subprocess.run([sys.executable, "-m", "lm.sample", "--workdir", str(tmp_path / "w")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert sample.returncode == 2 and "holds no tokenizer" in sample.stderr
    with pytest.raises(UserError, match="only GPT-2 with a tanh GELU"):
        model_config({"model_type": "gpt2", "activation_function": "relu"})


def test_gpt2_tokenizer_gives_the_ids_of_transformers_and_round_trips():
    expected = json.load(open(os.path.join(BPE_FIXTURE, "expected.json")))
    tok = HFTokenizer.from_folder(BPE_FIXTURE)
    for text, ids in zip(expected["texts"], expected["ids"], strict=True):
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == text
    assert tok.token_bytes(eos_bytes=2).sum() > 256  # every byte token stands for one byte, merges for more
    with pytest.raises(UserError, match="does not load"):
        HFTokenizer.from_folder(FIXTURE)  # no vocab.json


def test_imported_gpt2_with_its_tokenizer_writes_the_greedy_text_of_transformers(tmp_path):
    expected = json.load(open(os.path.join(BPE_FIXTURE, "expected.json")))
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    ok = run("lm.convert", "--hf_dir", BPE_FIXTURE, "--workdir", str(tmp_path / "w"))
    assert ok.returncode == 0, ok.stderr
    sample = run("lm.sample", "--workdir", str(tmp_path / "w"), "--prompt", expected["prompt"], "--temperature", "0",
                 "--max_new_tokens", str(len(expected["greedy"])))
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.split("---\n", 1)[1] == expected["prompt"] + expected["greedy_text"] + "\n"
    export_hf(str(tmp_path / "w"), str(tmp_path / "hf"))
    again = HFTokenizer.from_folder(str(tmp_path / "hf"))
    assert again.encode(expected["texts"][1]) == expected["ids"][1]
    exported, original = (json.load(open(os.path.join(d, "config.json"))) for d in (tmp_path / "hf", BPE_FIXTURE))
    assert [exported[k] for k in ("bos_token_id", "eos_token_id")] == [original[k] for k in ("bos_token_id",
                                                                                             "eos_token_id")]


def test_export_writes_the_checkpoint_step_asks_for(wide_run, tmp_path):
    """wide_run holds checkpoints 1 and 2 of conftest.wide_params (seeds 1 and 3): `--step 1` exports the first's
    tensors, not the latest's."""
    done = subprocess.run([sys.executable, "-m", "lm.convert", "--workdir", wide_run, "--export", str(tmp_path / "hf"),
                           "--step", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "as llama" in done.stdout, done.stderr
    c = open_run(wide_run)[2]
    got, want, latest = load_file(str(tmp_path / "hf" / "model.safetensors")), wide_params(c, 1), wide_params(c, 3)
    np.testing.assert_array_equal(got["model.embed_tokens.weight"], want["token_embedding"])
    np.testing.assert_array_equal(got["lm_head.weight"], want["lm_head"].T)
    assert not np.array_equal(want["lm_head"], latest["lm_head"])


def _convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm.convert", *args], cwd=ROOT, env=USER_ENV, capture_output=True,
                          text=True, timeout=300)


def test_an_export_never_writes_over_or_through_a_users_files(tmp_path):
    """An export goes into a new or empty folder; a folder holding a user's files (here a model's, by the names an
    export writes, beside notes and a link) is refused in one line, untouched; with --overwrite only the export's
    names are replaced, whole, a link at one of them replaced and not written through, the rest kept. Each file
    takes the user's umask (the weights were once private)."""
    work = str(tmp_path / "w")
    import_hf(BPE_FIXTURE, work)
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's own file\n")
    out = tmp_path / "hf"
    out.mkdir()
    users = {"config.json": '{"mine": true}\n', "model.safetensors": "my weights\n", "tokenizer.json": "{}\n",
             "NOTES.md": "my notes\n"}
    for name, text in users.items():
        (out / name).write_text(text)
    os.symlink(outside, out / "link.txt")
    before = contents(str(out))
    refused = _convert("--workdir", work, "--export", str(out))
    one_line_error(refused, f"--export {out} is not empty (NOTES.md, config.json, link.txt and 2 more)", "--overwrite")
    assert contents(str(out)) == before and os.readlink(out / "link.txt") == str(outside)

    os.remove(out / "config.json")
    os.symlink(outside, out / "config.json")
    done = _convert("--workdir", work, "--export", str(out), "--overwrite")
    assert done.returncode == 0 and "as gpt2" in done.stdout, done.stderr
    assert outside.read_text() == "the user's own file\n" and os.readlink(out / "link.txt") == str(outside)
    assert (out / "NOTES.md").read_text() == "my notes\n"
    assert not os.path.islink(out / "config.json") and json.load(open(out / "config.json"))["n_embd"] == 32
    assert set(load_file(str(out / "model.safetensors"))) >= {"transformer.wte.weight", "transformer.h.1.mlp.c_fc.bias"}
    assert HFTokenizer.from_folder(str(out)).encode("Hello") == HFTokenizer.from_folder(BPE_FIXTURE).encode("Hello")
    umask = os.umask(0)
    os.umask(umask)
    exported = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    assert {name: oct(os.stat(out / name).st_mode & 0o777) for name in exported} == \
        {name: oct(0o666 & ~umask) for name in exported}
    assert sorted(os.listdir(out)) == sorted({*users, *exported, "link.txt"})  # no temporary file left

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    one_line_error(_convert("--workdir", work, "--export", str(sharded), "--overwrite"),
                   f"--export {sharded} holds a sharded model (model.safetensors.index.json)")
    assert os.listdir(sharded) == ["model.safetensors.index.json"]
    one_line_error(_convert("--workdir", work, "--export", str(outside)), f"--export {outside} is a file, not a folder")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    script = tmp_path / "read_only.sh"
    script.write_text(f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} && cd {ROOT} && "
                      f"{sys.executable} -m lm.convert --workdir {work} --export {read_only}")
    one_line_error(subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script)],
                                  env=USER_ENV, capture_output=True, text=True, timeout=300),
                   f"cannot write in {read_only} (Read-only file system); make it writable or use another --export")
    assert outside.read_text() == "the user's own file\n"


def test_an_import_checks_the_folder_it_reads_before_it_writes_anything(tmp_path):
    """A config.json claiming a huge model (12e15 parameters) beside small weights is refused from the files'
    headers (no array that size is made) and leaves no workdir; a config.json or shard index that is not what it
    should be, and a --workdir that is a file, are one line each."""
    huge = tmp_path / "huge"
    shutil.copytree(FIXTURE, huge)
    config = json.load(open(huge / "config.json"))
    (huge / "config.json").write_text(json.dumps({**config, "n_embd": 1_000_000, "n_head": 1000, "n_layer": 1000}))
    work = tmp_path / "w"
    one_line_error(_convert("--hf_dir", str(huge), "--workdir", str(work)),
                   f"the safetensors in {huge} lack tensors (transformer.h.10.attn.c_attn.bias, "
                   "transformer.h.10.attn.c_attn.weight, transformer.h.10.attn.c_proj.bias, ...) for the model its "
                   "config.json describes")
    assert not work.exists()
    (huge / "config.json").write_text('{"model_type": "gpt2", ')
    one_line_error(_convert("--hf_dir", str(huge), "--workdir", str(work)),
                   f"{huge}/config.json does not read as JSON")
    (huge / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_head"}))
    one_line_error(_convert("--hf_dir", str(huge), "--workdir", str(work)), f"{huge}/config.json lacks 'n_head'")
    (huge / "config.json").write_text(json.dumps(config))
    os.rename(huge / "model.safetensors", huge / "model-00001-of-00001.safetensors")
    (huge / "model.safetensors.index.json").write_text('{"weight_map": ["model-00001-of-00001.safetensors"]}')
    one_line_error(_convert("--hf_dir", str(huge), "--workdir", str(work)),
                   f"{huge}/model.safetensors.index.json has no 'weight_map'")
    assert not work.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    one_line_error(_convert("--hf_dir", FIXTURE, "--workdir", str(a_file)),
                   f"--workdir {a_file} is a file, not a folder")
    assert a_file.read_text() == "mine\n"

"""The command-line tools as a user runs them: one-line errors, evaluate, sample and bench."""

import glob
import json
import math
import os
import re
import shutil
import subprocess

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import ROOT, TINY, contents, load_config, one_line_error, run_module, score_by_hand, train_command

from lm import config as config_lib
from lm.backends import select
from lm.bench import decode
from lm.checkpoint import reader
from lm.data import corpus
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.placement import boxed_params
from lm.sample import weights as formats
from lm.sample.generate import generate


def test_config_key_typo_names_the_key(tmp_path, cache_dir):
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.model.num_layer=2")
    one_line_error(result, "config.model.num_layer", "num_layers")


@pytest.mark.parametrize("flags,message", [
    (["--config.model.num_layers=abc"], "flag --config.model.num_layers=abc: invalid literal for int()"),  # type
    (["--config.optim.lr=-0.1"], "config.optim.lr must be positive, got -0.1"),  # range (the checks below, as said)
    (["--config.mesh.data=3"], "config.mesh (data=3, fsdp=1, tensor=1) needs 3 devices but 1 are present"),
    (["--config.mesh.cpu_devices=2", "--config.mesh.tensor=2", "--config.model.num_heads=1"],  # the model
     "model.num_heads=1 is not divisible by mesh tensor=2"),
    (["--config.optim.name=muon", "--config.optim.muon_params=blocks/*"],  # a Muon setting the shapes do not fit
     "config.optim.muon_params='blocks/*' gives Muon blocks/attn/key/bias of shape [2, 2, 16], which is not a weight "
     "matrix"),
    (["--config.data.mixture=a/:0.5,b/:nan"], "config.data.mixture item 'b/:nan' is not PATH:WEIGHT with a weight > 0"),
])
def test_bad_config_values_are_one_line(flags, message, tmp_path, cache_dir):
    one_line_error(run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path),
                              f"--config.data.cache_dir={cache_dir}", *flags), message)


@pytest.mark.parametrize("overrides,message", [
    ({"model.num_heads": 3}, "config.model.embed_dim=32 is not divisible by config.model.num_heads=3"),
    ({"tokenizer.type": "word"}, "config.tokenizer.type must be one of ('char', 'bpe', 'unigram'), got 'word'"),
    ({"optim.name": "adamm"}, "config.optim.name='adamm' is not an optax optimizer taking a learning rate"),
    ({"optim.schedule": "cosine_decay"}, "config.optim.schedule must be one of cosine, wsd, linear, constant"),
    ({"optim.schedule": "wsd", "optim.cooldown_steps": 25},
     "config.optim.cooldown_steps=25 is longer than the run after its warmup (schedule steps 20 - warmup_steps 2"),
])
def test_bad_config_values_are_refused_by_the_check_every_command_runs(overrides, message):
    """The run config's own checks (`lm.config.validate`, which `lm.train` runs before anything else and turns into
    one line like those above)."""
    cfg = load_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    with pytest.raises(UserError, match="^" + re.escape(message)):
        config_lib.build(cfg)


def test_a_workdir_of_another_model_or_tokenizer_is_one_line(tiny_run, cache_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], workdir)  # (a refusal that regressed would train this copy on)
    before = contents(workdir)
    train = ("lm.train", "--config", TINY, "--workdir", workdir, f"--config.data.cache_dir={cache_dir}")
    one_line_error(run_module(*train, "--config.model.num_layers=3"),
                   f"{workdir} holds a checkpoint of another model (num_layers: saved 2, config 3)")
    one_line_error(run_module(*train, "--config.tokenizer.type=bpe"),
                   f"{workdir} holds a run trained with another tokenizer (type: saved 'char', config 'bpe')")
    assert contents(workdir) == before | {"lock": contents(workdir)["lock"]}  # (the lock names the refused run)


def test_a_checkpoint_with_an_older_optimizer_state_is_one_line_and_kept(tiny_run, cache_dir, tmp_path):
    workdir = str(tmp_path / "older")
    shutil.copytree(tiny_run[0], workdir)
    metas = glob.glob(os.path.join(workdir, "checkpoints", "*", "meta", "metadata"))
    for path in metas:  # as written before the optimizer state recorded its format
        with open(path) as f:
            meta = json.load(f)
        del meta["optimizer_state"]
        with open(path, "w") as f:
            json.dump(meta, f)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    result = run_module("lm.train", "--config", TINY, "--workdir", workdir, f"--config.data.cache_dir={cache_dir}")
    one_line_error(result, f"{workdir} holds an optimizer state in another format (that of an older lm; this run's "
                           f"is 'optax: chain(clip_by_global_norm, adamw)'); continue from its "
                           f"parameters with --config.init_from={workdir} and a new --workdir")
    assert metas and sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_resuming_with_another_optimizer_is_one_line_and_keeps_the_checkpoints(tiny_run, cache_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], workdir)
    before = contents(workdir)
    result = run_module("lm.train", "--config", TINY, "--workdir", workdir, f"--config.data.cache_dir={cache_dir}",
                        "--config.train.steps=30", "--config.optim.name=muon")
    one_line_error(result, f"{workdir} holds an optimizer state in another format ('optax: chain(clip_by_global_norm, "
                           "adamw)'; this run's is 'optax: chain(clip_by_global_norm, muon on *kernel)'); continue "
                           f"from its parameters with --config.init_from={workdir} and a new --workdir")
    assert contents(workdir) == before | {"lock": contents(workdir)["lock"]}  # (the lock names the refused run)


PRE_REDESIGN = os.path.join(os.path.dirname(__file__), "fixtures", "pre_redesign_run")


def test_a_workdir_written_before_the_redesign_samples_evaluates_and_fine_tunes_but_resumes_in_no_way(cache_dir,
                                                                                                   tmp_path):
    """tests/fixtures/pre_redesign_run (lm at 7c03c39): resuming it is one line naming its optimizer state and the
    way on; sampling reads it; evaluating it gives the loss recomputed by hand from its weights; a new run starts
    from its parameters."""
    workdir = str(tmp_path / "old")
    shutil.copytree(PRE_REDESIGN, workdir)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    common = ("--config", TINY, f"--config.data.cache_dir={cache_dir}")
    one_line_error(run_module("lm.train", *common, "--workdir", workdir),
                   "holds an optimizer state in another format ('lm.optim.adamw: count, mu, nu'; this run's is "
                   "'optax: chain(clip_by_global_norm, adamw)'); continue from its parameters with "
                   f"--config.init_from={workdir} and a new --workdir")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    sample = run_module("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens", "12",
                        "--temperature", "0", "--format", "jsonl")
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout)["tokens"] == 12
    evaluated = run_module("lm.evaluate", "--workdir", workdir, f"--cache_dir={cache_dir}")
    assert evaluated.returncode == 0, evaluated.stderr
    nll, count, _ = score_by_hand(workdir, cache_dir=cache_dir)
    assert json.loads(evaluated.stdout)["loss"] == pytest.approx(nll / count, rel=1e-5)
    tuned = run_module("lm.train", *common, "--workdir", str(tmp_path / "tuned"), f"--config.init_from={workdir}",
                       "--config.train.steps=2", "--config.train.eval_every=2")
    assert tuned.returncode == 0 and f"from the parameters and tokenizer of {workdir} (step 10)" in tuned.stdout, \
        tuned.stderr


def test_undecodable_bytes_stop_the_run_or_are_read_as_replacement_characters(tmp_path, cache_dir):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("Caf\u00e9 au lait, s'il vous pla\u00eet.\n\n".encode("latin-1") * 200)
    train = ("lm.train", "--config", TINY, f"--config.data.path={corpus}", f"--config.data.cache_dir={cache_dir}",
             "--config.train.steps=2")
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "strict")),
                   f"{corpus} is not UTF-8 text: byte 3 (0xe9) cannot be decoded; convert the file to UTF-8, or read "
                   "undecodable bytes as U+FFFD: --config.data.decode_errors=replace (lm.evaluate: "
                   "--decode_errors=replace)")
    replaced = run_module(*train, "--workdir", str(tmp_path / "replace"), "--config.data.decode_errors=replace")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stderr.splitlines() == [f"warning: {corpus}: 400 undecodable byte sequence(s), the first at byte "
                                            "3, read as U+FFFD (config.data.decode_errors=replace)"]
    # lm.evaluate on the same text, from a run whose own data decoded strictly: the option the line names works
    strict_run = str(tmp_path / "strict_run")
    assert run_module(*train, "--workdir", strict_run, f"--config.data.path={TINY}").returncode == 0
    evaluate = ("lm.evaluate", "--workdir", strict_run, "--data_path", str(corpus), "--cache_dir", cache_dir)
    refused = run_module(*evaluate)  # after its lines of progress
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1].startswith(f"error: {corpus} is not UTF-8 text")
    assert refused.stderr.splitlines()[-1].endswith("(lm.evaluate: --decode_errors=replace)") and \
        "Traceback" not in refused.stderr
    done = run_module(*evaluate, "--decode_errors=replace")
    assert done.returncode == 0 and json.loads(done.stdout)["tokens"] > 0, done.stderr


def test_cpu_devices_split_the_host_into_a_data_parallel_mesh(tmp_path, cache_dir):
    result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=2",
                        "--config.train.steps=2", f"--config.data.cache_dir={cache_dir}")
    assert result.returncode == 0, result.stderr
    assert "mesh (data=2, fsdp=1, tensor=1) over 2 devices" in result.stdout, result.stdout
    assert "val loss" in result.stdout
    one_line_error(run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path), "--config.mesh.cpu_devices=-1"),
                   "config.mesh.cpu_devices must be >= 0")


def test_missing_empty_or_malformed_data_is_one_line(tmp_path, cache_dir):
    train = ("lm.train", "--config", TINY, "--workdir", str(tmp_path / "w"), f"--config.data.cache_dir={cache_dir}")
    missing = tmp_path / "missing.txt"
    one_line_error(run_module(*train, f"--config.data.path={missing}"), f"data path {missing} does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(run_module(*train, f"--config.data.path={empty}"), f"corpus {empty} is empty")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a row"}\n{"body": "a row without the text field"}\n')
    one_line_error(run_module(*train, f"--config.data.path={rows}"),
                   f"{rows} line 2 has no 'text' field (config.data.text_key)")
    not_a_model = tmp_path / "tokenizer.model"
    not_a_model.write_text("not a SentencePiece model")
    one_line_error(run_module(*train, f"--config.tokenizer.path={not_a_model}"),
                   f"tokenizer {not_a_model} is not a SentencePiece model file; set config.tokenizer.path to a .model "
                   "file written by SentencePiece")


def test_train_on_a_folder_of_text_and_on_jsonl_building_each_dataset_once(tmp_path, capsys):
    cache = tmp_path / "cache"
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"Text file {i}. " * 200 + "\n\n" + "Another document. " * 200)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"Row {i}: " + "words in a row. " * 20}) + "\n" for i in range(100)))

    def prepares(source) -> bool:  # opening the corpus as lm.train does
        cfg = load_config(TINY)
        cfg.data.update(path=str(source), cache_dir=str(cache))
        run = config_lib.build(cfg)
        corpus.open_data(run.data, corpus.fresh_tokenizer(run.data, run.tokenizer), 33)
        return "preparing" in capsys.readouterr().out

    for source, change in ((folder, lambda: (folder / "3.txt").write_text("A new file. " * 100)),
                           (rows, lambda: rows.write_text(rows.read_text() + '{"text": "One more row."}\n'))):
        result = run_module("lm.train", "--config", TINY, "--workdir", str(tmp_path / f"run-{source.name}"),
                            "--config.train.steps=2", f"--config.data.path={source}",
                            f"--config.data.cache_dir={cache}")
        assert result.returncode == 0 and "val loss" in result.stdout, result.stderr
        assert "preparing" in result.stdout  # prepared by the run
        assert not prepares(source)  # reused
        change()
        assert prepares(source)  # the source changed: prepared again
        assert not prepares(source)
    prepared = [p for p in os.listdir(cache) if p != "tokenizers"]
    assert len(prepared) == 4 and len(os.listdir(cache / "tokenizers")) == 4  # each version its own tokenizer


def test_prompt_longer_than_the_context_is_one_line(tiny_run):
    workdir, _ = tiny_run
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--prompt", "x" * 100), "context is 32")


def test_prompts_and_stop_strings_that_are_not_utf8_are_one_line(tiny_run, tmp_path):
    """A byte that is not UTF-8 in a --prompt or --stop argument (Python hands it over as a lone surrogate), a
    binary --prompt_file, or a JSON prompt escaping a lone surrogate: one line naming where, then the fixed
    command samples."""
    workdir, _ = tiny_run
    sample = lambda *a: run_module("lm.sample", "--workdir", workdir, "--max_new_tokens", "4", *a)  # noqa: E731
    one_line_error(sample("--prompt", "ROMEO\udcff:"), "--prompt holds a byte that is not UTF-8 (0xff at character 6)")
    one_line_error(sample("--prompt", "ROMEO:", "--stop", "\udce9t\udce9"),
                   "--stop holds a byte that is not UTF-8 (0xe9 at character 1)")
    binary = tmp_path / "prompts.png"
    binary.write_bytes(b"KING:\n\x89PNG\r\n\x1a\n\x00\x00")
    one_line_error(sample("--prompt_file", str(binary)), f"{binary} line 2 is not UTF-8 text (byte 0x89 at byte 1)")
    escaped = tmp_path / "prompts.jsonl"
    escaped.write_text('{"prompt": "KING\\ud800"}\n')
    one_line_error(sample("--prompt_file", str(escaped)),
                   f"{escaped} line 1 holds a lone surrogate (U+D800 at character 5)")
    fixed = sample("--prompt", "ROMEO:", "--stop", "été")
    assert fixed.returncode == 0 and fixed.stdout.count("ROMEO:") == 1, fixed.stderr


def test_sampling_from_a_workdir_is_the_same_for_the_same_seed(tiny_run):
    workdir, _ = tiny_run
    args = ("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--max_new_tokens", "60", "--num_samples", "3",
            "--seed", "0", "--temperature", "1.0", "--top_k", "0")
    first, second = run_module(*args), run_module(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    samples = first.stdout.split("--- sample")[1:]
    assert len(samples) == 3 and len(set(samples)) == 3


def test_sample_batches_prompts_from_flags_and_a_jsonl_file(tiny_run, tmp_path):
    workdir, _ = tiny_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "KING:"}\n\nplain line\n')
    result = run_module("lm.sample", "--workdir", workdir, "--prompt", "ROMEO:", "--prompt", "JULIET:", "--prompt_file",
                        str(prompts), "--num_samples", "2", "--max_new_tokens", "10", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in ("ROMEO:", "JULIET:", "KING:", "plain line") for _ in (0, 1)]
    assert all(r["stop_reason"] in ("eos", "length") and 0 <= r["tokens"] <= 10 for r in rows)
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--top_p", "1.5"), "0 < top_p <= 1")
    one_line_error(run_module("lm.sample", "--workdir", workdir, "--temperature", "-1"), "temperature >= 0")
    one_line_error(run_module("lm.sample", "--workdir", str(tmp_path)), "holds no checkpoints")


def test_sample_split_over_devices_or_from_int8_weights(wide_run):
    args = ("lm.sample", "--workdir", wide_run, "--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "30",
            "--temperature", "0", "--format", "jsonl")
    one, split = run_module(*args), run_module(*args, "--tensor", "2")
    int8, int8_split = (run_module(*args, "--quantize", "int8_dynamic", *more) for more in ((), ("--tensor", "2")))
    for result in (one, split, int8, int8_split):
        assert result.returncode == 0, result.stderr
    assert split.stdout == one.stdout  # two devices, the same greedy text
    assert int8_split.stdout == int8.stdout  # int8 matmuls sum exactly in int32, split or not
    assert int8.stdout != one.stdout  # (so the two equalities above are not those of one text)
    assert [json.loads(line)["prompt"] for line in int8.stdout.strip().splitlines()] == ["ROMEO:", "KING:"]
    one_line_error(run_module(*args, "--tensor", "3"), "is not divisible by mesh")


def _generated(workdir, step, fmt, **kw):
    """`generate()` in this process on the weights of checkpoint `step` in format `fmt`."""
    ckpt, step, c, tok, _ = reader.open_run(workdir, step)
    layout = shd.tensor_layout(1)
    params = formats.convert(ckpt.params(step, placement.abstract_params(select.model(c), layout)), fmt)
    return generate(params, c, tok, ["ROMEO:", "KING:"], temperature=0.0, **kw)


def test_sample_reads_the_step_weight_format_and_stop_strings_it_is_given(wide_run):
    """`--step 1 --quantize int8` gives the greedy text of checkpoint 1's weights in int8, and `--quantize bfloat16
    --stop S` that of checkpoint 2's in bfloat16 cut before S; each differs from what the other settings give."""
    args = ("lm.sample", "--workdir", wide_run, "--prompt", "ROMEO:", "--prompt", "KING:", "--max_new_tokens", "40",
            "--temperature", "0", "--format", "jsonl")
    int8 = run_module(*args, "--step", "1", "--quantize", "int8")
    assert int8.returncode == 0, int8.stderr
    want = _generated(wide_run, 1, "int8", max_new_tokens=40)
    assert [json.loads(line) for line in int8.stdout.strip().splitlines()] == want
    for other in (_generated(wide_run, 2, "int8", max_new_tokens=40), _generated(wide_run, 1, "none",
                                                                                max_new_tokens=40)):
        assert [r["sample"] for r in other] != [r["sample"] for r in want]

    free = _generated(wide_run, None, "bfloat16", max_new_tokens=40)
    assert [r["sample"] for r in free] != [r["sample"] for r in _generated(wide_run, None, "none", max_new_tokens=40)]
    stop = free[0]["sample"][10:12]  # a string the first sample meets after at least 10 characters
    cut = run_module(*args, "--quantize", "bfloat16", "--stop", stop)
    assert cut.returncode == 0, cut.stderr
    first = json.loads(cut.stdout.splitlines()[0])
    k = free[0]["sample"].index(stop)
    assert first["sample"] == free[0]["sample"][:k] and first["stop_reason"] == "stop", (first, stop)


def test_bench_prints_its_figures_and_profile():
    result = run_module("lm.bench", "--config", TINY, "--repeats", "1", "--depths", "1,2", "--profile")
    assert result.returncode == 0, result.stderr
    for figure in ("tokens/s", "MFU", "float32 matmul, measured once on this machine", "where the step's time goes",
                   "ratio"):
        assert figure in result.stdout, result.stdout
    shares = re.findall(r"^  (.+?)\s+([\d.]+)%  \(forward", result.stdout, re.M)
    parts = {part for part, _ in shares}
    assert {"MLP matmuls", "attention projections", "loss, optimizer update and the rest"} <= parts, result.stdout
    assert abs(sum(float(share) for _, share in shares) - 100) < 1, result.stdout


def test_bench_times_the_training_batches_against_the_train_step(cache_dir):
    result = run_module("lm.bench", "--config", TINY, "--data", "--repeats", "1",
                        f"--config.data.cache_dir={cache_dir}", "--config.tokenizer.sample_chars=200000")
    assert result.returncode == 0, result.stderr
    batches = re.search(r"^  batches +([\d,]+) tokens/s \(([\d,.]+) batches/s\)", result.stdout, re.M)
    step = re.search(r"^  train step \(1 cpu device\(s\)\) +([\d,]+) tokens/s", result.stdout, re.M)
    ratio = re.search(r"ratio batches / train step: ([\d.]+)x", result.stdout)
    assert batches and step and ratio, result.stdout
    rows = float(batches.group(1).replace(",", "")) / float(batches.group(2).replace(",", ""))
    assert abs(rows - 8 * 32) < 1, result.stdout  # tiny.py: a batch trains on 8 rows of context 32
    want = float(batches.group(1).replace(",", "")) / float(step.group(1).replace(",", ""))
    assert abs(float(ratio.group(1)) - want) <= 0.05 + 0.01 * want, result.stdout


def test_bench_times_task_scoring_batched_and_one_example_at_a_time(cache_dir):
    tasks = os.path.join(ROOT, "tests", "fixtures", "tasks", "pairs.jsonl")
    result = run_module("lm.bench", "--config", TINY, "--tasks", tasks, "--task_examples", "12",
                        f"--config.data.cache_dir={cache_dir}", "--config.model.max_len=96")
    assert result.returncode == 0, result.stderr
    assert "scoring 12 examples (24 requests) of 1 task(s):" in result.stdout, result.stdout
    batched = re.search(r"batched, packed into 8 rows of 97 tokens +([\d,.]+) examples/s", result.stdout)
    single = re.search(r"one example at a time \(2 rows\) +([\d,.]+) examples/s", result.stdout)
    ratio = re.search(r"ratio batched / one at a time: ([\d.]+)x", result.stdout)
    assert batched and single and ratio, result.stdout
    want = float(batched.group(1).replace(",", "")) / float(single.group(1).replace(",", ""))
    assert abs(float(ratio.group(1)) - want) <= 0.05 + 0.01 * want, result.stdout


def test_bench_times_decoding_per_weight_format():
    result = run_module("lm.bench", "--config", TINY, "--decode", "--decode_batches", "2", "--new_tokens", "8",
                        "--repeats", "1", "--decode_tensor", "2")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^  batch +(\d+) lm (\w+) +([\d.]+) tokens/s .* ([\d.]+)% of the bandwidth bound", result.stdout,
                      re.M)
    want = [("2", f) for f in ("none", "bfloat16", "int8", "int8_dynamic")]
    assert [(b, f) for b, f, _, _ in rows] == want, result.stdout
    assert all(float(t) > 0 and float(p) > 0 for _, _, t, p in rows)
    assert "of greedy tokens equal" in result.stdout and "copy bandwidth" in result.stdout
    assert "lm's model over 2 device(s)" in result.stdout


def test_decode_bench_counts_the_weight_bytes_by_hand_and_decodes_the_tokens_asked():
    """A GPT-2 style model (2 layers, width 16, 2 heads, MLP 32, 64 ids, context 32, tied head): the bytes one
    decode step reads (the bandwidth bound's numerator), counted here from the shapes (the position table, read
    one row a step, left out), per weight format; the timed decoder gives batch x new_tokens tokens."""
    c = ModelConfig(vocab_size=64, max_len=32, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)
    params = jax.jit(lambda: nn.unbox(boxed_params(select.model(c), 0)))()
    layer = 2 * 16 + 3 * (16 * 16 + 16) + (16 * 16 + 16) + 2 * 16 + (16 * 32 + 32) + (32 * 16 + 16)  # floats
    floats = 2 * layer + 64 * 16 + 2 * 16  # layers, token table (the tied head), final norm: 5504
    # int8: each matrix 1 byte a weight and a float32 scale per output channel (per row for the table); norms and
    # biases stay float32.
    int8_layer = 4 * 2 * 16 + 3 * (256 + 4 * 16 + 4 * 16) + (256 + 4 * 16 + 4 * 16) + 4 * 2 * 16 + \
        (512 + 4 * 32 + 4 * 32) + (512 + 4 * 16 + 4 * 16)
    want = {"none": 4 * floats, "bfloat16": 2 * floats, "int8": 2 * int8_layer + 64 * 16 + 4 * 64 + 4 * 2 * 16,
            "int8_dynamic": 2 * int8_layer + 64 * 16 + 4 * 64 + 4 * 2 * 16}
    got = {f: decode.weight_bytes_per_token(c, formats.convert(params, f)) for f in want}
    assert got == want
    assert np.asarray(decode.lm_decoder(c, params, 3, 4, 6)()).shape == (3, 6)  # batch 3, 6 new tokens


def test_commands_keep_compiled_programs_in_the_cache_under_home_and_a_second_run_reads_them(tmp_path, cache_dir):
    """With JAX_COMPILATION_CACHE_DIR unset, a first run writes its programs to ~/.cache/lm/jax; a second run of
    the same config, in a fresh workdir, finds every one there and adds none."""
    import subprocess
    import sys

    from conftest import ROOT, USER_ENV

    env = {k: v for k, v in USER_ENV.items() if not k.startswith("JAX_PERSISTENT") and k != "JAX_COMPILATION_CACHE_DIR"}
    env["HOME"] = str(tmp_path / "home")
    cache = tmp_path / "home" / ".cache" / "lm" / "jax"

    def train(name):
        done = subprocess.run([sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(tmp_path / name),
                               f"--config.data.cache_dir={cache_dir}", "--config.train.steps=10"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return sorted(os.listdir(cache))

    first = train("a")
    assert len([f for f in first if f.startswith("jit_train_step")]) == 1, first
    assert train("b") == first

def test_resuming_with_a_longer_run_says_the_learning_rate_jumps_and_points_to_wsd(tiny_run, cache_dir, tmp_path):
    """configs/tiny.py: lr 3e-3 after 2 warmup steps, cosine to 3e-4 at the last step. Its 20-step run ends at 3e-4;
    resumed to 40 steps, the cosine spans 40: the rate after step 20 is 3e-4 + 2.7e-3 * (1 + cos(pi * 18 / 38)) / 2."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir)
    longer = subprocess.run(train_command(workdir, cache_dir, "--config.train.steps=40"), capture_output=True,
                            text=True)
    assert longer.returncode == 0, longer.stderr
    now = 3e-4 + 2.7e-3 * (1 + math.cos(math.pi * 18 / 38)) / 2
    warning = (f"warning: the learning-rate schedule changed since checkpoint 20 (config.train.steps 20 -> 40): the "
               f"next step's rate is {now:.3g}, not 0.0003; a warmup-stable-decay schedule "
               "(--config.optim.schedule=wsd) continues a run to more steps without such a jump")
    assert warning in longer.stderr.splitlines()
    same = subprocess.run(train_command(workdir, cache_dir, "--config.train.steps=40"), capture_output=True,
                          text=True)
    assert same.returncode == 0 and "learning-rate schedule changed" not in same.stderr

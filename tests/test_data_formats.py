"""Every data format and `config.data` key the docs name, each read as documented: vocabularies past 65,536 ids
(uint32 shards and token files), globs, `.json.gz`, `config.data.format`, a gzip file cut short, a prepared
folder's tokenizer, mixtures (a malformed one, a corpus dropped on resume), token files without a validation
file, and the keys no other test holds to their meaning (separator, cache_dir, workers, token_dtype)."""

import gzip
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, TINY, USER_ENV, prepared_documents
from conftest import data_config as data

from lm import config as config_lib
from lm.data import corpus, prepare, sources
from lm.data.batches import TrainBatches
from lm.data.shards import Split
from lm.errors import UserError
from lm.tokenizer.config import TokenizerConfig
from lm.train.loop import train

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")
TEXT = open(sources.bundled_corpus(), encoding="utf-8").read()
ROWS = [f"row {'i' * (i + 1)}: " + "to be or not to be " * (1 + i % 3) for i in range(10)]  # 9 train, 1 validation


def tokenizer_config(path: str = "") -> TokenizerConfig:
    """config.tokenizer: the default character tokenizer trained on the corpus, or the one at `path`."""
    return TokenizerConfig(type="char", sample_chars=0, path=path)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory, cache_dir):
    """Llama 3's real tokenizer (128,256 ids; tests/fixtures/tokenizers/llama3) as a Hugging Face folder, as a
    run declares it with config.tokenizer.path, and the ids `transformers`' own tokenizer gave for its texts
    (expected.json, made by make_family_fixtures.py): (folder, tokenizer, expected)."""
    folder = tmp_path_factory.mktemp("llama3")
    with gzip.open(os.path.join(FIXTURES, "llama3", "tokenizer.json.gz"), "rb") as f:
        (folder / "tokenizer.json").write_bytes(f.read())
    shutil.copy(os.path.join(FIXTURES, "llama3", "tokenizer_config.json"), folder)
    with open(os.path.join(FIXTURES, "llama3", "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    return str(folder), corpus.fresh_tokenizer(data(cache_dir), tokenizer_config(str(folder))), expected


def documents(d, split: str, tok=None) -> list[str]:
    return prepared_documents(d, split, tok or corpus.fresh_tokenizer(d, tokenizer_config()))


def write_jsonl(path, texts, opener=open, sep="\n") -> None:
    with opener(path, "wt") as f:
        f.write("".join(json.dumps({"text": t}) + sep for t in texts))


def write_parquet(path, texts) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts}), path)


def test_a_vocabulary_past_65536_ids_is_prepared_as_uint32_shards_holding_every_id_exactly(llama3, tmp_path,
                                                                                          cache_dir):
    """Llama 3's real tokenizer (128,256 ids): the shards are uint32 and hold, for each document, BOS and the ids
    `transformers` gave for the text, then EOS."""
    _, tok, expected = llama3
    texts = [t for t in expected["texts"] if t]
    ids = [i for t, i in zip(expected["texts"], expected["ids"], strict=True) if t]
    assert len(texts) == 9 and max(max(i) for i in ids) > 65535  # ids a uint16 cannot hold
    write_jsonl(tmp_path / "rows.jsonl", texts)
    d = data(cache_dir, path=str(tmp_path / "rows.jsonl"))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    bos, eos = expected["bos_id"], expected["eos_id"]
    for split, docs in (("train", ids[:8]), ("validation", ids[8:])):  # the last 10% of the rows: 1 of 9
        (piece,) = pieces[split]
        on_disk = np.load(piece.path)
        assert on_disk.dtype == np.uint32, on_disk.dtype
        np.testing.assert_array_equal(on_disk, [t for doc in docs for t in [bos, *doc, eos]])
    manifest = json.loads(open(os.path.join(os.path.dirname(pieces["train"][0].path), "..", prepare.MANIFEST)).read())
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["vocab_size"] == 128_256


def test_token_files_of_a_vocabulary_past_65536_ids_are_read_as_uint32(llama3, tmp_path, cache_dir):
    """nanoGPT-style train.bin and val.bin written as uint32 (Llama 3's ids), declared by config.data.path and
    the tokenizer's folder in config.tokenizer.path: read back id for id, documents ending at its EOS."""
    folder, _, expected = llama3
    eos = expected["eos_id"]
    stream = np.array([t for ids in expected["ids"] if ids for t in [*ids, eos]], np.uint32)
    assert stream.max() > 65535
    bins = tmp_path / "bins"
    bins.mkdir()
    stream.tofile(bins / "train.bin")
    stream[:50].tofile(bins / "val.bin")
    d = data(cache_dir, path=str(bins))
    with pytest.raises(UserError, match=r"^token files \(\.bin\) need the tokenizer they were made with"):
        corpus.fresh_tokenizer(d, tokenizer_config())
    tok = corpus.fresh_tokenizer(d, tokenizer_config(folder))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    train_rows = Split(pieces["train"], len(stream), whole=True)
    assert train_rows.count == 1
    row = train_rows.rows([0])
    np.testing.assert_array_equal(row["tokens"][0], stream)
    np.testing.assert_array_equal(row["segment_ids"][0], 1 + np.cumsum(np.r_[False, stream[:-1] == eos]))
    val = Split(pieces["validation"], 50, whole=False)
    assert val.tokens == 50
    np.testing.assert_array_equal(val.rows([0])["tokens"][0], stream[:50])


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_config_data_token_dtype_overrides_what_the_vocabulary_implies(dtype, llama3, tmp_path, cache_dir):
    """uint16 files with Llama 3's 128,256 ids (auto would read uint32), uint32 files with a character
    tokenizer (auto would read uint16): each read as config.data.token_dtype says."""
    ids = np.array([5, 6, 7, 8, 9, 10, 11, 12] * 8, np.int64)
    if dtype == "uint16":
        tok = llama3[1]
        assert prepare.token_dtype(tok.vocab_size) == np.uint32
    else:
        tok = corpus.fresh_tokenizer(data(cache_dir), tokenizer_config())
        assert prepare.token_dtype(tok.vocab_size) == np.uint16
    ids.astype(dtype).tofile(tmp_path / "train.bin")
    ids[:16].astype(dtype).tofile(tmp_path / "val.bin")
    d = data(cache_dir, path=str(tmp_path), token_dtype=dtype)
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert Split(pieces["train"], 8, whole=True).count == 8
    np.testing.assert_array_equal(Split(pieces["train"], 64, whole=True).rows([0])["tokens"][0], ids)


def test_token_files_without_a_val_file_hold_out_the_last_tenth_of_their_tokens(tmp_path, cache_dir):
    """No file named *val*: the last 10% of the tokens are validation (config.data.validation_fraction), of one
    file or of a folder of several, in file order."""
    tok = corpus.fresh_tokenizer(data(cache_dir), tokenizer_config())
    ids = np.arange(5, 205, dtype=np.uint16) % 60 + 5  # 200 tokens
    ids.tofile(tmp_path / "one.bin")
    d = data(cache_dir, path=str(tmp_path / "one.bin"))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert [(p.start, p.end) for p in pieces["train"]] == [(0, 180)]
    assert [(p.start, p.end) for p in pieces["validation"]] == [(180, 200)]
    np.testing.assert_array_equal(Split(pieces["validation"], 20, whole=False).rows([0])["tokens"][0], ids[180:])
    d = data(cache_dir, path=str(tmp_path / "one.bin"), validation_fraction=0.25)
    assert corpus.open_splits(corpus.resolve(d)[0], tok, d)["validation"][0].start == 150
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(4):  # 4 files of 50 tokens: the last 20 tokens of all 200 are the last file's last 20
        ids[50 * i:50 * (i + 1)].tofile(folder / f"shard{i}.bin")
    d = data(cache_dir, path=str(folder))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert sum(p.end - p.start for p in pieces["train"]) == 180
    assert sum(p.end - p.start for p in pieces["validation"]) == 20
    ids[:100].tofile(folder / "shard2.bin")  # files of 50, 50, 100 and 50 tokens: 40% of them is 100 tokens,
    ids[100:150].tofile(folder / "shard3.bin")  # the last file's 50 and the 50 before them
    d = data(cache_dir, path=str(folder), validation_fraction=0.4)
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert [(os.path.basename(p.path), p.start, p.end) for p in pieces["validation"]] == [("shard2.bin", 50, 100),
                                                                                          ("shard3.bin", 0, 50)]
    assert [(os.path.basename(p.path), p.start, p.end) for p in pieces["train"]] == [
        ("shard0.bin", 0, 50), ("shard1.bin", 0, 50), ("shard2.bin", 0, 50)]
    np.testing.assert_array_equal(Split(pieces["validation"], 50, whole=False).rows([0, 1])["tokens"].ravel(),
                                  ids[50:150])


def test_the_readmes_glob_reads_exactly_the_files_it_matches(tmp_path, cache_dir, monkeypatch):
    """`--config.data.path='corpus/*.parquet'` (relative, as in the README): the folder's .parquet files in name
    order, and neither its other files nor a subfolder's."""
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    write_parquet(tmp_path / "corpus" / "b.parquet", ROWS)
    write_parquet(tmp_path / "corpus" / "a.parquet", [t.upper() for t in ROWS])
    write_parquet(tmp_path / "corpus" / "sub" / "c.parquet", ["in a subfolder"] * 10)
    write_jsonl(tmp_path / "corpus" / "d.jsonl", ["another format"] * 10)
    write_parquet(tmp_path / "corpus" / "e.parquet.old", ["another ending"] * 10)
    monkeypatch.chdir(tmp_path)
    d = data(cache_dir, path="corpus/*.parquet")
    (c,) = corpus.resolve(d)
    assert list(c.source.files) == ["corpus/a.parquet", "corpus/b.parquet"]
    assert documents(d, "train") == [t.upper() for t in ROWS[:9]] + ROWS[:9]
    assert documents(d, "validation") == [ROWS[9].upper(), ROWS[9]]


def test_json_gz_rows_are_documents_as_jsonl_gz_rows_are(tmp_path, cache_dir):
    write_jsonl(tmp_path / "rows.json.gz", ROWS, opener=gzip.open)
    for path in (tmp_path / "rows.json.gz", tmp_path):  # the file, and a folder of it
        d = data(cache_dir, path=str(path))
        assert documents(d, "train") == ROWS[:9] and documents(d, "validation") == ROWS[9:], path


@pytest.mark.parametrize(("name", "fmt"), [("rows.txt", "jsonl"), ("rows.data", "jsonl.gz"), ("rows.pq", "parquet"),
                                           ("rows.jsonl", "text")])
def test_config_data_format_reads_a_file_as_it_says_whatever_its_name(name, fmt, tmp_path, cache_dir):
    """A file read in the format config.data.format names, not the one its name implies (.txt and unknown
    endings are text; .jsonl is JSONL)."""
    path = tmp_path / name
    lines = [json.dumps({"text": t}) for t in ROWS]
    if fmt == "jsonl.gz":
        write_jsonl(path, ROWS, opener=gzip.open)
    elif fmt == "parquet":
        write_parquet(path, ROWS)
    else:
        path.write_text("\n\n".join(lines))  # JSONL rows, blank lines between: documents of text either way
    d = data(cache_dir, path=str(path), format=fmt)
    if fmt == "text":  # the rows' JSON, whole, as text documents: the last 10% of the characters held out
        whole = "\n\n".join(lines)
        cut = int(len(whole) * 0.9)
        assert documents(d, "train") == [x for x in whole[:cut].split("\n\n") if x]
        assert documents(d, "validation") == [x for x in whole[cut:].split("\n\n") if x]
        assert documents(d, "train")[0] == lines[0]
    else:
        assert documents(d, "train") == ROWS[:9] and documents(d, "validation") == ROWS[9:]


def test_a_gzip_file_cut_short_or_not_gzip_is_one_line_naming_it(tmp_path, cache_dir):
    rows = [f"row {i} " + TEXT[i * 97:i * 97 + 200] for i in range(2000)]
    write_jsonl(tmp_path / "whole.jsonl.gz", rows, opener=gzip.open)
    whole = (tmp_path / "whole.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "plain.json.gz").write_text(json.dumps({"text": "not compressed"}) + "\n")
    for name, why in (("cut.jsonl.gz", "Compressed file ended before the end-of-stream marker was reached"),
                      ("plain.json.gz", "Not a gzipped file")):
        d = data(cache_dir, path=str(tmp_path / name))
        for read in (lambda: corpus.fresh_tokenizer(d, tokenizer_config()),  # a tokenizer trained on it
                     lambda: documents(d, "train", corpus.fresh_tokenizer(data(cache_dir), tokenizer_config()))):
            with pytest.raises(UserError) as e:
                read()
            assert str(e.value).startswith(f"{tmp_path / name} is not a whole gzip file ({why}")
            assert str(e.value).endswith("; download it again or remove it") and "\n" not in str(e.value)


def test_a_fresh_run_on_an_lm_prepare_folder_takes_its_tokenizer(tmp_path, cache_dir):
    """The README's two data commands: `lm.prepare` of a Parquet glob with a BPE tokenizer into a folder, then a
    run on that folder with the config's default (character) tokenizer setting: the run's tokenizer is the
    folder's BPE, its model's vocabulary the BPE's 500 ids."""
    (tmp_path / "corpus").mkdir()
    for i in range(2):
        write_parquet(tmp_path / "corpus" / f"{i}.parquet", TEXT[i * 60_000:(i + 1) * 60_000].split("\n\n"))
    write_jsonl(tmp_path / "corpus" / "other.jsonl", ["not matched by the glob"])
    out = tmp_path / "prepared"
    result = subprocess.run([sys.executable, "-m", "lm.prepare", "--config", TINY,
                             "--config.data.path=corpus/*.parquet", "--config.tokenizer.type=bpe",
                             "--config.tokenizer.vocab_size=500", f"--config.data.cache_dir={cache_dir}", "--out",
                             str(out)], cwd=tmp_path, env={**USER_ENV, "PYTHONPATH": ROOT}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / prepare.MANIFEST).read_text())
    assert [f[0] for f in manifest["source"]["files"]] == [str(tmp_path / "corpus" / f"{i}.parquet") for i in (0, 1)]
    assert manifest["tokenizer"]["vocab_size"] == 500
    prepared = json.loads((out / "tokenizer.json").read_text())
    cfg = config_lib.defaults()
    cfg.model.update(num_layers=1, num_heads=2, embed_dim=16, max_len=16)
    cfg.train.update(batch_size=8, steps=1, eval_batches=1)
    cfg.data.update(path=str(out), cache_dir=str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    train(cfg, str(workdir), devices=jax.devices()[:1])  # the data, not the mesh, is under test
    assert json.loads((workdir / "tokenizer.json").read_text()) == prepared
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 1
    assert not (tmp_path / "cache").exists()  # nothing prepared again, no tokenizer trained
    from lm.checkpoint import reader

    _, step, model_config, tok, _ = reader.open_run(str(workdir))
    assert step == 1 and model_config.vocab_size == 500 and tok.to_json() == prepared


def test_a_malformed_mixture_is_one_line_naming_the_item(cache_dir):
    for text, item in (("a/:0.7,b/", "b/"), ("a/:0.7,b/:x", "b/:x"), ("a/:0.7, b/:0", "b/:0"), (":0.5", ":0.5"),
                       ("a/:0.7,,b/:0.3", ""), ("a/:nan", "a/:nan"), ("a/:inf,b/:1", "a/:inf")):
        with pytest.raises(UserError) as e:
            corpus.resolve(data(cache_dir, mixture=text))
        assert str(e.value) == (f"config.data.mixture item {item!r} is not PATH:WEIGHT with a weight > 0; write e.g. "
                                "--config.data.mixture=web/:0.8,code/:0.2"), text
    assert corpus.mixture("web/:0.7, c:/code/*.parquet:0.3") == [("web/", 0.7), ("c:/code/*.parquet", 0.3)]


def letters(tmp_path, names: str) -> dict[str, str]:
    """{letter: path} of a text file per letter: 200 documents of that letter alone."""
    out = {}
    for ch in names:
        (tmp_path / f"{ch}.txt").write_text("\n\n".join(ch * 30 for _ in range(200)))
        out[ch] = str(tmp_path / f"{ch}.txt")
    return out


def test_a_mixture_reads_each_corpus_by_its_weight(tmp_path, cache_dir):
    """config.data.mixture: both corpora, each with its weight and each its own training rows."""
    paths = letters(tmp_path, "ab")
    d = data(cache_dir, mixture=f"{paths['a']}:3,{paths['b']}:1")
    tok = corpus.fresh_tokenizer(d, tokenizer_config())
    components, validation, _ = corpus.open_data(d, tok, 17)
    assert [(c.name, c.weight) for c in components] == [(paths["a"], 3.0), (paths["b"], 1.0)]
    assert len(validation) == 2
    batch = next(TrainBatches(components, 400, seed=0))["tokens"]
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    from_a = np.sum(np.any(batch == a, axis=1))
    assert np.sum(np.any(batch == b, axis=1)) + from_a == 400
    assert 0.68 < from_a / 400 < 0.82  # 3/4 (about four standard deviations: 0.022 each)


def test_a_corpus_dropped_from_the_mixture_on_resume_is_named_in_a_warning(tmp_path, cache_dir, capsys):
    """The other corpora go on from their own positions; the one no longer named is left with one warning."""
    paths = letters(tmp_path, "abc")
    d = data(cache_dir, mixture=",".join(f"{p}:1" for p in paths.values()))
    tok = corpus.fresh_tokenizer(d, tokenizer_config())
    it = TrainBatches(corpus.open_data(d, tok, 17)[0], 12, seed=0)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert sum(state["rows"].values()) == 36 and all(state["rows"].values())
    d = data(cache_dir, mixture=f"{paths['a']}:1,{paths['c']}:1")
    resumed = TrainBatches(corpus.open_data(d, tok, 17)[0], 12, seed=0)
    capsys.readouterr()
    resumed.set_state(state)
    assert capsys.readouterr().err == (f"warning: the checkpoint's data mixture has {paths['b']}, which this run's "
                                       "does not; going on without it\n")
    rows = state["rows"]
    assert resumed.get_state() == {"format": 2, "batches": 3, "rows": {paths["a"]: rows[paths["a"]],
                                                                       paths["c"]: rows[paths["c"]]}}


def test_text_is_cut_into_documents_at_config_data_separator(tmp_path, cache_dir):
    docs = [f"document {i}\n\nwith a blank line inside" for i in range(10)]
    (tmp_path / "c.txt").write_text("<|sep|>".join(docs))
    d = data(cache_dir, path=str(tmp_path / "c.txt"), separator="<|sep|>", validation_fraction=0.05)
    train_docs = documents(d, "train")
    assert train_docs[:9] == docs[:9] and len(train_docs) == 10  # the last document cut by the split


def test_prepared_data_and_trained_tokenizers_go_under_config_data_cache_dir(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT[:20_000])
    d = data(tmp_path / "cache", path=str(tmp_path / "c.txt"))
    tok = corpus.fresh_tokenizer(d, tokenizer_config())
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert os.listdir(tmp_path / "cache" / "tokenizers") and pieces["train"][0].path.startswith(
        str(tmp_path / "cache" / "c-"))


def test_config_data_workers_sets_the_preparing_processes(tmp_path, cache_dir, capsys, monkeypatch):
    """Several tasks (parts of 4 kB), one worker as config.data.workers says, not one per core."""
    monkeypatch.setattr(sources, "UNIT_BYTES", 4096)
    (tmp_path / "c.txt").write_text(TEXT[:20_000])
    d = data(cache_dir, path=str(tmp_path / "c.txt"), workers=1)
    tok = corpus.fresh_tokenizer(d, tokenizer_config())
    corpus.open_splits(corpus.resolve(d)[0], tok, d)
    assert ": 5 of 5 tasks to do, 1 process(es)" in capsys.readouterr().out


def test_a_bad_file_met_while_the_tokenizer_trains_is_named_not_buried_in_sentencepieces_error(tmp_path,
                                                                                               cache_dir):
    """A corpus whose second file has a byte that is not UTF-8, a row that is not JSON, or is a gzip file cut
    short: the tokenizer trains on the text as it is read (the first file is past the 1 MiB an emptiness check
    reads), and the line names the file and where, not 'tokenizer training failed: ...documents.py...'. Mended,
    the same command trains."""
    whole = gzip.compress(("\n".join(json.dumps({"text": r}) for r in ROWS * 50) + "\n").encode())
    latin = b"fine text\n\nthen caf\xe9 au lait\n"
    cases = {"b.txt": (latin, f"b.txt is not UTF-8 text: byte {latin.index(0xE9)} (0xe9) cannot be decoded"),
             "b.jsonl": (b'{"text": "a row"}\n{"text": "cut\n', "b.jsonl line 2"),
             "b.jsonl.gz": (whole[:len(whole) // 2], "b.jsonl.gz is not a whole gzip file")}
    for name, (content, expected) in cases.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / "a.txt").write_text(TEXT)
        (folder / name).write_bytes(content)
        command = [sys.executable, "-m", "lm.train", "--config", TINY, "--workdir", str(tmp_path / f"run_{name}"),
                   f"--config.data.path={folder}", f"--config.data.cache_dir={cache_dir}", "--config.train.steps=2",
                   "--config.train.eval_every=1000"]
        failed = subprocess.run(command, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
        assert failed.returncode == 2 and len(failed.stderr.splitlines()) == 1, failed.stderr
        assert failed.stderr.startswith(f"error: {folder}/") and expected in failed.stderr, failed.stderr
    (folder / name).write_bytes(whole)  # the gzip file whole again
    mended = subprocess.run(command, cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert mended.returncode == 0, mended.stderr

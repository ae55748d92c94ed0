"""The data pipeline: sources, the split, preparation into token shards, packed rows, sharding across processes,
mixtures and exact resume of the batches."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY, one_line_error, prepared_documents, run_module
from conftest import data_config as data

from lm.data import corpus, sources
from lm.data.batches import Component, TrainBatches, eval_batches
from lm.data.config import DataConfig
from lm.data.documents import SPLITS, split_documents
from lm.data.shards import Split
from lm.errors import UserError
from lm.tokenizer import sentencepiece
from lm.tokenizer.config import TokenizerConfig

SHAKESPEARE = sources.bundled_corpus()


def char_tokenizer(d: DataConfig):
    return corpus.fresh_tokenizer(d, TokenizerConfig(type="char", sample_chars=0))


def test_split_is_by_characters_and_keeps_all_text():
    text = "aaaa\n\nbbbb\n\ncccc\n\ndddd\n\neeee"
    docs = split_documents(text, "\n\n", 0.2)
    cut = int(len(text) * 0.8)
    assert "\n\n".join(docs["train"]) == text[:cut].rstrip("\n")
    assert "".join(docs["validation"]) == text[cut:].replace("\n\n", "")


@pytest.fixture(scope="module")
def shakespeare(cache_dir):
    """(config.data, char tokenizer, {split: [pieces]}) of the bundled corpus, prepared."""
    d = data(cache_dir)
    tok = char_tokenizer(d)
    return d, tok, corpus.open_splits(corpus.resolve(d)[0], tok, d)


def expected_stream(tok, split: str) -> np.ndarray:
    """The split's tokens as the prepared data must hold them, from the file itself: the first 90% of the
    characters (train) or the rest, cut at blank lines, each document as [BOS] text [EOS]."""
    text = open(SHAKESPEARE, encoding="utf-8").read()
    cut = int(len(text) * 0.9)
    part = text[:cut] if split == "train" else text[cut:]
    return np.array([t for doc in part.split("\n\n") if doc for t in [tok.bos_id, *tok.encode(doc), tok.eos_id]])


def test_prepared_tokens_are_the_documents_in_order(shakespeare):
    _, tok, pieces = shakespeare
    for split in SPLITS:
        (piece,) = pieces[split]
        np.testing.assert_array_equal(piece.tokens(), expected_stream(tok, split))


def test_batches_are_packed_rows_of_documents(shakespeare):
    _, tok, pieces = shakespeare
    stream = expected_stream(tok, "train")
    rows = Split(pieces["train"], 33, whole=True)
    assert rows.count == len(stream) // 33
    got = rows.rows([0, 5, rows.count - 1])
    for i, r in enumerate([0, 5, rows.count - 1]):
        tokens, segs, pos = (got[k][i] for k in ("tokens", "segment_ids", "positions"))
        np.testing.assert_array_equal(tokens, stream[r * 33:(r + 1) * 33])  # rows are cut from the stream
        starts = np.flatnonzero(tokens == tok.bos_id)
        expected_segs = 1 + np.searchsorted(starts[starts > 0], np.arange(33), "right")
        np.testing.assert_array_equal(segs, expected_segs)
        first = np.maximum.accumulate(np.where(np.isin(np.arange(33), starts), np.arange(33), 0))
        np.testing.assert_array_equal(pos, np.arange(33) - first)
    np.testing.assert_array_equal(got["loss_mask"], got["tokens"] != tok.bos_id)  # every target but BOS
    batch = next(TrainBatches([Component("s", 1.0, rows)], 4, seed=0))
    assert {k: v.shape for k, v in batch.items()} == {k: (4, 33) for k in ("tokens", "segment_ids", "positions",
                                                                          "loss_mask")}


def _batches(pieces, batch=4, seed=3, ahead=0, **kw) -> TrainBatches:
    return TrainBatches([Component("s", 1.0, Split(pieces["train"], 33, whole=True))], batch, seed,
                        ahead=ahead, **kw)


@pytest.mark.parametrize("ahead", [0, 3])
def test_iterator_state_resumes_exactly(shakespeare, ahead):
    _, _, pieces = shakespeare
    it = _batches(pieces, ahead=ahead)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as it travels in a checkpoint (the thread is ahead of it)
    assert state == {"format": 2, "batches": 5, "rows": {"s": 20}}
    expected = [next(it)["tokens"] for _ in range(3)]
    fresh = _batches(pieces, ahead=ahead)
    next(fresh)  # already running ahead when rewound
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)
    plain = _batches(pieces)
    for _ in range(5):
        next(plain)
    np.testing.assert_array_equal(next(plain)["tokens"], expected[0])  # the same batches as without a thread


def test_every_row_once_per_epoch_in_a_new_order(shakespeare):
    _, _, pieces = shakespeare
    rows = Split(pieces["train"], 257, whole=True)
    it = TrainBatches([Component("s", 1.0, rows)], 1, seed=0)
    seen = [next(it)["tokens"][0, :8].tobytes() for _ in range(2 * rows.count)]
    everything = {rows.rows([r])["tokens"][0, :8].tobytes() for r in range(rows.count)}
    assert set(seen[:rows.count]) == set(seen[rows.count:]) == everything
    assert seen[:rows.count] != seen[rows.count:]


def test_processes_read_their_rows_of_the_same_global_batches(shakespeare):
    """Any number of processes together read exactly the batches one process reads."""
    _, _, pieces = shakespeare
    it = _batches(pieces, batch=8)
    whole = [next(it)["tokens"] for _ in range(3)]
    for count in (2, 4):
        parts = [_batches(pieces, batch=8, process_index=i, process_count=count) for i in range(count)]
        for want in whole:
            got = [next(p)["tokens"] for p in parts]
            assert got[0].shape == (8 // count, 33)
            np.testing.assert_array_equal(np.concatenate(got), want)
    with pytest.raises(UserError, match="multiple of the process count"):
        _batches(pieces, batch=8, process_index=0, process_count=3)


def test_a_mixture_draws_by_weight_and_each_corpus_goes_on_through_its_rows_across_new_weights(shakespeare):
    _, _, pieces = shakespeare
    a = Component("a", 3.0, Split(pieces["train"], 33, whole=True))
    b = Component("b", 1.0, Split(pieces["validation"], 33, whole=True))  # other text: rows told apart
    b_rows = {b.rows.rows([r])["tokens"][0].tobytes() for r in range(b.rows.count)}
    alone = TrainBatches([b], 1, seed=1)  # b's rows in the order a mixture must take them

    def from_b(batch):
        return [row.tobytes() for row in batch["tokens"] if row.tobytes() in b_rows]

    it = TrainBatches([a, b], 16, seed=1)
    taken = [r for _ in range(40) for r in from_b(next(it))]
    state = it.get_state()
    assert state["batches"] == 40 and state["rows"]["b"] == len(taken) and sum(state["rows"].values()) == 640
    assert 0.19 < len(taken) / 640 < 0.31  # weight 1/4 (three standard deviations: 0.05)
    assert taken == [next(alone)["tokens"][0].tobytes() for _ in taken]
    c = Component("c", 2.0, Split(pieces["train"], 33, whole=True))
    resumed = TrainBatches([Component("a", 1.0, a.rows), Component("b", 3.0, b.rows), c], 16, seed=1)
    resumed.set_state(json.loads(json.dumps(state)))
    more = [r for _ in range(20) for r in from_b(next(resumed))]
    assert 0.35 < len(more) / 320 < 0.65  # the new weight, 1/2, from the next batch on
    assert more == [next(alone)["tokens"][0].tobytes() for _ in more]  # b goes on where it stopped
    after = resumed.get_state()["rows"]
    assert after["c"] > 0 and sum(after.values()) == 640 + 320  # c, new to the run, from its first row


def test_eval_batches_cover_the_split_once(shakespeare):
    _, tok, pieces = shakespeare
    split = Split(pieces["validation"], 65, whole=False)
    batches = list(eval_batches([split], 16))
    assert all(b["tokens"].shape == (16, 65) for b in batches)
    stream = expected_stream(tok, "validation")
    real = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
    np.testing.assert_array_equal(real, stream)  # every token once, in order; the rest is padding
    halves = [list(eval_batches([split], 16, process_index=i, process_count=2)) for i in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    np.testing.assert_array_equal(np.concatenate([halves[0][3]["tokens"], halves[1][3]["tokens"]]),
                                  batches[3]["tokens"])


def test_missing_and_empty_data_are_one_line_errors(tmp_path, cache_dir):
    with pytest.raises(UserError, match="does not exist"):
        corpus.resolve(data(cache_dir, path=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("")
    d = data(cache_dir, path=str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="is empty; point --config.data.path at more text"):
        corpus.open_splits(corpus.resolve(d)[0], sentencepiece.train(["abc"], "char", 256), d)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="holds no .txt, .jsonl, .jsonl.gz, .json.gz, .parquet files"):
        corpus.resolve(data(cache_dir, path=str(tmp_path / "folder")))
    with pytest.raises(UserError, match=r"matches no files; check the pattern"):
        corpus.resolve(data(cache_dir, path=str(tmp_path / "folder" / "*.jsonl")))


def documents(d: dict, split: str) -> list[str]:
    return prepared_documents(d, split, char_tokenizer(d))


def test_folder_of_files_is_one_corpus(tmp_path, cache_dir):
    """Every document of every .txt file under the folder (a subfolder's too; hidden and other files skipped),
    in file order, each file holding out its last quarter of characters for validation."""
    texts = [f"{name} {i}".ljust(20, ".") for i in range(6) for name in ("first", "second")]
    (tmp_path / "sub").mkdir()
    files = [tmp_path / "0.txt", tmp_path / "1.txt", tmp_path / "sub" / "2.txt"]
    for i, path in enumerate(files):  # four documents of 20 characters: the last quarter is the last document
        path.write_text("\n\n".join(texts[4 * i:4 * i + 4]))
    (tmp_path / ".hidden.txt").write_text("not part of the corpus")
    (tmp_path / "notes.md").write_text("nor is this")
    d = data(cache_dir, path=str(tmp_path), validation_fraction=0.25)
    assert documents(d, "train") == [t for i in range(3) for t in texts[4 * i:4 * i + 3]]
    assert documents(d, "validation") == [texts[4 * i + 3] for i in range(3)]


def test_jsonl_gzip_and_parquet_rows_are_documents_and_a_bad_row_is_named(tmp_path, cache_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i} " * 10 for i in range(20)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n\n"
                                                 for i, t in enumerate(texts)))
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"body": texts, "n": list(range(20))}), tmp_path / "rows.parquet", row_group_size=7)
    for name, key in (("rows.jsonl", "text"), ("rows.jsonl.gz", "text"), ("rows.parquet", "body")):
        d = data(cache_dir, path=str(tmp_path / name), text_key=key)
        assert documents(d, "train") == texts[:18], name
        assert documents(d, "validation") == texts[18:], name
    d = data(cache_dir, path=str(tmp_path / "rows.parquet"))
    with pytest.raises(UserError, match=r"rows.parquet has no column 'text' \(it has body, n\); set config.data"):
        corpus.open_splits(corpus.resolve(d)[0], sentencepiece.train(["abc"], "char", 256), d)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    d = data(cache_dir, path=str(bad))
    with pytest.raises(UserError, match=rf"^{bad} line 2 has no 'text' field \(config.data.text_key\); fix the row"):
        char_tokenizer(d)
    bad.write_text('{"text": "fine"}\n{"text": "ok"\n')
    with pytest.raises(UserError, match=rf"^{bad} line 2 is not a JSON object"):
        char_tokenizer(data(cache_dir, path=str(bad)))


def test_prompt_tokens_are_masked_out_of_the_loss(tmp_path, cache_dir):
    pairs = tmp_path / "sft.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"Q{i}?", "a": f" answer {i}."}) + "\n" for i in range(40)))
    d = data(cache_dir, path=str(pairs), prompt_key="q", text_key="a")
    tok = char_tokenizer(d)
    rows = Split(corpus.open_splits(corpus.resolve(d)[0], tok, d)["train"], 40, whole=True)
    batch = rows.rows(range(rows.count))
    whole = 0
    for tokens, segments, mask in zip(batch["tokens"], batch["segment_ids"], batch["loss_mask"], strict=True):
        for seg in set(segments[1:]) - {segments[0]}:  # whole documents (the first may have begun in the row before)
            doc = np.flatnonzero(segments == seg)
            if doc[-1] == len(tokens) - 1:  # continues in the next row
                continue
            prompt = tok.decode(tokens[doc][mask[doc] == 0][1:])  # after BOS
            answer = tokens[doc][mask[doc] == 1]
            assert answer[-1] == tok.eos_id and tok.decode(answer[:-1]) == f" answer {prompt[1:-1]}."
            whole += 1
    assert whole >= 10


def test_token_files_are_read_in_place_with_documents_ending_at_eot(tmp_path, cache_dir):
    """nanoGPT's layout: train.bin and val.bin of uint16 ids, each document followed by the end-of-text id."""
    tok = sentencepiece.train(["hello world, a small text"], "char", 256)
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13]] * 4
    stream = np.array([t for doc in docs for t in [*doc, tok.eos_id]], np.uint16)
    stream.tofile(tmp_path / "train.bin")
    stream[:10].tofile(tmp_path / "val.bin")
    d = data(cache_dir, path=str(tmp_path))
    pieces = corpus.open_splits(corpus.resolve(d)[0], tok, d)
    rows = Split(pieces["train"], 8, whole=True)
    got = rows.rows([1])
    np.testing.assert_array_equal(got["tokens"][0], stream[8:16])
    ends_before = np.concatenate([[False], stream[8:15] == tok.eos_id])
    np.testing.assert_array_equal(got["segment_ids"][0], 1 + np.cumsum(ends_before))
    assert Split(pieces["validation"], 8, whole=False).tokens == 10
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError, match="odd.bin is not a whole number of uint16 tokens"):
        corpus.open_splits(corpus.resolve(d)[0], tok, d)


class LmTestQuotes(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset like a catalog one (lm1b: a text feature, train and test splits), built from code."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({"sentence": tfds.features.Text(), "id": np.int32})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(300)), "test": self._generate_examples(range(300, 330))}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"sentence": f"Quote {i}: to be or not to be, that is the question.", "id": i}


def test_a_tfds_dataset_prepared_as_array_record_trains_by_name(tmp_path, cache_dir):
    data_dir = str(tmp_path / "tensorflow_datasets")
    d = data(cache_dir, tfds_name="lm_test_quotes", tfds_data_dir=data_dir, text_key="sentence")
    with pytest.raises(UserError, match=f"^TFDS dataset lm_test_quotes is not prepared in {data_dir}; prepare it"):
        corpus.resolve(d)
    corpus.resolve(dataclasses.replace(d, tfds_download=True))  # prepared from its code (downloaded first)
    assert LmTestQuotes(data_dir=data_dir, file_format="array_record").is_prepared()
    train = ("lm.train", "--config", TINY, "--config.train.steps=2", f"--config.data.tfds_data_dir={data_dir}",
             f"--config.data.cache_dir={cache_dir}")
    result = run_module(*train, "--workdir", str(tmp_path / "run"), "--config.data.tfds_name=lm_test_quotes",
                        "--config.data.text_key=sentence")  # read from its files alone, as a catalog dataset is
    assert result.returncode == 0 and "val loss" in result.stdout, result.stderr
    quotes = [f"Quote {i}: to be or not to be, that is the question." for i in range(330)]
    assert sorted(documents(d, "validation")) == sorted(quotes[300:])  # the test split
    d = dataclasses.replace(d, tfds_validation_split="train")  # config.data.tfds_validation_split names another
    assert sorted(documents(d, "validation")) == sorted(quotes[:300])
    with pytest.raises(UserError, match="^TFDS dataset lm_test_quotes has no split 'dev' .it has train, test.; set"):
        corpus.resolve(dataclasses.replace(d, tfds_validation_split="dev"))
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm_test_quotes"),
                   "TFDS dataset lm_test_quotes has no feature 'text' (it has id, sentence); set config.data.text_key")
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm1bb"),
                   "config.data.tfds_name=lm1bb is not a TFDS dataset (did you mean lm1b")
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm1b"),
                   f"TFDS dataset lm1b is not prepared in {data_dir}; prepare it where there is network")

"""The data pipeline: split, packing, sharding across processes and exact resume of the iterator."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import TINY, one_line_error, run_module

from lm.data import sources
from lm.data.batches import TrainBatches, eval_batches
from lm.errors import UserError
from lm.tokenizer import sentencepiece


def test_split_is_by_characters_and_keeps_all_text():
    text = "aaaa\n\nbbbb\n\ncccc\n\ndddd\n\neeee"
    docs = sources.split_documents(text, "\n\n", 0.2)
    cut = int(len(text) * 0.8)
    assert "\n\n".join(docs["train"]) == text[:cut].rstrip("\n")
    assert "".join(docs["validation"]) == text[cut:].replace("\n\n", "")


@pytest.fixture(scope="module")
def corpus(cache_dir):
    builder = sources.build("", "\n\n", 0.1, cache_dir)
    tok = sentencepiece.train(sources.texts(builder, "train"), "char", 256)
    return builder, tok


def test_batches_are_packed_rows_of_documents(corpus):
    builder, tok = corpus
    batch = next(TrainBatches(builder, tok, 33, 4, seed=0))
    assert {k: v.shape for k, v in batch.items()} == {k: (4, 33) for k in ("tokens", "segment_ids", "positions",
                                                                          "loss_mask")}
    assert (batch["loss_mask"] == (batch["tokens"] != tok.bos_id)).all()  # plain text: every target but BOS
    for tokens, segs, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"], strict=True):
        assert (segs >= 1).all() and (np.diff(segs) >= 0).all()
        starts = np.flatnonzero(np.diff(segs)) + 1  # a new document starts at position 0 with BOS
        assert (pos[starts] == 0).all() and (tokens[starts] == tok.bos_id).all()


@pytest.mark.parametrize("ahead", [0, 3])
def test_iterator_state_resumes_exactly(corpus, ahead):
    builder, tok = corpus
    it = TrainBatches(builder, tok, 33, 4, seed=3, shards=2, ahead=ahead)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.global_state()))  # as it travels in a checkpoint (the thread is ahead of it)
    expected = [next(it)["tokens"] for _ in range(3)]
    fresh = TrainBatches(builder, tok, 33, 4, seed=3, shards=2, ahead=ahead)
    next(fresh)  # already running ahead when rewound
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)
    if ahead:
        plain = TrainBatches(builder, tok, 33, 4, seed=3, shards=2)
        for _ in range(5):
            next(plain)
        np.testing.assert_array_equal(next(plain)["tokens"], expected[0])  # the same batches as without a thread


def test_processes_read_their_rows_of_the_same_global_batches(corpus):
    """With the same shards, two processes together read exactly the batches one process reads."""
    builder, tok = corpus
    whole = TrainBatches(builder, tok, 33, 8, seed=0, shards=4)
    halves = [TrainBatches(builder, tok, 33, 8, seed=0, shards=4, process_index=i, process_count=2)
              for i in range(2)]
    for _ in range(3):
        parts = [next(h) for h in halves]
        assert parts[0]["tokens"].shape == (4, 33)
        np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in parts]), next(whole)["tokens"])
    with pytest.raises(UserError, match="multiple of the process count"):
        TrainBatches(builder, tok, 33, 8, seed=0, shards=3, process_index=0, process_count=2)


def test_eval_batches_cover_the_split_once(corpus):
    builder, tok = corpus
    batches = eval_batches(builder, tok, 65, 16, shards=2)
    assert all(b["tokens"].shape == (16, 65) for b in batches)
    tokens = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    expected = sum(len(tok.encode(t)) + 2 for t in sources.texts(builder, "validation"))
    assert expected - 2 * 65 <= tokens <= expected  # all but each shard's final partial row
    split = [eval_batches(builder, tok, 65, 16, shards=2, process_index=i, process_count=2) for i in range(2)]
    # (in one process the counts are not equalized across processes, as they are in a multi-process run)
    assert max(len(split[0]), len(split[1])) == len(batches)
    np.testing.assert_array_equal(np.concatenate([split[0][3]["tokens"], split[1][3]["tokens"]]),
                                  batches[3]["tokens"])


def test_missing_and_empty_data_are_one_line_errors(tmp_path, cache_dir):
    with pytest.raises(UserError, match="does not exist"):
        sources.build(str(tmp_path / "nope.txt"), "\n\n", 0.1, cache_dir)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        sources.build(str(tmp_path / "empty.txt"), "\n\n", 0.1, cache_dir)
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="no .txt or .jsonl files"):
        sources.build(str(tmp_path / "folder"), "\n\n", 0.1, cache_dir)


def test_folder_of_files_is_one_corpus(tmp_path, cache_dir):
    """Every document of every .txt file under the folder (a subfolder's too; hidden and other files skipped),
    in file order: with a quarter of the characters for validation, exactly the last document is validation."""
    docs = [f"{name} {i}".ljust(20, ".") for i in range(3) for name in ("first", "second")]  # 20 characters each
    docs[-1] = docs[-1].ljust(34, "!")  # 5 x 20 + 34 + 5 separators of 2 = 144 = 4 x (34 + 2)
    (tmp_path / "sub").mkdir()
    for i, path in enumerate([tmp_path / "0.txt", tmp_path / "1.txt", tmp_path / "sub" / "2.txt"]):
        path.write_text(docs[2 * i] + "\n\n" + docs[2 * i + 1])
    (tmp_path / ".hidden.txt").write_text("not part of the corpus")
    (tmp_path / "notes.md").write_text("nor is this")
    builder = sources.build(str(tmp_path), "\n\n", 0.25, cache_dir)
    assert sorted(sources.texts(builder, "train")) == sorted(docs[:5])
    assert list(sources.texts(builder, "validation")) == docs[5:]


def test_jsonl_rows_are_documents_and_a_bad_row_is_named(tmp_path, cache_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": f"row {i} " * 10}) + "\n\n" for i in range(20)))
    builder = sources.build(str(rows), "\n\n", 0.1, cache_dir)
    assert sorted(sources.texts(builder, "train")) == sorted(f"row {i} " * 10 for i in range(18))  # TFDS reorders
    assert sorted(sources.texts(builder, "validation")) == [f"row {i} " * 10 for i in (18, 19)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=rf"^{bad} line 2 has no 'text' field \(config.data.text_key\); fix the row"):
        sources.build(str(bad), "\n\n", 0.5, cache_dir)
    bad.write_text('{"text": "fine"}\n{"text": "ok"\n')
    with pytest.raises(UserError, match=rf"^{bad} line 2 is not a JSON object"):
        sources.build(str(bad), "\n\n", 0.5, cache_dir)


def test_prompt_tokens_are_masked_out_of_the_loss(tmp_path, cache_dir):
    pairs = tmp_path / "sft.jsonl"
    pairs.write_text("".join(json.dumps({"q": f"Q{i}?", "a": f" answer {i}."}) + "\n" for i in range(40)))
    builder = sources.build(str(pairs), "\n\n", 0.1, cache_dir, prompt_key="q", text_key="a")
    tok = sentencepiece.train(sources.texts(builder, "train"), "char", 256)
    batch = next(TrainBatches(builder, tok, 40, 4, seed=0))
    for tokens, segments, mask in zip(batch["tokens"], batch["segment_ids"], batch["loss_mask"], strict=True):
        for seg in set(segments[1:]) - {segments[0]}:  # whole documents (the first may have begun in the row before)
            doc = np.flatnonzero(segments == seg)
            if doc[-1] == len(tokens) - 1:  # continues in the next row
                continue
            prompt = tok.decode(tokens[doc][mask[doc] == 0][1:])  # after BOS
            answer = tokens[doc][mask[doc] == 1]
            assert answer[-1] == tok.eos_id and tok.decode(answer[:-1]) == f" answer {prompt[1:-1]}."


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


def test_a_tfds_dataset_prepared_as_array_record_trains_by_name(tmp_path):
    data_dir = str(tmp_path / "tensorflow_datasets")
    LmTestQuotes(data_dir=data_dir, file_format="array_record").download_and_prepare()
    train = ("lm.train", "--config", TINY, "--config.train.steps=2", f"--config.data.tfds_data_dir={data_dir}")
    result = run_module(*train, "--workdir", str(tmp_path / "run"), "--config.data.tfds_name=lm_test_quotes",
                        "--config.data.text_key=sentence")  # read from its files alone, as a catalog dataset is
    assert result.returncode == 0 and "val loss" in result.stdout, result.stderr
    corpus = sources.CatalogCorpus("lm_test_quotes", data_dir, "sentence")
    assert sorted(sources.texts(corpus, "validation")) == [f"Quote {i}: to be or not to be, that is the question."
                                                        for i in range(300, 330)]  # the test split
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm_test_quotes"),
                   "TFDS dataset lm_test_quotes has no feature 'text' (it has id, sentence); set config.data.text_key")
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm1bb"),
                   "config.data.tfds_name=lm1bb is not a TFDS dataset (did you mean lm1b")
    one_line_error(run_module(*train, "--workdir", str(tmp_path / "w"), "--config.data.tfds_name=lm1b"),
                   f"TFDS dataset lm1b is not prepared in {data_dir}; prepare it where there is network")

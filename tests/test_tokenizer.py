"""Tokenizers round-trip any text exactly, and their byte counts add up to the text's."""

import dataclasses
import gzip
import json
import os
import shutil

import pytest
import sentencepiece as spm

from lm.data import corpus, sources
from lm.data.config import DataConfig
from lm.errors import UserError
from lm.tokenizer import sentencepiece
from lm.tokenizer.config import TokenizerConfig
from lm.tokenizer.huggingface import HFTokenizer

TEXT = open(sources.bundled_corpus(), encoding="utf-8").read()[:200_000]
ODD = "Ünïcödé — 字 and emoji 🙂\n\n  two  spaces,\ttab\nend"


@pytest.mark.parametrize("kind,vocab", [("char", 256), ("bpe", 500), ("unigram", 500)])
def test_round_trip(kind, vocab, tmp_path):
    tok = sentencepiece.train([TEXT], kind, vocab)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    if kind != "char":  # byte fallback covers characters never seen in training, a byte per byte piece
        assert tok.decode(tok.encode(ODD)) == ODD
        pieces = spm.SentencePieceProcessor(model_proto=tok.proto)
        assert any(pieces.is_byte(i) for i in tok.encode(ODD))
        assert tok.token_bytes(2)[tok.encode(ODD)].sum() == len(ODD.encode("utf-8"))
    ids = tok.encode(TEXT)
    assert tok.token_bytes(2)[ids].sum() == len(TEXT.encode("utf-8"))
    tok.save(str(tmp_path / "t.model"))
    loaded = sentencepiece.Tokenizer.load(str(tmp_path / "t.model"))
    assert loaded.encode(TEXT) == ids


def test_char_vocabulary_is_the_characters():
    tok = sentencepiece.train([TEXT], "char", 256)
    assert len(tok.encode(TEXT)) == len(TEXT)
    assert tok.vocab_size == len(set(TEXT)) + 3  # <unk>, <s>, </s>


def test_a_fresh_run_trains_its_tokenizer_once_per_corpus_and_settings(tmp_path):
    d = DataConfig(path=str(tmp_path / "c.txt"), cache_dir=str(tmp_path))
    (tmp_path / "c.txt").write_text(TEXT[:50_000])
    settings = TokenizerConfig(type="bpe", vocab_size=400, sample_chars=0)
    first = corpus.fresh_tokenizer(d, settings)
    train_documents = [doc for doc in TEXT[:45_000].split("\n\n") if doc]  # the first 90%, cut at blank lines
    assert first.proto == sentencepiece.train(train_documents, "bpe", 400).proto  # trained on the training text
    assert corpus.fresh_tokenizer(d, settings) is not first  # read back from the cache ...
    assert corpus.fresh_tokenizer(d, settings).proto == first.proto  # ... as it was
    assert len(os.listdir(tmp_path / "tokenizers")) == 1
    assert corpus.fresh_tokenizer(d, dataclasses.replace(settings, vocab_size=350)).vocab_size == 350


def test_trained_on_a_sample_or_loaded_from_a_model_file(tmp_path):
    texts = ["abc " * 100, "xyz " * 100]
    whole, sampled = sentencepiece.train(texts, "char", 256), sentencepiece.train(texts, "char", 256, sample_chars=400)
    assert sampled.vocab_size == whole.vocab_size - 3  # x, y and z are past the sample
    bpe = sentencepiece.train([TEXT], "bpe", 400)
    bpe.save(str(tmp_path / "bpe.model"))
    d = DataConfig(cache_dir=str(tmp_path))
    given = corpus.fresh_tokenizer(d, TokenizerConfig(sample_chars=0, path=str(tmp_path / "bpe.model")))
    assert given.proto == bpe.proto  # the BPE model file, not a char model trained anew
    (tmp_path / "broken.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"broken.model is not a SentencePiece model file; set config.tokenizer.path"):
        corpus.fresh_tokenizer(d, TokenizerConfig(sample_chars=0, path=str(tmp_path / "broken.model")))


def test_the_char_tokenizer_reads_a_character_it_never_saw_as_unknown():
    """No byte fallback in the char model (as the README says): 'é' and '字', absent from the training text, become
    <unk> (id 0), which decodes as ' ⁇ ' and counts one byte; the characters around them round-trip."""
    tok = sentencepiece.train([TEXT], "char", 256)
    assert "é" not in TEXT and "字" not in TEXT
    one = {c: tok.encode(c) for c in "caf !"}
    assert all(len(ids) == 1 and ids[0] != 0 for ids in one.values())
    ids = tok.encode("café 字!")
    assert ids == [*one["c"], *one["a"], *one["f"], 0, *one[" "], 0, *one["!"]]
    unknown = " \u2047 "  # SentencePiece's text for <unk>
    assert tok.decode(ids) == "caf" + unknown + " " + unknown + "!"
    assert tok.token_bytes(2)[ids].tolist() == [1] * 7


@pytest.mark.parametrize("name", ["llama3", "qwen", "mistral"])
def test_family_tokenizer_files_give_the_ids_transformers_gives(name, tmp_path):
    """Llama 3's, Qwen's and Mistral v0.3's real vocabularies, as tokenizer.json files (tests/fixtures/tokenizers,
    made by tests/fixtures/make_family_fixtures.py), give the ids `transformers`' own tokenizer gave for texts in
    several scripts, with emoji, runs of whitespace and newlines; the start and end tokens come from the files."""
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers", name)
    with gzip.open(os.path.join(fixture, "tokenizer.json.gz"), "rb") as f:
        (tmp_path / "tokenizer.json").write_bytes(f.read())
    shutil.copy(os.path.join(fixture, "tokenizer_config.json"), tmp_path)
    with open(os.path.join(fixture, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    tok = HFTokenizer.from_folder(str(tmp_path))
    assert tok.vocab_size == expected["vocab_size"] and tok.eos_id == expected["eos_id"]
    assert tok.bos_id == (expected["eos_id"] if expected["bos_id"] is None else expected["bos_id"])  # Qwen: none
    for text, ids, with_special in zip(expected["texts"], expected["ids"], expected["with_special"], strict=True):
        assert tok.encode(text) == ids, text
        starts = [] if expected["bos_id"] is None else [tok.bos_id]
        assert starts + tok.encode(text) == with_special, text
        if name != "mistral" and "<|" not in text:  # SentencePiece's normalizer drops a text's leading space
            assert tok.decode(tok.encode(text)) == text

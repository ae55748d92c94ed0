"""Tokenizers round-trip any text exactly, and their byte counts add up to the text's."""

import pytest

from lm import data, tokenizer

TEXT = open(data.bundled_corpus(), encoding="utf-8").read()[:200_000]
ODD = "Ünïcödé — 字 and emoji 🙂\n\n  two  spaces,\ttab\nend"


@pytest.mark.parametrize("kind,vocab", [("char", 256), ("bpe", 500), ("unigram", 500)])
def test_round_trip(kind, vocab, tmp_path):
    tok = tokenizer.train([TEXT], kind, vocab)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    if kind != "char":  # byte fallback covers characters never seen in training
        assert tok.decode(tok.encode(ODD)) == ODD
    ids = tok.encode(TEXT)
    assert tok.token_bytes(2)[ids].sum() == len(TEXT.encode("utf-8"))
    tok.save(str(tmp_path / "t.model"))
    loaded = tokenizer.Tokenizer.load(str(tmp_path / "t.model"))
    assert loaded.encode(TEXT) == ids


def test_char_vocabulary_is_the_characters():
    tok = tokenizer.train([TEXT], "char", 256)
    assert len(tok.encode(TEXT)) == len(TEXT)
    assert tok.vocab_size == len(set(TEXT)) + 3  # <unk>, <s>, </s>


def test_workdir_tokenizer_is_reused(tmp_path):
    first = tokenizer.load_or_train(str(tmp_path), "bpe", 400, [TEXT])
    second = tokenizer.load_or_train(str(tmp_path), "bpe", 400, ["something else entirely"])
    assert first.proto == second.proto

"""SentencePiece tokenizers (char, BPE, unigram) trained on the training split, behind one small interface
(shared with Hugging Face tokenizers, huggingface.py; kinds.py reads either back from a checkpoint).

Trained with settings that make `decode(encode(text)) == text` (identity normalization, kept whitespace and
newlines, full character coverage), so bits per byte are honest. BPE and unigram models also fall back to
bytes, so they round-trip any text; the char model (as nanoGPT's) has no byte pieces (SentencePiece's char
trainer takes none): a character absent from its training text becomes <unk>, decodes as ' ⁇ ' and counts as
one byte.
"""

import base64
import io
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from lm import folders
from lm.errors import UserError

MAX_LINE = 1 << 14  # characters: longer lines of text reach the tokenizer trainer in pieces of this size


class Tokenizer:
    """Text <-> token ids; `bos_id` starts every document, `eos_id` ends it."""

    def __init__(self, proto: bytes):
        self.proto = proto
        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def unk_id(self) -> int | None:
        """The id of text the tokenizer cannot read (None: it reads any text, falling back to bytes)."""
        return self._sp.unk_id() if self._sp.unk_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_bytes(self, eos_bytes: int) -> np.ndarray:
        """[V] int32: UTF-8 bytes of text each id stands for (control ids 0; EOS counts as the separator)."""
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            if self._sp.is_control(i):
                continue
            if self._sp.is_byte(i) or self._sp.is_unknown(i):
                out[i] = 1
            else:
                out[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        out[self.eos_id] = eos_bytes
        return out

    def to_json(self) -> dict[str, Any]:
        return {"type": "sentencepiece", "model": base64.b64encode(self.proto).decode("ascii")}

    def save(self, path: str) -> None:
        """The model file at `path`, written whole (never through a link there: lm/folders.py)."""
        folders.write_atomic(path, self.proto)

    @classmethod
    def load(cls, path: str, fix: str = "delete it to retrain") -> "Tokenizer":
        """The SentencePiece model file at `path`; one line saying what to do (`fix`) if it does not load."""
        if not os.path.isfile(path):
            raise UserError(f"tokenizer file {path} does not exist; {fix}")
        with open(path, "rb") as f:
            proto = f.read()
        try:
            return cls(proto)
        except (RuntimeError, OSError):
            raise UserError(f"tokenizer {path} is not a SentencePiece model file; {fix}") from None


def _lines(texts: Iterable[str], sample_chars: int = 0) -> Iterator[str]:
    """The lines of `texts` (in pieces of at most MAX_LINE characters), up to `sample_chars` characters in all
    (0: all), with a progress line."""
    taken = 0
    with tqdm(total=sample_chars or None, desc="text for the tokenizer", unit=" chars", unit_scale=True,
              mininterval=0.5, leave=False, file=sys.stdout, disable=None) as progress:  # on a terminal only
        for text in texts:
            if sample_chars:
                text = text[:sample_chars - taken]
            taken += len(text)
            progress.update(len(text))
            for line in text.split("\n"):  # a long line in pieces: SentencePiece skips a sentence over its limit
                yield from (line[i:i + MAX_LINE] for i in range(0, max(len(line), 1), MAX_LINE))
            if sample_chars and taken >= sample_chars:
                break


def train(texts: Iterable[str], model_type: str, vocab_size: int, sample_chars: int = 0) -> Tokenizer:
    """Trains a SentencePiece model of `model_type` ('char', 'bpe', 'unigram') on the first `sample_chars`
    characters of `texts` (0: all of them)."""
    out, failed = io.BytesIO(), []

    def lines() -> Iterator[str]:  # an error of the corpus (a file that does not read) ends the text here...
        try:
            yield from _lines(texts, sample_chars)
        except Exception as e:  # noqa: BLE001 (raised again below: SentencePiece would bury it in its own)
            failed.append(e)

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=out,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a vocabulary larger than the corpus supports stops early
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_by_whitespace=True,
            character_coverage=1.0,
            byte_fallback=model_type != "char",
            user_defined_symbols=["\n"],
            max_sentence_length=4 * MAX_LINE,  # bytes: MAX_LINE characters of up to 4 bytes each
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        if failed:
            raise failed[0] from None
        raise UserError(f"tokenizer training failed: {str(e).strip().splitlines()[-1]}; "
                        "adjust config.tokenizer.vocab_size") from e
    if failed:  # ...and is said as it is, whatever SentencePiece made of the text before it
        raise failed[0]
    return Tokenizer(out.getvalue())

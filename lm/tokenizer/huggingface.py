"""Hugging Face tokenizers (a `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`) through the `tokenizers`
library, behind the interface SentencePiece models have (sentencepiece.py), for imported weights.

Special tokens come from the files: `tokenizer_config.json`'s bos/eos/pad tokens, else `config.json`'s ids, else
GPT-2's `<|endoftext|>`. A tokenizer without a start token (Qwen's) starts documents with its end token, as GPT-2
does. Text is encoded without the template's added tokens: `lm` adds BOS and EOS around each document itself.
"""

import functools
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import tokenizers

from lm import folders
from lm.errors import UserError

END_OF_TEXT = "<|endoftext|>"
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # a byte-fallback piece (SentencePiece-style vocabularies)


@functools.cache
def byte_chars() -> dict[str, int]:
    """The byte each printable character of a byte-level BPE stands for (GPT-2's table): printable Latin-1 bytes
    stand for themselves, the other bytes take the characters from U+0100 on, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    if END_OF_TEXT in vocab:
        tok.add_special_tokens([END_OF_TEXT])
    return tok


def _token_id(tok: tokenizers.Tokenizer, value: Any) -> int | None:
    """The id of a special token given as text, as {'content': text}, or None."""
    if isinstance(value, dict):
        value = value.get("content")
    return tok.token_to_id(value) if isinstance(value, str) else None


class HFTokenizer:
    """Text <-> token ids with a `tokenizers` tokenizer; `bos_id` starts every document, `eos_id` ends it."""

    def __init__(self, tok: tokenizers.Tokenizer, bos_id: int | None, eos_id: int, pad_id: int | None = None):
        self._tok = tok
        self.eos_id = eos_id
        self.bos_id = eos_id if bos_id is None else bos_id
        self.pad_id = pad_id

    @property
    def unk_id(self) -> int | None:
        """The id of text the tokenizer cannot read (None for a byte-level one, which reads any text)."""
        token = getattr(self._tok.model, "unk_token", None)
        return self._tok.token_to_id(token) if token else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_bytes(self, eos_bytes: int) -> np.ndarray:
        """[V] int32: UTF-8 bytes of text each id stands for (special tokens 0; EOS counts as the separator)."""
        byte_level = json.loads(self._tok.to_str()).get("decoder", {}) or {}
        byte_level = byte_level.get("type") == "ByteLevel"
        special = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        chars = byte_chars()
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            if i in special or piece is None:
                continue
            if byte_level:
                out[i] = sum(1 for ch in piece if ch in chars)
            elif BYTE_PIECE.fullmatch(piece):
                out[i] = 1
            else:
                out[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
        out[self.eos_id] = eos_bytes
        return out

    def save(self, folder: str) -> None:
        """Writes tokenizer.json and the special tokens (tokenizer_config.json) into `folder`, each whole."""
        folders.write_atomic(os.path.join(folder, "tokenizer.json"), self._tok.to_str(pretty=True))
        names = {key: self._tok.id_to_token(i) for key, i in
                 (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)) if i is not None}
        folders.write_atomic(os.path.join(folder, "tokenizer_config.json"),
                             json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **names}, indent=2))

    def to_json(self) -> dict[str, Any]:
        return {"type": "huggingface", "tokenizer": self._tok.to_str(), "bos_id": self.bos_id, "eos_id": self.eos_id,
                "pad_id": self.pad_id}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "HFTokenizer":
        """The tokenizer `to_json()` wrote (or, from older checkpoints, GPT-2's vocab and merges)."""
        if saved["type"] == "gpt2_bpe":
            merges = [tuple(m.split(" ")) for m in saved["merges"]]
            tok = _byte_level_bpe(saved["vocab"], merges)
            eot = tok.token_to_id(END_OF_TEXT)
            return cls(tok, eot, eot)
        return cls(tokenizers.Tokenizer.from_str(saved["tokenizer"]), saved["bos_id"], saved["eos_id"],
                   saved.get("pad_id"))

    @classmethod
    def from_folder(cls, folder: str) -> "HFTokenizer":
        """The tokenizer of a Hugging Face folder: tokenizer.json, or GPT-2's vocab.json + merges.txt."""
        path = os.path.join(folder, "tokenizer.json")
        try:
            if os.path.isfile(path):
                tok = tokenizers.Tokenizer.from_file(path)
            else:
                path = os.path.join(folder, "vocab.json")
                with open(path, encoding="utf-8") as f:
                    vocab = json.load(f)
                with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
                    merges = [tuple(line.rstrip("\n").split(" ")) for line in f
                              if line.strip() and not line.startswith("#version")]
                tok = _byte_level_bpe(vocab, merges)
        except Exception as e:  # noqa: BLE001 (files unreadable, or the tokenizers library's own Exception)
            raise UserError(f"the tokenizer in {folder} does not load ({str(e).splitlines()[0][:200]}); it needs "
                            "a tokenizer.json (or GPT-2's vocab.json and merges.txt) that the tokenizers library "
                            "reads") from e
        ids = {"bos": None, "eos": None, "pad": None}
        for name in ("config.json", "tokenizer_config.json"):  # the tokenizer's own file wins
            file = os.path.join(folder, name)
            if os.path.isfile(file):
                with open(file) as f:
                    settings = json.load(f)
                for key in ids:
                    found = _token_id(tok, settings.get(f"{key}_token"))
                    given = settings.get(f"{key}_token_id")
                    given = given[0] if isinstance(given, list) and given else given  # Llama 3.1 lists its ends
                    if found is None and isinstance(given, int):
                        found = given
                    ids[key] = found if found is not None else ids[key]
        if ids["eos"] is None:
            ids["eos"] = tok.token_to_id(END_OF_TEXT)
        if ids["eos"] is None:
            raise UserError(f"the tokenizer in {folder} names no end-of-text token: set eos_token in its "
                            "tokenizer_config.json")
        return cls(tok, ids["bos"], ids["eos"], ids["pad"])

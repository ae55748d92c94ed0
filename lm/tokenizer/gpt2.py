"""GPT-2's byte-level BPE (`vocab.json` + `merges.txt` of a Hugging Face GPT-2 folder), for imported weights.

Text is split by GPT-2's pattern (contractions, letters, digits, other symbols, whitespace), each piece's UTF-8
bytes are spelled as printable characters (GPT-2's byte-to-character table), and the ranked merges are
applied, lowest rank first, until none applies. `<|endoftext|>` starts and ends documents.
"""

import functools
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import regex

from lm.errors import UserError

END_OF_TEXT = "<|endoftext|>"
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.cache
def byte_chars() -> list[str]:
    """GPT-2's printable character for each byte value: printable Latin-1 bytes stand for themselves, the
    other bytes take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


class GPT2Tokenizer:
    """Text <-> token ids with GPT-2's byte-level BPE; `bos_id` = `eos_id` = `<|endoftext|>`."""

    def __init__(self, vocab: dict[str, int], merges: list[str]):
        self.vocab, self.merges = vocab, merges
        self.pieces = {i: piece for piece, i in vocab.items()}
        self.ranks = {tuple(m.split(" ")): rank for rank, m in enumerate(merges)}
        if END_OF_TEXT not in vocab:
            raise UserError(f"the GPT-2 vocabulary has no {END_OF_TEXT} token")
        self.bos_id = self.eos_id = vocab[END_OF_TEXT]
        self._byte_of = {c: b for b, c in enumerate(byte_chars())}
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self.pieces) + 1

    def _bpe(self, word: str) -> list[int]:
        parts = list(word)
        while len(parts) > 1:
            rank = min(self.ranks.get(pair, len(self.ranks)) for pair in zip(parts[:-1], parts[1:], strict=True))
            if rank == len(self.ranks):
                break
            first, second = self.merges[rank].split(" ")
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.vocab[p] for p in parts]

    def encode(self, text: str) -> list[int]:
        chars = byte_chars()
        ids: list[int] = []
        for piece in PATTERN.findall(text):
            if piece not in self._cache:
                self._cache[piece] = self._bpe("".join(chars[b] for b in piece.encode("utf-8")))
            ids.extend(self._cache[piece])
        return ids

    def _bytes(self, i: int) -> bytes:
        piece = self.pieces.get(i, "")
        if piece == END_OF_TEXT:
            return b""
        return bytes(self._byte_of[c] for c in piece if c in self._byte_of)

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, eos_bytes: int) -> np.ndarray:
        """[V] int32: bytes of text each id stands for (EOS counts as the separator)."""
        out = np.array([len(self._bytes(i)) for i in range(self.vocab_size)], np.int32)
        out[self.eos_id] = eos_bytes
        return out

    def to_json(self) -> dict[str, Any]:
        return {"type": "gpt2_bpe", "vocab": self.vocab, "merges": self.merges}

    @classmethod
    def from_folder(cls, folder: str) -> "GPT2Tokenizer":
        """The tokenizer of a Hugging Face GPT-2 folder (vocab.json + merges.txt)."""
        try:
            with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
                vocab = json.load(f)
            with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
                merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
        except (OSError, ValueError) as e:
            raise UserError(f"the GPT-2 tokenizer in {folder} does not load ({e})") from e
        return cls(vocab, merges)

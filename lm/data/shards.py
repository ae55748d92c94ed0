"""Token arrays read in place, memory-mapped, as splits of rows for batches.py: a prepared folder's shards
(prepare.py), or token files a user already has (raw uint16 or uint32 arrays, nanoGPT's train.bin and val.bin:
documents end at an end-of-text id).

A split is a list of pieces (a token range of one file) cut into rows of `row_len` tokens: training rows are
the whole rows of each piece (its last few tokens are left out), evaluation rows cover every token (the last
row of a piece is padded with segment id 0). A row is tokens with segment ids (1, 2, ... for the documents in
it), positions (from 0 at each document's start, or at the row's start for a document that began before it)
and the loss mask (0 over BOS and a prompt).
"""

import dataclasses
import glob
import hashlib
import os
from typing import Any

import numpy as np

from lm.data.documents import SPLITS
from lm.data.prepare import FORMAT, MANIFEST, read_json, tokenizer_sha
from lm.errors import UserError
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer

FIELDS = ("tokens", "segment_ids", "positions", "loss_mask")


def _damaged(path: str, what: str) -> UserError:
    return UserError(f"prepared shard file {path} is damaged ({what}); prepare the corpus again with python -m "
                     "lm.prepare, which checks every shard and redoes damaged ones (with the run's config, and "
                     "--out for a folder prepared with --out)")


def _load(path: str, size: int | None = None, sha256: str = "") -> np.ndarray:
    """A .npy file memory-mapped (of `size` elements and this checksum, if given); one line naming it if it is
    damaged. The checksum is read once per process, the first time the file is used."""
    if sha256:
        try:
            with open(path, "rb") as f:
                found = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise _damaged(path, e.strerror or str(e)) from None
        if found != sha256:
            raise _damaged(path, "its checksum is not the manifest's")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise _damaged(path, str(e).splitlines()[0][:120]) from None
    if size is not None and len(array) != size:
        raise _damaged(path, f"it holds {len(array)} entries, not the {size} its manifest says")
    return array


@dataclasses.dataclass
class Piece:
    """Tokens [start, end) of one file: a prepared shard's .npy with the table of its documents at `docs_path`
    ([documents, 2]: start, first target), or a raw token file of `dtype` whose documents end at `eot_id`."""

    path: str
    start: int
    end: int
    vocab_size: int
    docs_path: str = ""
    dtype: str = ""
    eot_id: int = -1
    tokens_size: int | None = None
    docs_size: int | None = None
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)  # file name -> checksum (prepared shards)
    unknown: int | None = None  # tokens the tokenizer could not read (<unk>), where the preparation counted them
    _tokens: Any = dataclasses.field(default=None, repr=False)
    _docs: Any = dataclasses.field(default=None, repr=False)

    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = (np.memmap(self.path, dtype=self.dtype, mode="r") if self.dtype
                            else _load(self.path, self.tokens_size, self.sha256.get(os.path.basename(self.path), "")))
        return self._tokens

    def docs(self) -> np.ndarray:
        if self._docs is None:
            self._docs = np.asarray(_load(self.docs_path, self.docs_size,
                                          self.sha256.get(os.path.basename(self.docs_path), "")))
            starts = self._docs[:, 0]
            if len(starts) and (starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= self.end):
                raise _damaged(self.docs_path, "its document starts are out of order")
        return self._docs

    def row(self, at: int, row_len: int) -> dict[str, np.ndarray]:
        """The row of tokens [at, at + row_len) of the piece (padded past its end)."""
        a = self.start + at
        n = min(row_len, self.end - a)
        tokens = np.zeros(row_len, np.int32)
        tokens[:n] = self.tokens()[a:a + n]
        starts = np.zeros(row_len, bool)
        starts[0] = True
        if self.eot_id >= 0:
            starts[1:n] = tokens[:n - 1] == self.eot_id
        else:
            table = self.docs()
            first_doc = np.searchsorted(table[:, 0], a, "right") - 1
            last_doc = np.searchsorted(table[:, 0], a + n, "left")
            starts[table[first_doc + 1:last_doc, 0] - a] = True
        segments = np.cumsum(starts, dtype=np.int32)
        index = np.arange(row_len, dtype=np.int32)
        positions = index - np.maximum.accumulate(np.where(starts, index, 0))
        mask = np.ones(row_len, np.int32)
        if self.eot_id < 0:
            doc = first_doc + segments - 1
            offset = positions + np.where(segments == 1, a - table[first_doc, 0], 0)
            mask = (offset >= table[np.minimum(doc, len(table) - 1), 1]).astype(np.int32)
        if n < row_len:
            segments[n:], positions[n:], mask[n:] = 0, 0, 0
        if tokens[:n].max(initial=0) >= self.vocab_size:
            raise UserError(f"{self.path} holds token id {int(tokens[:n].max())}, past the tokenizer's "
                            f"{self.vocab_size} ids: it is damaged, or was made with another tokenizer")
        return {"tokens": tokens, "segment_ids": segments, "positions": positions, "loss_mask": mask}


class Split:
    """A split's pieces, as rows of `row_len` tokens: `count` rows, read by index."""

    def __init__(self, pieces: list[Piece], row_len: int, whole: bool):
        """`whole`: the training rows (whole rows only); else every token, the last row of each piece padded."""
        self.pieces, self.row_len = pieces, row_len
        sizes = [p.end - p.start for p in pieces]
        counts = [s // row_len if whole else -(-s // row_len) for s in sizes]
        self.first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [pieces + 1]
        self.count = int(self.first[-1])
        self.tokens = sum(sizes)

    def rows(self, indices: Any) -> dict[str, np.ndarray]:
        """Rows by index, stacked: {field: [len(indices), row_len] int32}."""
        out = {k: np.zeros((len(indices), self.row_len), np.int32) for k in FIELDS}
        for i, r in enumerate(indices):
            p = int(np.searchsorted(self.first, r, "right")) - 1
            row = self.pieces[p].row(int(r - self.first[p]) * self.row_len, self.row_len)
            for k in FIELDS:
                out[k][i] = row[k]
        return out


class Prepared:
    """A prepared folder: its manifest, and the pieces of each split."""

    def __init__(self, folder: str, manifest: dict[str, Any]):
        self.folder, self.manifest = folder, manifest

    @classmethod
    def open(cls, folder: str, tokenizer: AnyTokenizer | None) -> "Prepared":
        """The prepared folder; one line if it is incomplete, or was made with another tokenizer than `tokenizer`
        (None: take its own)."""
        path = os.path.join(folder, MANIFEST)
        if not os.path.exists(path):
            raise UserError(f"{folder} is not a prepared dataset (no {MANIFEST}: its preparation did not finish); "
                            "run python -m lm.prepare again")
        manifest = read_json(path)
        if manifest.get("format") != FORMAT:
            raise UserError(f"{folder} was prepared in format {manifest.get('format')}, this version reads "
                            f"{FORMAT}; prepare it again")
        if tokenizer is not None and manifest["tokenizer"]["sha256"] != tokenizer_sha(tokenizer):
            raise UserError(f"{folder} was prepared with another tokenizer than this run's; prepare the data with "
                            "the run's tokenizer (python -m lm.prepare with the run's config), or start a new run on "
                            "it")
        return cls(folder, manifest)

    def tokenizer(self) -> AnyTokenizer:
        return kinds.from_json(read_json(os.path.join(self.folder, "tokenizer.json")))

    def pieces(self, split: str) -> list[Piece]:
        vocab = self.manifest["tokenizer"]["vocab_size"]
        out = []
        for shard in self.manifest["shards"]:
            n, docs = shard[split]["tokens"], shard[split]["documents"]
            if n:
                base = os.path.join(self.folder, shard["name"], split)
                out.append(Piece(base + ".tokens.npy", 0, n, vocab, base + ".docs.npy", tokens_size=n,
                                 docs_size=docs, sha256=shard["sha256"], unknown=shard[split].get("unknown")))
        return out


def token_files(path: str, dtype: str, eot_id: int, vocab_size: int, validation_fraction: float) -> dict:
    """Raw token files read in place: {split: [Piece]}. `path` is a .bin file or a folder of them; files with
    'val' in their name are the validation split, else the last `validation_fraction` of all the tokens (of the
    last files, in name order) is."""
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "*.bin")))
    if not files:
        raise UserError(f"{path} holds no .bin token files")
    size = np.dtype(dtype).itemsize
    pieces: dict[str, list[Piece]] = {s: [] for s in SPLITS}
    for f in files:
        if os.path.getsize(f) % size:
            raise UserError(f"{f} is not a whole number of {dtype} tokens ({os.path.getsize(f)} bytes); check "
                            "config.data.token_dtype, or the file was cut short")
        n = os.path.getsize(f) // size
        split = "validation" if "val" in os.path.basename(f) else "train"
        pieces[split].append(Piece(f, 0, n, vocab_size, dtype=dtype, eot_id=eot_id))
    held = 0 if pieces["validation"] else int(sum(p.end - p.start for p in pieces["train"]) * validation_fraction)
    while held:  # the last `validation_fraction` of all the tokens, from the last file back
        last = pieces["train"][-1]
        take = min(held, last.end - last.start)
        if take:
            pieces["validation"].insert(0, Piece(last.path, last.end - take, last.end, vocab_size, dtype=dtype,
                                                 eot_id=eot_id))
        last.end, held = last.end - take, held - take
        if last.end == last.start:  # (an empty file, or all of it validation)
            pieces["train"].pop()
    for split in SPLITS:
        if not sum(p.end - p.start for p in pieces[split]):
            raise UserError(f"the token files at {path} have no {split} tokens; add some")
    return pieces

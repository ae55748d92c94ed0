"""What `config.data` names -> a run's tokenizer and token splits, prepared on first use.

`config.data.path` (or each path of `config.data.mixture`) is one of: files of text (sources.py), read once into
prepared shards in a cache folder keyed by the files, settings and tokenizer (prepare.py); a prepared folder
(lm.prepare's output), read in place; token files (.bin) read in place. `config.data.tfds_name` names a TFDS
catalog dataset instead (catalog.py), prepared like files. A fresh run's tokenizer is `config.tokenizer.path`, a
prepared folder's own, or one trained on the training text (cached beside the prepared data, so runs over the
same corpus share it).
"""

import dataclasses
import glob
import hashlib
import json
import math
import os
from typing import Any

from lm import folders
from lm.data import prepare, shards
from lm.data.batches import Component
from lm.data.catalog import CatalogSource
from lm.data.config import DataConfig
from lm.data.documents import SPLITS, Settings
from lm.data.shards import Split
from lm.data.sources import FileSource, corpus_files
from lm.errors import UserError, disk_full_is
from lm.tokenizer import huggingface, sentencepiece
from lm.tokenizer.config import TokenizerConfig
from lm.tokenizer.kinds import AnyTokenizer


@dataclasses.dataclass
class Data:
    """One corpus a config names: `source` (FileSource or CatalogSource) to prepare, or a `prepared` folder, or
    `token_files` read in place."""

    name: str
    weight: float
    source: Any = None
    prepared: str = ""
    token_files: str = ""


def _key(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _one(path: str, weight: float, d: DataConfig) -> Data:
    """The corpus at one path."""
    name = path or "tinyshakespeare"
    if path and os.path.isfile(os.path.join(path, prepare.MANIFEST)):
        return Data(name, weight, prepared=path)
    if path and (path.endswith(".bin") and os.path.isfile(path) or
                 os.path.isdir(path) and glob.glob(os.path.join(path, "*.bin"))):
        return Data(name, weight, token_files=path)
    settings = Settings.of(d)
    return Data(name, weight, source=FileSource(tuple(corpus_files(path, settings.format)), settings))


def mixture(text: str) -> list[tuple[str, float]]:
    """'PATH:WEIGHT,PATH:WEIGHT' -> [(path, weight)]; one line if it does not read."""
    out = []
    for item in text.split(","):
        path, _, weight = item.strip().rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not path or not 0 < w < math.inf:  # nan fails both comparisons
            raise UserError(f"config.data.mixture item {item.strip()!r} is not PATH:WEIGHT with a weight > 0; write "
                            "e.g. --config.data.mixture=web/:0.8,code/:0.2")
        out.append((path, w))
    return out


def resolve(d: DataConfig) -> list[Data]:
    """The corpora `config.data` names (several for a mixture)."""
    if d.tfds_name:
        source = CatalogSource.open(d.tfds_name, d.tfds_data_dir, d.text_key, d.tfds_validation_split,
                                    d.tfds_download)
        return [Data(d.tfds_name, 1.0, source=source)]
    if d.mixture:
        return [_one(path, w, d) for path, w in mixture(d.mixture)]
    return [_one(d.path, 1.0, d)]


def cache_root(d: DataConfig) -> str:
    return os.path.expanduser(d.cache_dir or "~/.cache/lm/data")


def _load_tokenizer_file(path: str) -> AnyTokenizer:
    """config.tokenizer.path: a SentencePiece .model file, or a Hugging Face folder (tokenizer.json, or GPT-2's
    vocab.json and merges.txt)."""
    if os.path.isdir(path):
        return huggingface.HFTokenizer.from_folder(path)
    return sentencepiece.Tokenizer.load(path, "set config.tokenizer.path to a .model file written by SentencePiece, "
                                              "or a folder with a Hugging Face tokenizer.json")


def fresh_tokenizer(d: DataConfig, t: TokenizerConfig) -> AnyTokenizer:
    """The tokenizer a fresh run on `config.data` takes (config.tokenizer `t`), trained if it has to be."""
    corpora = resolve(d)
    if t.path:
        return _load_tokenizer_file(t.path)
    prepared = [c for c in corpora if c.prepared]
    if prepared:
        return shards.Prepared.open(prepared[0].prepared, None).tokenizer()
    if any(c.token_files for c in corpora):
        raise UserError("token files (.bin) need the tokenizer they were made with: set config.tokenizer.path to its "
                        "SentencePiece .model file or Hugging Face folder (tokenizer.json)")
    settings = {k: getattr(t, k) for k in ("type", "vocab_size", "sample_chars")}
    path = os.path.join(cache_root(d), "tokenizers",
                        _key([settings, [(c.source.identity(), c.weight) for c in corpora]]) + ".model")
    if os.path.exists(path):
        return sentencepiece.Tokenizer.load(path)
    for c in corpora:  # an empty corpus, named before a tokenizer fails to train on it
        if not any(text.strip() for text in c.source.train_texts(1 << 20)):
            raise UserError(f"corpus {c.source.describe()} is empty; point --config.data.path at more text")
    total = sum(c.weight for c in corpora)

    def texts() -> Any:
        for c in corpora:  # each corpus's share of the characters, by weight
            yield from c.source.train_texts(int(t.sample_chars * c.weight / total) if t.sample_chars else 0)

    tok = sentencepiece.train(texts(), t.type, t.vocab_size)
    with disk_full_is(f"the disk filled up while saving the tokenizer in {os.path.dirname(path)}; free some space "
                      "and rerun the same command"):
        os.makedirs(folders.not_a_link(os.path.dirname(path)), exist_ok=True)
        tok.save(path)
    return tok


def prepared_folder(c: Data, tokenizer: AnyTokenizer, d: DataConfig) -> str:
    """Where corpus `c` is prepared for `tokenizer` under the cache: keyed by what it is read from and how (not
    the files' sizes and times: a changed file is found there and prepared again)."""
    identity = c.source.identity()
    what = {k: v for k, v in identity.items() if k != "files"}
    what["paths"] = [f[0] for f in identity.get("files", [])]
    stem = os.path.basename(os.path.normpath(c.name)).split(".")[0] or "data"
    return os.path.join(cache_root(d), f"{stem}-{_key([what, prepare.tokenizer_sha(tokenizer)])}")


def identity(c: Data) -> str:
    """A checksum of what a corpus holds now (its files' sizes and times), saved with a run's data position."""
    if c.source is not None:
        return _key(c.source.identity())
    if c.prepared:
        return _key(prepare.read_json(os.path.join(c.prepared, prepare.MANIFEST))["shards"])
    return _key([(f, os.path.getsize(f)) for f in sorted(glob.glob(os.path.join(c.token_files, "*.bin")))
                 or [c.token_files]])


def check_unchanged(corpora: list[Data], saved: dict[str, str], tokenizer: AnyTokenizer, d: DataConfig) -> None:
    """One line if a corpus changed since the run that saved `saved` ({name: identity}) was prepared from it."""
    for c in corpora:
        if c.name in saved and saved[c.name] != identity(c):
            detail = ""
            if c.source is not None:
                manifest = os.path.join(prepared_folder(c, tokenizer, d), prepare.MANIFEST)
                if os.path.exists(manifest):
                    detail = f" ({c.source.changed(prepare.read_json(manifest)['source']) or 'its settings'})"
            raise UserError(f"the data at {c.name} changed since this run's data was prepared from it{detail}; "
                            "restore it to resume this run, or train a new run (another --workdir) on it")


def open_splits(c: Data, tokenizer: AnyTokenizer, d: DataConfig, workers: int = 0) -> dict[str, list[shards.Piece]]:
    """{split: pieces} of corpus `c`, prepared first if it has to be."""
    if c.token_files:
        dtype = d.token_dtype
        if dtype == "auto":
            dtype = prepare.token_dtype(tokenizer.vocab_size).name
        return shards.token_files(c.token_files, dtype, tokenizer.eos_id, tokenizer.vocab_size,
                                  d.validation_fraction)
    folder = c.prepared
    if not folder:
        folder = folders.not_a_link(prepared_folder(c, tokenizer, d))
        if not os.path.exists(os.path.join(folder, prepare.MANIFEST)) or \
                prepare.read_json(os.path.join(folder, prepare.MANIFEST))["source"] != c.source.identity():
            prepare.prepare(c.source, tokenizer, folder, workers or d.workers, "the cache folder")
    data = shards.Prepared.open(folder, tokenizer)
    return {split: data.pieces(split) for split in SPLITS}


def open_data(d: DataConfig, tokenizer: AnyTokenizer, row_len: int, saved: dict[str, str] | None = None,
              workers: int = 0) -> tuple[list[Any], list[Split], dict[str, str]]:
    """(training components, validation splits, {corpus: identity}) of `config.data` for rows of `row_len`;
    `saved`: the identities a resumed run saved (a corpus changed since is one line)."""
    corpora = resolve(d)
    if saved:
        check_unchanged(corpora, saved, tokenizer, d)
    components, validation = [], []
    for c in corpora:
        pieces = open_splits(c, tokenizer, d, workers)
        components.append(Component(c.name, c.weight, Split(pieces["train"], row_len, whole=True)))
        validation.append(Split(pieces["validation"], row_len, whole=False))
    return components, validation, {c.name: identity(c) for c in corpora}


def eval_splits(d: DataConfig, tokenizer: AnyTokenizer, row_len: int, split: str = "validation") -> list[Split]:
    """Every row of `split` of each corpus `config.data` names, in order, for evaluation (prepared first if it
    has to be)."""
    return [Split(open_splits(c, tokenizer, d)[split], row_len, whole=False) for c in resolve(d)]

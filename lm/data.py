"""Corpus -> TFDS dataset (array_record) -> grain pipeline -> packed, shuffled, per-process batches.

A corpus (the bundled tiny Shakespeare, a text file, or a folder of .txt files) is split 90/10 by characters
into train and validation text, each cut into documents at `separator`, and written once as a TFDS dataset in
a cache folder keyed by the source and the settings. Training reads it through a TFDS data source: documents
are shuffled per epoch with a seed, tokenized as [BOS] doc [EOS], concatenated and split into rows of
`max_len + 1` tokens with segment ids and positions, and batched. The iterator's state is a small dict that
orbax saves with every checkpoint, so resume replays exactly the batches that came next.
"""

import hashlib
import importlib.resources
import json
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from grain import experimental as grain_exp

from lm.cli import UserError
from lm.tokenizer import Tokenizer

BUNDLED = "tinyshakespeare.txt"
SPLITS = ("train", "validation")


def bundled_corpus() -> str:
    """Path of the tiny Shakespeare corpus shipped inside the package."""
    return str(importlib.resources.files("lm") / "data" / BUNDLED)


def corpus_files(path: str) -> list[str]:
    """The text files of a corpus: `path` itself, or every .txt file under the folder `path`, sorted."""
    path = path or bundled_corpus()
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"data path {path} does not exist; set --config.data.path to a text file or folder")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.endswith(".txt") and not name.startswith(".")
    )
    if not files:
        raise UserError(f"data folder {path} holds no .txt files; add some or point --config.data.path elsewhere")
    return files


def split_documents(text: str, separator: str, validation_fraction: float) -> dict[str, list[str]]:
    """First (1 - fraction) of the characters -> train, the rest -> validation; each cut into documents."""
    cut = int(len(text) * (1 - validation_fraction))
    parts = {"train": text[:cut], "validation": text[cut:]}
    return {k: [d for d in (v.split(separator) if separator else [v]) if d] for k, v in parts.items()}


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over local text files: splits 'train' and 'validation' of {'text': document}."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, files: list[str], separator: str, validation_fraction: float, **kwargs: Any):
        self._files, self._separator, self._fraction = files, separator, validation_fraction
        settings = {
            "files": [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files],
            "separator": separator,
            "validation_fraction": validation_fraction,
        }
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        stem = os.path.splitext(os.path.basename(files[0]))[0] if len(files) == 1 else "folder"
        config = tfds.core.BuilderConfig(name=f"{stem}-{key}", description=json.dumps(settings))
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        texts = []
        for f in self._files:
            with open(f, "rb") as fh:
                texts.append(fh.read().decode("utf-8", errors="replace"))  # undecodable bytes become U+FFFD
        text = (self._separator or "\n").join(texts)
        if not text.strip():
            raise UserError(f"corpus {', '.join(self._files)} is empty; point --config.data.path at text")
        docs = split_documents(text, self._separator, self._fraction)
        for split, d in docs.items():
            if not d:
                raise UserError(f"corpus {', '.join(self._files)} has no {split} text after a "
                                f"{1 - self._fraction:.0%}/{self._fraction:.0%} split; use a larger corpus")
        return {split: self._generate_examples(d) for split, d in docs.items()}

    def _generate_examples(self, docs: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
        for i, doc in enumerate(docs):
            yield i, {"text": doc}


def build(path: str, separator: str, validation_fraction: float, cache_dir: str) -> TextCorpus:
    """The corpus at `path` as a prepared TFDS dataset under `cache_dir` (built on first use)."""
    files = corpus_files(path)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about custom configs and speaks of downloads
    try:
        builder = TextCorpus(
            files=files, separator=separator, validation_fraction=validation_fraction,
            data_dir=os.path.expanduser(cache_dir or "~/.cache/lm/tfds"),
        )
        if not builder.is_prepared():
            print(f"building dataset from {files[0]}{' and more' if len(files) > 1 else ''} in {builder.data_dir}",
                  flush=True)
            tfds.disable_progress_bar()
            builder.download_and_prepare(file_format="array_record")
    finally:
        absl_logging.set_verbosity(verbosity)
    return builder


def texts(builder: TextCorpus, split: str) -> Iterator[str]:
    """Every document of a split, as text (e.g. to train the tokenizer on)."""
    source = builder.as_data_source(split=split)
    for i in range(len(source)):
        yield source[i]["text"].decode("utf-8")


class _Tokenize(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, record: dict[str, bytes]) -> dict[str, np.ndarray]:
        t = self.tokenizer
        ids = [t.bos_id, *t.encode(record["text"].decode("utf-8")), t.eos_id]
        return {"tokens": np.asarray(ids, np.int32)}


def _rows(docs: grain.IterDataset, row_len: int) -> grain.IterDataset:
    packed = grain_exp.ConcatThenSplitIterDataset(docs, length_struct={"tokens": row_len})
    return packed.map(
        lambda r: {"tokens": r["tokens"], "segment_ids": r["tokens_segment_ids"], "positions": r["tokens_positions"]}
    )


def _read_options() -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # in-process reads are fastest here


def train_iterator(
    builder: TextCorpus, tokenizer: Tokenizer, row_len: int, batch: int, seed: int,
    process_index: int = 0, process_count: int = 1,
) -> grain.DatasetIterator:
    """Endless iterator of this process's training batches {'tokens', 'segment_ids', 'positions'}: [batch, row_len]."""
    source = builder.as_data_source(split="train")
    docs = grain.MapDataset.source(source)[process_index::process_count]
    docs = docs.shuffle(seed=seed).repeat(None).map(_Tokenize(tokenizer)).to_iter_dataset(_read_options())
    return iter(_rows(docs, row_len).batch(batch, drop_remainder=True))


def eval_batches(
    builder: TextCorpus, tokenizer: Tokenizer, row_len: int, batch: int, split: str = "validation",
    process_index: int = 0, process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split in order, in batches of `batch` rows; the last is padded with segment id 0."""
    source = builder.as_data_source(split=split)
    docs = grain.MapDataset.source(source)[process_index::process_count]
    docs = docs.map(_Tokenize(tokenizer)).to_iter_dataset(_read_options())
    for b in _rows(docs, row_len).batch(batch, drop_remainder=False):
        n = b["tokens"].shape[0]
        if n < batch:
            b = {k: np.pad(v, ((0, batch - n), (0, 0))) for k, v in b.items()}
        yield b

"""Corpus -> documents: a TFDS dataset (array_record) of train and validation documents, read by index.

A corpus (the bundled tiny Shakespeare, a text or JSONL file, or a folder of .txt and .jsonl files) becomes
train and validation documents: text is split 90/10 by characters and cut into documents at `separator`; JSONL
rows are documents (their `text_key` field, and a `prompt_key` field for supervised fine-tuning), the last 10%
of them for validation. They are written once as a TFDS dataset in a cache folder keyed by the files and the
settings. A TFDS catalog dataset prepared as array_record is read the same way. batches.py turns documents
into packed batches.
"""

import difflib
import fcntl
import hashlib
import importlib.resources
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import grain
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from tqdm import tqdm

from lm.errors import UserError

BUNDLED = "tinyshakespeare.txt"
SPLITS = ("train", "validation")


def bundled_corpus() -> str:
    """Path of the tiny Shakespeare corpus shipped inside the package."""
    return str(importlib.resources.files("lm.data") / BUNDLED)


FORMATS = {".txt": "text", ".jsonl": "jsonl"}  # file extension -> format


def corpus_files(path: str, data_format: str = "auto") -> list[str]:
    """The files of a corpus: `path` itself, or the files under the folder `path` (sorted) that hold
    `data_format` ('text': .txt, 'jsonl': .jsonl, 'auto': both)."""
    path = path or bundled_corpus()
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"data path {path} does not exist; set --config.data.path to a text file or folder")
    wanted = [ext for ext, f in FORMATS.items() if data_format in ("auto", f)]
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if os.path.splitext(name)[1] in wanted and not name.startswith(".")
    )
    if not files:
        raise UserError(f"data folder {path} holds no {' or '.join(wanted)} files; add some or point "
                        "--config.data.path elsewhere")
    return files


def file_format(path: str, data_format: str) -> str:
    """'text' or 'jsonl': `data_format`, or if 'auto', what the file's extension says (text unless .jsonl)."""
    return data_format if data_format != "auto" else FORMATS.get(os.path.splitext(path)[1], "text")


def read_jsonl(path: str, text_key: str, prompt_key: str = "") -> list[tuple[str, str]]:
    """(prompt, text) of each non-blank line of a JSONL file (prompt '' unless `prompt_key`); a bad row stops
    with one line naming the file and line."""
    rows = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                raise UserError(f"{path} line {n} is not a JSON object ({e}); fix or remove that line") from None
            fields = [k for k in (prompt_key, text_key) if k]
            for key in fields:
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    what = "has no" if not isinstance(row, dict) or key not in row else "has a non-string"
                    name = "config.data.prompt_key" if key == prompt_key else "config.data.text_key"
                    raise UserError(f"{path} line {n} {what} '{key}' field ({name}); fix the row, or set {name} to "
                                    "the field that holds the text")
            rows.append((row[prompt_key] if prompt_key else "", row[text_key]))
    return rows


def read_text(path: str, decode_errors: str = "strict") -> str:
    """A UTF-8 file's text. Undecodable bytes stop with one line ('strict'), or each undecodable sequence is read
    as U+FFFD, with one warning line that counts them ('replace')."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if decode_errors == "strict":
            raise UserError(f"{path} is not UTF-8 text: byte {e.start} (0x{raw[e.start]:02x}) cannot be decoded; "
                            "convert the file to UTF-8, or set --config.data.decode_errors=replace to read "
                            "undecodable bytes as U+FFFD") from None
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        print(f"warning: {path}: {bad} undecodable byte sequence(s), the first at byte {e.start}, read as U+FFFD "
              "(config.data.decode_errors=replace)", file=sys.stderr, flush=True)
        return text


def split_documents(text: str, separator: str, validation_fraction: float) -> dict[str, list[str]]:
    """First (1 - fraction) of the characters -> train, the rest -> validation; each cut into documents."""
    cut = int(len(text) * (1 - validation_fraction))
    parts = {"train": text[:cut], "validation": text[cut:]}
    return {k: [d for d in (v.split(separator) if separator else [v]) if d] for k, v in parts.items()}


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over local text or JSONL files: splits 'train' and 'validation' of {'prompt', 'text'}
    documents ('prompt' is empty unless JSONL rows have a prompt field; the loss skips its tokens)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "JSONL sources and a prompt feature", "1.0.0": "Text files"}

    def __init__(self, *, files: list[str], separator: str, validation_fraction: float, decode_errors: str,
                 data_format: str, text_key: str, prompt_key: str, **kwargs: Any):
        self._files, self._separator, self._fraction = files, separator, validation_fraction
        self._decode_errors, self._format, self._text_key, self._prompt_key = (decode_errors, data_format, text_key,
                                                                               prompt_key)
        settings = {
            "files": [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files],
            "separator": separator,
            "validation_fraction": validation_fraction,
            "decode_errors": decode_errors,
            "format": data_format,
            "text_key": text_key,
            "prompt_key": prompt_key,
        }
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        stem = os.path.splitext(os.path.basename(files[0]))[0] if len(files) == 1 else "folder"
        config = tfds.core.BuilderConfig(name=f"{stem}-{key}", description=json.dumps(settings))
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({"prompt": tfds.features.Text(), "text": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        texts, rows = [], []  # text files are cut by characters, JSONL files by rows
        total = sum(os.path.getsize(f) for f in self._files)
        with tqdm(total=total, desc="reading", unit="B", unit_scale=True, mininterval=0.5, leave=False,
                  file=sys.stdout, disable=None) as progress:  # a progress line on a terminal, none in a log
            for f in self._files:
                if file_format(f, self._format) == "jsonl":
                    rows.extend(read_jsonl(f, self._text_key, self._prompt_key))
                else:
                    texts.append(read_text(f, self._decode_errors))
                progress.update(os.path.getsize(f))
        names = ", ".join(self._files[:3]) + (f" and {len(self._files) - 3} more" if len(self._files) > 3 else "")
        text = (self._separator or "\n").join(texts)
        if not text.strip() and not rows:
            raise UserError(f"corpus {names} is empty; point --config.data.path at text")
        parts = split_documents(text, self._separator, self._fraction) if text.strip() else {"train": [],
                                                                                              "validation": []}
        docs = {split: [("", d) for d in part] for split, part in parts.items()}  # (prompt, text)
        cut = len(rows) - int(round(len(rows) * self._fraction))
        docs["train"] += rows[:cut]
        docs["validation"] += rows[cut:]
        for split, d in docs.items():
            if not d:
                raise UserError(f"corpus {names} has no {split} text after a "
                                f"{1 - self._fraction:.0%}/{self._fraction:.0%} split; use a larger corpus")
        return {split: self._generate_examples(d) for split, d in docs.items()}

    def _generate_examples(self, docs: list[tuple[str, str]]) -> Iterator[tuple[int, dict[str, str]]]:
        for i, (prompt, text) in enumerate(docs):
            yield i, {"prompt": prompt, "text": text}

    def documents(self, split: str) -> grain.MapDataset:
        """The split's documents, {'prompt': bytes, 'text': bytes}, by index."""
        return grain.MapDataset.source(self.as_data_source(split=split))


class CatalogCorpus:
    """A TFDS catalog dataset (e.g. lm1b) prepared as array_record: its `text_key` feature, document by
    document; 'validation' reads `validation_split` (default: 'validation' if the dataset has it, else 'test')."""

    def __init__(self, name: str, data_dir: str, text_key: str, validation_split: str = "", download: bool = False):
        data_dir = os.path.expanduser(data_dir or "~/tensorflow_datasets")
        try:
            self.builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            known = tfds.list_builders(with_community_datasets=False)  # (community ones would look them up online)
            close = difflib.get_close_matches(name.split(":")[0].split("/")[0], known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"config.data.tfds_name={name} is not a TFDS dataset{hint}, nor prepared in {data_dir}; "
                            "see tfds.list_builders()") from None
        if not self.builder.is_prepared():
            how = (f"prepare it where there is network: tfds.builder('{name}', data_dir='{data_dir}', "
                   "file_format='array_record').download_and_prepare()")
            if not download:
                raise UserError(f"TFDS dataset {name} is not prepared in {data_dir}; {how}, or set "
                                "--config.data.tfds_download=True")
            try:
                self.builder.download_and_prepare()
            except Exception as e:  # noqa: BLE001 (network, checksum or disk errors of every kind)
                raise UserError(f"TFDS dataset {name} could not be downloaded to {data_dir} "
                                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); {how}") from None
        splits = list(self.builder.info.splits)
        self.splits = {"train": "train",
                       "validation": validation_split or ("validation" if "validation" in splits else "test")}
        for split in self.splits.values():
            if split not in splits:
                raise UserError(f"TFDS dataset {name} has no split '{split}' (it has {', '.join(splits)}); set "
                                "config.data.tfds_validation_split")
        features = sorted(self.builder.info.features.keys())
        if text_key not in features:
            raise UserError(f"TFDS dataset {name} has no feature '{text_key}' (it has {', '.join(features)}); set "
                            "config.data.text_key")
        self.name, self.text_key = name, text_key

    def documents(self, split: str) -> grain.MapDataset:
        """The split's documents, {'prompt': b'', 'text': bytes}, by index."""
        try:
            source = self.builder.as_data_source(split=self.splits[split])
        except NotImplementedError as e:  # prepared as tfrecord, which has no random access
            raise UserError(f"TFDS dataset {self.name} is prepared as tfrecord, not array_record ({e}); prepare it "
                            "again with file_format='array_record'") from None
        key = self.text_key
        return grain.MapDataset.source(source).map(lambda r: {"prompt": b"", "text": _as_bytes(r[key])})


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


Corpus = TextCorpus | CatalogCorpus


def open_corpus(d: Any) -> Corpus:
    """The corpus that `config.data` (or a saved run's copy of it) names: a TFDS catalog dataset if it sets
    tfds_name, else local files built into the cache."""
    if d.get("tfds_name"):
        return CatalogCorpus(d["tfds_name"], d.get("tfds_data_dir", ""), d.get("text_key", "text"),
                             d.get("tfds_validation_split", ""), d.get("tfds_download", False))
    return build(d["path"], d["separator"], d["validation_fraction"], d["cache_dir"],
                 decode_errors=d.get("decode_errors", "replace"),  # runs saved before the setting replaced bytes
                 data_format=d.get("format", "auto"), text_key=d.get("text_key", "text"),
                 prompt_key=d.get("prompt_key", ""))


def build(path: str, separator: str, validation_fraction: float, cache_dir: str, *, decode_errors: str = "strict",
          data_format: str = "auto", text_key: str = "text", prompt_key: str = "") -> TextCorpus:
    """The corpus at `path` as a prepared TFDS dataset under `cache_dir` (built on first use, rebuilt when the
    files or settings change). See `config.data` in lm/config.py for what each setting means."""
    files = corpus_files(path, data_format)
    root = os.path.expanduser(cache_dir or "~/.cache/lm/tfds")
    os.makedirs(root, exist_ok=True)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about custom configs and speaks of downloads
    try:
        with open(os.path.join(root, ".build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # processes sharing a cache build once, one at a time
            builder = TextCorpus(files=files, separator=separator, validation_fraction=validation_fraction,
                                 decode_errors=decode_errors, data_format=data_format, text_key=text_key,
                                 prompt_key=prompt_key, data_dir=root, file_format="array_record")
            if not builder.is_prepared():
                print(f"building dataset from {files[0]}{' and more' if len(files) > 1 else ''} in "
                      f"{builder.data_dir}", flush=True)
                tfds.disable_progress_bar()
                builder.download_and_prepare()
    finally:
        absl_logging.set_verbosity(verbosity)
    return builder


def texts(corpus: Corpus, split: str) -> Iterator[str]:
    """Every document of a split, as text: its prompt (if any) and text (e.g. to train the tokenizer on). Read by
    index, which is faster than a grain iterator over the same documents."""
    docs = corpus.documents(split)
    for i in range(len(docs)):
        doc = docs[i]
        yield (doc["prompt"] + doc["text"]).decode("utf-8")



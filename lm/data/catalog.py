"""A TFDS catalog dataset (e.g. lm1b) prepared as array_record, as a source of documents for preparation:
its `text_key` feature, its 'train' split for training and `validation_split` (default: 'validation' if the
dataset has one, else 'test') for validation, each cut into tasks of `DOCS_PER_TASK` documents."""

import dataclasses
import difflib
import os
from collections.abc import Iterator
from typing import Any

from lm.data.documents import SPLITS, Document, Task
from lm.errors import UserError

DOCS_PER_TASK = 100_000


def _builder(name: str, data_dir: str, download: bool) -> Any:
    """The dataset's TFDS builder, prepared (downloaded first if `download`); one line if it cannot be."""
    import tensorflow_datasets as tfds  # only where a catalog dataset is read

    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)  # (community ones would look them up online)
        close = difflib.get_close_matches(name.split(":")[0].split("/")[0], known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"config.data.tfds_name={name} is not a TFDS dataset{hint}, nor prepared in {data_dir}; "
                        "see tfds.list_builders()") from None
    if not builder.is_prepared():
        how = (f"prepare it where there is network: tfds.builder('{name}', data_dir='{data_dir}', "
               "file_format='array_record').download_and_prepare()")
        if not download:
            raise UserError(f"TFDS dataset {name} is not prepared in {data_dir}; {how}, or set "
                            "--config.data.tfds_download=True")
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 (network, checksum or disk errors of every kind)
            raise UserError(f"TFDS dataset {name} could not be downloaded to {data_dir} "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); {how}") from None
    return builder


@dataclasses.dataclass(frozen=True)
class CatalogSource:
    """A TFDS catalog dataset's text feature; checked (prepared, has the splits and the feature) when made."""

    name: str
    data_dir: str
    text_key: str
    splits: tuple[tuple[str, str], ...]  # (our split, the dataset's split)

    @classmethod
    def open(cls, name: str, data_dir: str, text_key: str, validation_split: str = "",
             download: bool = False) -> "CatalogSource":
        data_dir = os.path.expanduser(data_dir or "~/tensorflow_datasets")
        builder = _builder(name, data_dir, download)
        have = list(builder.info.splits)
        splits = {"train": "train", "validation": validation_split or ("validation" if "validation" in have
                                                                       else "test")}
        for split in splits.values():
            if split not in have:
                raise UserError(f"TFDS dataset {name} has no split '{split}' (it has {', '.join(have)}); set "
                                "config.data.tfds_validation_split")
        features = sorted(builder.info.features.keys())
        if text_key not in features:
            raise UserError(f"TFDS dataset {name} has no feature '{text_key}' (it has {', '.join(features)}); set "
                            "config.data.text_key")
        return cls(name, data_dir, text_key, tuple(splits.items()))

    def _source(self, split: str) -> Any:
        builder = _builder(self.name, self.data_dir, False)
        try:
            return builder.as_data_source(split=dict(self.splits)[split])
        except NotImplementedError as e:  # prepared as tfrecord, which has no random access
            raise UserError(f"TFDS dataset {self.name} is prepared as tfrecord, not array_record ({e}); prepare it "
                            "again with file_format='array_record'") from None

    def describe(self) -> str:
        return f"TFDS dataset {self.name}"

    def identity(self) -> dict[str, Any]:
        builder = _builder(self.name, self.data_dir, False)
        return {"tfds": self.name, "version": str(builder.version), "data_dir": self.data_dir,
                "text_key": self.text_key, "splits": [list(s) for s in self.splits]}

    def changed(self, saved: dict[str, Any]) -> str:
        now = self.identity()
        return "" if now == saved else f"TFDS dataset {self.name} is now version {now['version']}"

    def tasks(self) -> list[Task]:
        """Tasks over document indices; `path` names the split."""
        out = []
        for split in SPLITS:
            n = len(self._source(split))
            out += [Task(split, "tfds", a, min(a + DOCS_PER_TASK, n)) for a in range(0, n, DOCS_PER_TASK)]
        return out

    def task_bytes(self, task: Task) -> int:
        return task.end - task.start  # documents, for progress

    def parts(self, task: Task) -> Iterator[dict[str, list[Document]]]:
        source, key = self._source(task.path), self.text_key
        docs = []
        for i in range(task.start, task.end):
            text = source[i][key]
            docs.append(("", text.decode("utf-8") if isinstance(text, bytes) else str(text)))
        yield {split: docs if split == task.path else [] for split in SPLITS}

    def train_texts(self, limit: int = 0) -> Iterator[str]:
        source, taken = self._source("train"), 0
        for i in range(len(source)):
            text = source[i][self.text_key]
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            yield text
            taken += len(text)
            if limit and taken >= limit:
                return

"""One task of a corpus file -> its train and validation documents, per format: text cut at the separator,
JSONL rows (plain or gzip-compressed, read in parts of about `UNIT_BYTES`) and Parquet row groups (by pyarrow).
Each part holds out its last `validation_fraction` of characters (text) or rows (JSONL, Parquet) for
validation, so the split is fixed by the files alone, whatever the number of workers."""

import dataclasses
import gzip
import json
import sys
from collections.abc import Iterator
from typing import Any

from lm.errors import UserError

SPLITS = ("train", "validation")
UNIT_BYTES = 16 << 20  # a task's (or a compressed file's part's) bytes of source text
Document = tuple[str, str]  # (prompt, text); the prompt is '' unless config.data.prompt_key reads one
DECODE_ERRORS = ("strict", "replace")  # bytes that are not UTF-8: stop, naming file and offset | U+FFFD


@dataclasses.dataclass(frozen=True)
class Settings:
    """How files become documents: config.data's keys of the same names (lm/data/config.py)."""

    separator: str
    validation_fraction: float
    decode_errors: str
    format: str
    text_key: str
    prompt_key: str

    @classmethod
    def of(cls, d: Any) -> "Settings":
        """The settings of a DataConfig."""
        return cls(**{f.name: getattr(d, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of preparation: bytes [start, end) of a text or JSONL file, row groups [start, end) of a
    Parquet file, or a whole compressed file (start = end = 0)."""

    path: str
    format: str
    start: int = 0
    end: int = 0


def _split_rows(rows: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    cut = len(rows) - int(round(len(rows) * fraction))
    return rows[:cut], rows[cut:]


def split_documents(text: str, separator: str, validation_fraction: float) -> dict[str, list[str]]:
    """First (1 - fraction) of the characters -> train, the rest -> validation; each cut into documents."""
    cut = int(len(text) * (1 - validation_fraction))
    parts = {"train": text[:cut], "validation": text[cut:]}
    return {k: [d for d in (v.split(separator) if separator else [v]) if d] for k, v in parts.items()}


def _decode(raw: bytes, path: str, offset: int, decode_errors: str, warn: bool = True) -> str:
    """UTF-8 bytes of `path` (from byte `offset`) as text; undecodable bytes stop with one line ('strict') or
    are read as U+FFFD with one warning line ('replace'; none unless `warn`)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        if decode_errors == "strict":
            raise UserError(f"{path} is not UTF-8 text: byte {at} (0x{raw[e.start]:02x}) cannot be decoded; "
                            "convert the file to UTF-8, or read undecodable bytes as U+FFFD: "
                            "--config.data.decode_errors=replace (lm.evaluate: --decode_errors=replace)") from None
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        if warn:
            print(f"warning: {path}: {bad} undecodable byte sequence(s), the first at byte {at}, read as U+FFFD "
                  "(config.data.decode_errors=replace)", file=sys.stderr, flush=True)
        return text


def _row(line: bytes, s: Settings, where: Any) -> Document:
    """(prompt, text) of one JSONL row; a bad row stops with one line naming the file and line (`where()`)."""
    try:
        row = json.loads(line)
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"{where()} is not a JSON object ({e}); fix or remove that line") from None
    for key in (k for k in (s.prompt_key, s.text_key) if k):
        if not isinstance(row, dict) or not isinstance(row.get(key), str):
            what = "has no" if not isinstance(row, dict) or key not in row else "has a non-string"
            name = "config.data.prompt_key" if key == s.prompt_key else "config.data.text_key"
            raise UserError(f"{where()} {what} '{key}' field ({name}); fix the row, or set {name} to the field "
                            "that holds the text")
    return (row[s.prompt_key] if s.prompt_key else "", row[s.text_key])


def _jsonl_rows(lines: list[bytes], s: Settings, path: str, first_line: Any) -> list[Document]:
    """The documents of JSONL lines; `first_line()` is the file's line number of lines[0] (counted on error)."""
    rows = []
    for n, line in enumerate(lines):
        if line.strip():
            rows.append(_row(line, s, lambda n=n: f"{path} line {first_line() + n}"))
    return rows


def _line_number(path: str, offset: int) -> int:
    """The line number (from 1) of the line that starts at byte `offset` of `path`."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def parts(task: Task, s: Settings, warn: bool = True) -> Iterator[dict[str, list[Document]]]:
    """The task's parts, in order, each {'train': documents, 'validation': documents} (`warn`: of bytes read as
    U+FFFD)."""
    if task.format in ("text", "jsonl"):
        with open(task.path, "rb") as f:
            f.seek(task.start)
            raw = f.read(task.end - task.start)
        if task.format == "jsonl":
            rows = _jsonl_rows(raw.split(b"\n"), s, task.path, lambda: _line_number(task.path, task.start))
            yield dict(zip(SPLITS, _split_rows(rows, s.validation_fraction), strict=True))
        else:
            docs = split_documents(_decode(raw, task.path, task.start, s.decode_errors, warn), s.separator,
                                   s.validation_fraction)
            yield {k: [("", d) for d in v] for k, v in docs.items()}
    elif task.format == "jsonl.gz":
        yield from _gzip_parts(task.path, s)
    else:
        yield dict(zip(SPLITS, _split_rows(_parquet_rows(task, s), s.validation_fraction), strict=True))


def _gzip_parts(path: str, s: Settings) -> Iterator[dict[str, list[Document]]]:
    """A gzip-compressed JSONL file in parts of about UNIT_BYTES of its decompressed rows."""
    lines, size, first = [], 0, 1
    try:
        with gzip.open(path, "rb") as f:
            for line in f:
                lines.append(line)
                size += len(line)
                if size >= UNIT_BYTES:
                    rows = _jsonl_rows(lines, s, path, lambda first=first: first)
                    yield dict(zip(SPLITS, _split_rows(rows, s.validation_fraction), strict=True))
                    first += len(lines)
                    lines, size = [], 0
    except (OSError, EOFError) as e:  # not gzip, or cut short
        raise UserError(f"{path} is not a whole gzip file ({e}); download it again or remove it") from None
    if lines or first == 1:
        rows = _jsonl_rows(lines, s, path, lambda: first)
        yield dict(zip(SPLITS, _split_rows(rows, s.validation_fraction), strict=True))


def _parquet(path: str) -> Any:
    import pyarrow.parquet as pq  # only where Parquet is read

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 (pyarrow's errors for a file that is not Parquet)
        raise UserError(f"{path} is not a Parquet file ({str(e).splitlines()[0][:200]}); remove it or convert "
                        "it") from None


def row_group_ranges(path: str, s: Settings) -> list[tuple[int, int]]:
    """Row groups [a, b) of a Parquet file, about UNIT_BYTES each; checks the file has the text columns."""
    f = _parquet(path)
    names = f.schema_arrow.names
    for key, name in ((s.text_key, "text_key"), (s.prompt_key, "prompt_key")):
        if key and key not in names:
            raise UserError(f"{path} has no column '{key}' (it has {', '.join(names)}); set config.data.{name} to "
                            "the column that holds the text")
    ranges, start, size = [], 0, 0
    for g in range(f.metadata.num_row_groups):
        size += f.metadata.row_group(g).total_byte_size
        if size >= UNIT_BYTES:
            ranges.append((start, g + 1))
            start, size = g + 1, 0
    if start < f.metadata.num_row_groups or not ranges:
        ranges.append((start, f.metadata.num_row_groups))
    return ranges


def parquet_bytes(task: Task) -> int:
    f = _parquet(task.path)
    return sum(f.metadata.row_group(g).total_byte_size for g in range(task.start, task.end))


def _parquet_rows(task: Task, s: Settings) -> list[Document]:
    columns = [k for k in (s.prompt_key, s.text_key) if k]
    table = _parquet(task.path).read_row_groups(list(range(task.start, task.end)), columns=columns)
    texts = table.column(s.text_key).to_pylist()
    prompts = table.column(s.prompt_key).to_pylist() if s.prompt_key else [""] * len(texts)
    return [(p or "", t) for p, t in zip(prompts, texts, strict=True) if t]

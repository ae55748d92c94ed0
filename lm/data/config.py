"""DataConfig: `config.data`, what a run reads and how (each key with its default and meaning), and its checks."""

import dataclasses

from lm.data import sources
from lm.data.documents import DECODE_ERRORS
from lm.section import key, require

FORMATS = ("auto", *dict.fromkeys(sources.EXTENSIONS.values()))  # auto: by each file's extension
TOKEN_DTYPES = ("auto", "uint16", "uint32")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The corpus (or mixture, or TFDS dataset) a run trains and validates on, and how its files are read."""

    path: str = key("", "text, JSONL (.jsonl, .jsonl.gz, .json.gz) or Parquet files: a file, folder or glob; a "
                        "prepared folder (lm.prepare); or token files (.bin) read in place ('' = the bundled tiny "
                        "Shakespeare)")
    mixture: str = key("", "several corpora with weights instead of path: 'PATH:WEIGHT,PATH:WEIGHT'")
    format: str = key("auto", "auto (by extension) | text | jsonl | jsonl.gz | parquet")
    text_key: str = key("text", "the JSONL field, Parquet column (or TFDS feature) that holds a document's text")
    prompt_key: str = key("", "a field read before the text whose tokens the loss skips (supervised fine-tuning)")
    separator: str = key("\n\n", "text is cut into documents here")
    validation_fraction: float = key(0.1, "the last characters of text, or the last rows, of each part held out")
    cache_dir: str = key("", "where corpora are prepared as token shards ('' = ~/.cache/lm/data)")
    workers: int = key(0, "processes that prepare a corpus (0: one per core)")
    token_dtype: str = key("auto", "token files (.bin): uint16 | uint32 (auto: uint16 up to 65,536 ids)")
    decode_errors: str = key("strict", "bytes that are not UTF-8: strict (stop, naming file and offset) | replace "
                                       "(U+FFFD)")
    tfds_name: str = key("", "a TFDS catalog dataset instead (e.g. 'lm1b'), prepared as array_record in "
                             "tfds_data_dir")
    tfds_data_dir: str = key("", "'' = ~/tensorflow_datasets")
    tfds_validation_split: str = key("", "'' = 'validation', else 'test'")
    tfds_download: bool = key(False, "download and prepare a TFDS dataset that is not prepared")
    ahead: int = key(2, "batches a background thread prepares while the train step runs (0: between steps)")

    def __post_init__(self) -> None:
        require(self.ahead >= 0, f"config.data.ahead must be >= 0 (0: no background thread), got {self.ahead}")
        require(self.workers >= 0, f"config.data.workers must be >= 0 (0: one per core), got {self.workers}")
        require(self.token_dtype in TOKEN_DTYPES,
                f"config.data.token_dtype must be auto, uint16 or uint32, got {self.token_dtype!r}")
        require(not (self.mixture and (self.path or self.tfds_name)),
                "set config.data.mixture or config.data.path (or tfds_name), not both")
        require(self.format in FORMATS, f"config.data.format must be one of {FORMATS}, got {self.format!r}")
        require(bool(self.text_key), "config.data.text_key must name the JSONL field that holds the text")
        require(not (self.path and self.tfds_name),
                "set config.data.path (local files) or config.data.tfds_name (a TFDS dataset), not both")
        require(self.decode_errors in DECODE_ERRORS,
                f"config.data.decode_errors must be one of {DECODE_ERRORS}, got {self.decode_errors!r}")
        f = self.validation_fraction
        require(0 < f < 1, f"config.data.validation_fraction must be in (0, 1), got {f}")

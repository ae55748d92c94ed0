"""`python -m lm.prepare --config configs/NAME.py [--config.KEY=VALUE ...] [--out DIR] [--workers N]`: the
corpus of `config.data`, tokenized with the tokenizer a fresh run of the config would take, into token shards:
where `lm.train` looks for them (its cache folder), or in `--out` (then train on it with
`--config.data.path=DIR`). Training prepares on first use as well; this command does it ahead, on a machine of
its own if need be, with a progress line. A folder prepared before is checked, every shard's bytes against
its checksum, and a damaged shard is prepared again."""

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/shakespeare_char.py.")
flags.DEFINE_string("out", "", "Folder to prepare into (default: the cache folder lm.train reads).")
flags.DEFINE_integer("workers", 0, "Processes that tokenize (default: config.data.workers; 0: one per core).")

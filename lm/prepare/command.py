"""`python -m lm.prepare --config configs/NAME.py [--config.KEY=VALUE ...] [--out DIR] [--workers N]`: the
corpus of `config.data`, tokenized with the tokenizer a fresh run of the config would take, into token shards:
where `lm.train` looks for them (its cache folder), or in `--out` (then train on it with
`--config.data.path=DIR`). Training prepares on first use as well; this command does it ahead, on a machine of
its own if need be, with a progress line. A folder prepared before is checked, every shard's bytes against
its checksum, and a damaged shard is prepared again."""

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from lm import config as config_lib
from lm.data import corpus, prepare
from lm.errors import UserError

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/shakespeare_char.py.")
flags.DEFINE_string("out", "", "Folder to prepare into (default: the cache folder lm.train reads).")
flags.DEFINE_integer("workers", 0, "Processes that tokenize (default: config.data.workers; 0: one per core).")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None:
        raise UserError("usage: python -m lm.prepare --config configs/NAME.py [--out DIR]")
    config_lib.validate(f.config)
    d = f.config.data
    tokenizer = corpus.fresh_tokenizer(d, f.config.tokenizer)
    corpora = corpus.resolve(d)
    if f.out and len(corpora) > 1:
        raise UserError("--out takes one corpus; prepare a mixture's corpora one by one, or into the cache")
    for c in corpora:
        if c.source is None:
            print(f"{c.name} is read in place (prepared already, or token files): nothing to prepare")
            continue
        out = f.out or corpus.prepared_folder(c, tokenizer, d)
        flag = "--out" if f.out else "the cache folder"
        manifest = prepare.prepare(c.source, tokenizer, out, f.workers or d.workers, flag, checksums=True)
        s = manifest["splits"]
        print(f"{c.name}: {s['train']['tokens']:,} train and {s['validation']['tokens']:,} validation tokens in "
              f"{len(manifest['shards'])} shard(s) at {out}")

"""The work of `python -m lm.prepare` (its usage and flags: options.py)."""

from collections.abc import Sequence

from absl import flags

from lm import config as config_lib
from lm.data import corpus, prepare
from lm.errors import UserError


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None:
        raise UserError("usage: python -m lm.prepare --config configs/NAME.py [--out DIR]")
    run = config_lib.build(f.config)
    d = run.data
    tokenizer = corpus.fresh_tokenizer(d, run.tokenizer)
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

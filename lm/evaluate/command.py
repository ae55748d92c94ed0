"""`python -m lm.evaluate --workdir DIR [--step N] [--split validation|train] [--data_path P] [--cache_dir D]`:
one JSON line of the checkpoint's loss, perplexity and bits per byte (which data it scores goes to stderr)."""

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from lm.backends import select
from lm.checkpoint.reader import read, require_tokenizer
from lm.data import batches, corpus
from lm.data.documents import SPLITS
from lm.evaluate.scoring import evaluate, make_eval_step
from lm.parallel.mesh import make_layout

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_enum("split", "validation", SPLITS, "Split to evaluate.")
flags.DEFINE_string("data_path", "", "Text to evaluate on, as config.data.path takes it (default: the run's data).")
flags.DEFINE_string("cache_dir", "", "Folder for the prepared data (default: ~/.cache/lm/data).")


def _data_settings(saved: dict[str, Any], data_path: str, cache_dir: str) -> dict[str, Any]:
    """The run's data settings with the reader's own cache folder (never one a workdir names: it would choose
    where this command writes) and no downloads; `data_path` (if given) in place of the run's data."""
    d = dict(saved, cache_dir=cache_dir, tfds_download=False)
    if data_path:
        d.update(path=data_path, tfds_name="", mixture="")
    return d


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    step, params, model_config, tokenizer, run = read(f.workdir, f.step, lambda run: make_layout(run["mesh"]))
    tokenizer = require_tokenizer(tokenizer, f.workdir)
    layout = make_layout(run["mesh"])
    model = select.model(model_config)
    d = _data_settings(run["data"], f.data_path, f.cache_dir)
    what = (f"TFDS dataset {d['tfds_name']}" if d.get("tfds_name")
            else d.get("mixture") or d["path"] or "the bundled corpus")
    whose = "the given --data_path" if f.data_path else "the run's data; --data_path chooses other data"
    print(f"evaluating the {f.split} split of {what} ({whose})", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the result alone
        splits = corpus.eval_splits(d, tokenizer, model_config.max_len + 1, f.split)
    eval_step = make_eval_step(model, tokenizer.token_bytes(len(d["separator"].encode())), layout)
    rows = batches.eval_batches(splits, run["train"]["batch_size"], jax.process_index(), jax.process_count())
    result = {"step": step, "split": f.split, **evaluate(eval_step, params, rows, layout)}
    print(json.dumps(result))

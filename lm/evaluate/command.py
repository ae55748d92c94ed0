"""The work of `python -m lm.evaluate` (its usage and flags: options.py)."""

import contextlib
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags

from lm.backends import select
from lm.checkpoint.reader import read, require_tokenizer
from lm.config import RunConfig
from lm.data import batches, corpus
from lm.data.config import DataConfig
from lm.errors import UserError
from lm.evaluate import tasks as tasks_lib
from lm.evaluate.loglikelihood import make_token_scores, score_encoded
from lm.evaluate.scoring import evaluate, make_eval_step
from lm.parallel.mesh import run_layout


def _data_settings(saved: DataConfig, data_path: str, cache_dir: str, decode_errors: str | None) -> DataConfig:
    """The run's data settings with the reader's own cache folder (never one a workdir names: it would choose
    where this command writes) and no downloads; `data_path` and `decode_errors` (if given) in place of the
    run's."""
    d = dataclasses.replace(saved, cache_dir=cache_dir, tfds_download=False)
    if data_path:
        d = dataclasses.replace(d, path=data_path, tfds_name="", mixture="")
    if decode_errors:
        d = dataclasses.replace(d, decode_errors=decode_errors)
    return d


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.harness:
        from lm.evaluate.harness import run_harness

        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the result alone
            result = run_harness(f.workdir, f.step, f.harness, f.harness_include, f.batch_size or 8, f.limit)
        print(json.dumps(result, default=str))
        return
    step, params, model_config, tokenizer, run = read(f.workdir, f.step, run_layout)
    tokenizer = require_tokenizer(tokenizer, f.workdir)
    layout = run_layout(run)
    model = select.model(model_config)
    saved = RunConfig.from_dict(run) if "train" in run else None  # None: imported weights
    batch_size = f.batch_size or (saved.train.batch_size if saved else 8)
    if f.tasks:
        files = tasks_lib.task_files(f.tasks)
        print(f"scoring {len(files)} task(s): {', '.join(map(tasks_lib.task_name, files))}", file=sys.stderr,
              flush=True)
        token_scores, max_len = make_token_scores(model, layout), model_config.max_len

        def score(part: tasks_lib.Task) -> list[tasks_lib.Score]:
            encoded = tasks_lib.encode_tasks(tokenizer, [part], max_len)
            return score_encoded(token_scores, params, encoded, max_len, batch_size, layout)

        say = functools.partial(print, file=sys.stderr, flush=True)
        results = {tasks_lib.task_name(path): tasks_lib.stream_task(path, score, say) for path in files}
        mean_acc = float(np.mean([m["acc"] for m in results.values()]))
        print(json.dumps({"step": step, "tasks": results, "mean_acc": mean_acc}))
        return
    if saved is None and not f.data_path:
        raise UserError(f"{f.workdir} holds imported weights and no data of its own; give --data_path (text to "
                        "score) or --tasks")
    d = _data_settings(saved.data if saved else DataConfig(), f.data_path, f.cache_dir, f.decode_errors)
    what = f"TFDS dataset {d.tfds_name}" if d.tfds_name else d.mixture or d.path or "the bundled corpus"
    whose = "the given --data_path" if f.data_path else "the run's data; --data_path chooses other data"
    print(f"evaluating the {f.split} split of {what} ({whose})", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the result alone
        splits = corpus.eval_splits(d, tokenizer, model_config.max_len + 1, f.split)
    eval_step = make_eval_step(model, tokenizer.token_bytes(len(d.separator.encode())), layout)
    rows = batches.eval_batches(splits, batch_size, jax.process_index(), jax.process_count())
    result = {"step": step, "split": f.split, **evaluate(eval_step, params, rows, layout)}
    print(json.dumps(result))

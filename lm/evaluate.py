"""`python -m lm.evaluate --workdir DIR`: loss, perplexity and bits per byte of a checkpoint on a split.

Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the text the scored tokens stand for,
so they compare across tokenizers.
"""

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from lm import cli, data, objective
from lm import sharding as shd
from lm import state as state_lib
from lm.checkpoint import read, require_tokenizer
from lm.model import TransformerLM

EvalStep = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def make_eval_step(model: TransformerLM, token_bytes: np.ndarray, layout: shd.Layout) -> EvalStep:
    """A jitted `(params, batch) -> {'nll', 'tokens', 'bytes'}` of summed figures."""
    token_bytes = jnp.asarray(token_bytes)

    def eval_step(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        nll, _, mask, targets = objective.token_nll(model, params, batch)
        return {"nll": (nll * mask).sum(), "tokens": mask.sum(), "bytes": (token_bytes[targets] * mask).sum()}

    params_sh = jax.tree.map(lambda s: s.sharding, state_lib.abstract_params(model, layout))
    jitted = jax.jit(eval_step, in_shardings=(params_sh, layout.batch_sharding()))

    def run(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        with layout.scope():
            return jitted(params, batch)

    return run


def evaluate(eval_step: EvalStep, params: Any, batches: Iterable[dict[str, np.ndarray]],
             layout: shd.Layout) -> dict[str, float]:
    """Loss, perplexity and bits per byte over `batches` (this process's rows of each)."""
    totals = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
    for batch in batches:
        out = jax.device_get(eval_step(params, layout.global_batch(batch)))
        totals = {k: totals[k] + float(out[k]) for k in totals}
    if not totals["tokens"]:
        raise cli.UserError("the evaluation split holds no tokens to score; use a larger corpus")
    loss = totals["nll"] / totals["tokens"]
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": totals["nll"] / math.log(2) / totals["bytes"],
        "tokens": int(totals["tokens"]),
    }


def _data_settings(saved: dict[str, Any], data_path: str, cache_dir: str) -> dict[str, Any]:
    """The run's data settings with the reader's own cache folder (never one a workdir names: it would choose
    where this command writes) and no downloads; `data_path` (if given) in place of the run's data."""
    d = dict(saved, cache_dir=cache_dir, tfds_download=False)
    if data_path:
        d.update(path=data_path, tfds_name="")
    return d


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    step, params, model_config, tokenizer, run = read(f.workdir, f.step, lambda run: shd.make_layout(run["mesh"]))
    tokenizer = require_tokenizer(tokenizer, f.workdir)
    layout = shd.make_layout(run["mesh"])
    model = TransformerLM(model_config)
    d = _data_settings(run["data"], f.data_path, f.cache_dir)
    what = f"TFDS dataset {d['tfds_name']}" if d.get("tfds_name") else d["path"]
    whose = "the given --data_path" if f.data_path else "the run's data; --data_path chooses other data"
    print(f"evaluating the {f.split} split of {what} ({whose})", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the result alone
        corpus = data.open_corpus(d)
    eval_step = make_eval_step(model, tokenizer.token_bytes(len(d["separator"].encode())), layout)
    rows = data.eval_batches(corpus, tokenizer, model_config.max_len + 1, run["train"]["batch_size"], d["shards"],
                             jax.process_index(), jax.process_count(), f.split)
    result = {"step": step, "split": f.split, **evaluate(eval_step, params, rows, layout)}
    print(json.dumps(result))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_enum("split", "validation", data.SPLITS, "Split to evaluate.")
    flags.DEFINE_string("data_path", "", "Text to evaluate on, as config.data.path takes it (default: the run's data).")
    flags.DEFINE_string("cache_dir", "", "Folder for the prepared dataset (default: ~/.cache/lm/tfds).")
    cli.run(main)

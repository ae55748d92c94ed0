"""Loss, perplexity and bits per byte of parameters on batches of packed rows (for training's evaluations and
`python -m lm.evaluate`). Bits per byte divide the summed loss (in bits) by the UTF-8 bytes of the text the
scored tokens stand for (an EOS stands for the document separator), so they compare across tokenizers."""

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.model import objective
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout
from lm.parallel.placement import abstract_params

EvalStep = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def make_eval_step(model: TransformerLM, token_bytes: np.ndarray, layout: Layout) -> EvalStep:
    """A jitted `(params, batch) -> {'nll', 'tokens', 'bytes'}` of summed figures."""
    token_bytes = jnp.asarray(token_bytes)

    def eval_step(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        nll, _, mask, targets = objective.token_nll(model, params, batch)
        return {"nll": (nll * mask).sum(), "tokens": mask.sum(), "bytes": (token_bytes[targets] * mask).sum()}

    params_sh = jax.tree.map(lambda s: s.sharding, abstract_params(model, layout))
    jitted = jax.jit(eval_step, in_shardings=(params_sh, layout.batch_sharding()))

    def run(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        with layout.scope():
            return jitted(params, batch)

    return run


def evaluate(eval_step: EvalStep, params: Any, batches: Iterable[dict[str, np.ndarray]],
             layout: Layout) -> dict[str, float]:
    """Loss, perplexity and bits per byte over `batches` (this process's rows of each)."""
    totals = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
    for batch in batches:
        out = jax.device_get(eval_step(params, layout.global_batch(batch)))
        totals = {k: totals[k] + float(out[k]) for k in totals}
    if not totals["tokens"]:
        raise UserError("the evaluation split holds no tokens to score; use a larger corpus")
    loss = totals["nll"] / totals["tokens"]
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": totals["nll"] / math.log(2) / totals["bytes"],
        "tokens": int(totals["tokens"]),
    }

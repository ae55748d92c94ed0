"""Whether a checkpoint serves a run config: resuming needs the same model, tokenizer settings, batch size and
optimizer; `config.init_from` needs a model of the same shape and converts its layer layout and vocabulary
padding."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lm.checkpoint.integrity import Damaged
from lm.checkpoint.manager import Checkpointer
from lm.checkpoint.reader import open_run, require_tokenizer
from lm.errors import UserError
from lm.model import tree
from lm.model.config import ModelConfig
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout
from lm.parallel.placement import abstract_params
from lm.tokenizer.kinds import AnyTokenizer


def check_compatible(saved: dict[str, Any], current: ModelConfig, tokenizer: dict[str, Any], batch_size: int,
                     optimizer_state: str, workdir: str) -> None:
    """Stops with one line when a workdir's checkpoint (its meta) holds a model of another shape, was trained
    with other tokenizer settings than `tokenizer` (config.tokenizer) or another batch size (the step counts
    the tokens and the data position), or holds an optimizer state in another format than `optimizer_state`
    (another optimizer, or one written by an older lm)."""
    model = ModelConfig.from_dict(saved["model"]).to_dict()  # older checkpoints: fields added since take defaults
    if model != current.to_dict():
        diff = ", ".join(f"{k}: saved {model.get(k)}, config {v}" for k, v in current.to_dict().items()
                         if model.get(k) != v)
        raise UserError(f"{workdir} holds a checkpoint of another model ({diff}); use a new --workdir or the saved "
                        "settings")
    was = saved.get("config", {}).get("tokenizer") or {}
    diff = ", ".join(f"{k}: saved {was[k]!r}, config {v!r}" for k, v in tokenizer.items() if k in was and was[k] != v)
    if diff:  # (settings added since an older checkpoint was written are not compared)
        raise UserError(f"{workdir} holds a run trained with another tokenizer ({diff}); use a new --workdir or the "
                        "saved settings")
    was_batch = saved.get("config", {}).get("train", {}).get("batch_size", batch_size)
    if was_batch != batch_size:
        raise UserError(f"{workdir} holds a run trained with batch size {was_batch}, not {batch_size}; resume with "
                        f"--config.train.batch_size={was_batch}, or continue from its parameters with "
                        f"--config.init_from={workdir} and a new --workdir")
    found = saved.get("optimizer_state")
    if found != optimizer_state:
        written = repr(found) if found else "that of an older lm"
        raise UserError(f"{workdir} holds an optimizer state in another format ({written}; this run's is "
                        f"{optimizer_state!r}); continue from its parameters with --config.init_from={workdir} and a "
                        "new --workdir")


# Model settings that change how the parameters are computed with or stored, not what they are.
RUNTIME_FIELDS = ("attention", "matmul", "scan_layers", "scan_unroll", "remat", "dtype", "param_dtype",
                  "vocab_multiple")


def init_source(spec: str) -> tuple[Checkpointer, int, ModelConfig, AnyTokenizer, str]:
    """`config.init_from` ('WORKDIR' or 'WORKDIR:STEP'): its checkpointer, step, model config, tokenizer, workdir."""
    workdir, step = spec, None
    head, _, tail = spec.rpartition(":")
    if head and tail.isdigit():
        workdir, step = head, int(tail)
    ckpt, step, model_config, tokenizer, _ = open_run(workdir, step)
    return ckpt, step, model_config, require_tokenizer(tokenizer, workdir), workdir


def _repad(params: dict[str, Any], c: ModelConfig) -> dict[str, Any]:
    """The vocabulary axes of the embedding table [V', D] and head [D, V'] cut or zero-padded to c.padded_vocab."""
    def fit(x: jax.Array, axis: int) -> jax.Array:
        x = jax.lax.slice_in_dim(x, 0, c.vocab_size, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, c.padded_vocab - c.vocab_size)
        return jnp.pad(x, pad)

    params = dict(params, token_embedding=fit(params["token_embedding"], 0))
    if "lm_head" in params:
        params["lm_head"] = fit(params["lm_head"], 1)
    return params


def init_params(ckpt: Checkpointer, step: int, saved: ModelConfig, current: ModelConfig, layout: Layout,
                source: str) -> Any:
    """Another run's parameters for a model of the same shape, placed on `layout` (scanned or not as `current`)."""
    free = RUNTIME_FIELDS + (("max_len",) if saved.position == current.position == "rope" else ())  # no table
    diff = [f"model.{f.name}: {getattr(current, f.name)} here, {getattr(saved, f.name)} there"
            for f in dataclasses.fields(ModelConfig)
            if f.name not in free and getattr(saved, f.name) != getattr(current, f.name)]
    if diff:
        raise UserError(f"config.init_from={source} holds a model of another shape ({'; '.join(diff)}); set "
                        "those config keys to its values")
    as_saved = dataclasses.replace(current, scan_layers=saved.scan_layers, vocab_multiple=saved.vocab_multiple)
    try:
        params = ckpt.params(step, abstract_params(TransformerLM(as_saved), layout))
    except Damaged as e:
        raise UserError(f"config.init_from={source}: checkpoint {step} is damaged ({e}); name another one as "
                        "WORKDIR:STEP") from None
    if as_saved == current:
        return params
    if saved.scan_layers != current.scan_layers:
        params = tree.relayout(params, current.num_layers, current.scan_layers)
    if saved.padded_vocab != current.padded_vocab:
        params = _repad(params, current)
    target = abstract_params(TransformerLM(current), layout)
    return jax.device_put(params, jax.tree.map(lambda a: a.sharding, target))

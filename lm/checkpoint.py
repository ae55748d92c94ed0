"""Orbax checkpoints of a run: parameters, optimizer state, data-pipeline state, model config and tokenizer.

Layout: WORKDIR/checkpoints/STEP/{params, opt_state, data, meta, integrity}. Every process writes its shards
of the arrays; `data` (the pipelines' positions, gathered from every process), `meta` (JSON: the model config,
the tokenizer and the run config) and `integrity` (a checksum of every array) are written once. A restore
recomputes the checksums: a checkpoint whose bytes changed on disk, or whose parameters are not finite, is
damaged, and the trainer and the readers take the one before it. A checkpoint is all the sampler and evaluator
need; they restore `params` alone, onto their own shardings, on any mesh.
"""

import contextlib
import dataclasses
import errno
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lm import optim
from lm import tokenizer as tokenizer_lib
from lm.cli import DiskFull, UserError
from lm.config import ModelConfig
from lm.model import TransformerLM
from lm.sharding import Layout, global_max, sync
from lm.state import TrainState, abstract_params
from lm.tokenizer import AnyTokenizer

CHECKPOINTS = "checkpoints"


class Damaged(Exception):
    """A checkpoint that does not restore whole: a file unreadable or missing, an array whose checksum does not
    match the one written at save, or parameters that are not finite."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """A uint32 checksum of an array's bits: its 32-bit words, word i weighted by 2i + 1, summed mod 2**32 (the
    same under any sharding; a changed word, or two words swapped, changes it)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprint(tree: Any) -> tuple[Any, jax.Array]:
    finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jax.tree.map(_leaf_checksum, tree), jnp.all(jnp.asarray(finite or [True]))


def _value(x: jax.Array) -> Any:
    """A replicated result as a Python number (any process holds all of it)."""
    return x.addressable_shards[0].data.item()


def _name(path: tuple) -> str:
    """A tree path as 'blocks/mlp/fc/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def fingerprint(tree: Any) -> tuple[dict[str, int], bool]:
    """({array path: checksum}, whether every floating-point array is finite) of a tree of arrays."""
    sums, finite = _fingerprint(tree)
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {_name(path): _value(x) for path, x in flat}, bool(_value(finite))


def _verify(name: str, tree: Any, expected: dict[str, int] | None) -> None:
    """Raises Damaged if `tree` (item `name` of a checkpoint) differs from the checksums written at save, or if
    it is the parameters and one is not finite. Checkpoints written before checksums were are only checked
    for finiteness."""
    sums, finite = fingerprint(tree)
    if expected is not None:
        changed = [k for k, v in sums.items() if expected.get(k) != v]
        if changed:
            raise Damaged(f"{name} array {changed[0]} does not match the checksum written at save"
                          + (f" ({len(changed)} arrays differ)" if len(changed) > 1 else ""))
    if name == "params" and not finite:
        raise Damaged("its parameters are not finite")


def _first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(e).strip().split(". See full TensorStore details")[0].splitlines()  # (a spec of ~60 lines follows)
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def make_meta(model_config: ModelConfig, tokenizer: AnyTokenizer | None,
              run_config: dict[str, Any]) -> dict[str, Any]:
    """The JSON part of a checkpoint: model config, tokenizer (if any), run config and optimizer state format."""
    return {"model": model_config.to_dict(), "tokenizer": tokenizer.to_json() if tokenizer else None,
            "config": run_config, "optimizer_state": optim.STATE_FORMAT}


class Checkpointer:
    """Asynchronous saves every `every` steps, keeping the newest `keep`; exact restores."""

    def __init__(self, workdir: str, every: int = 1, keep: int = 3, read_only: bool = False):
        path = self.path = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                                   max_to_keep=None)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                   enable_async_checkpointing=True)
            if jax.process_index() == 0 and os.path.isdir(path):  # writes that a killed run left unfinished
                for name in os.listdir(path):
                    if ".orbax-checkpoint-tmp" in name:
                        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        self.manager = ocp.CheckpointManager(path, options=options)
        self._pending = -1  # the step of the save in flight, if any

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def due(self, step: int) -> bool:
        """Whether `step` is one that the save interval asks for."""
        return self.manager.should_save(step)

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Starts an asynchronous save at `step` (every process calls it, with the same `data_state`).

        A save that would not fit on the disk is not started: the run stops with one line instead, and the
        previous checkpoint stays the newest."""
        self.wait()  # the previous save (orbax waits for it anyway): its errors, then the space it took
        need = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards if s.replica_id == 0)
        need = int(need * 1.1) + 2**20  # this process's share of the arrays, plus room for metadata
        free = shutil.disk_usage(self.path).free
        if global_max(int(free < need)):
            raise UserError(f"the disk is too full to save checkpoint {step}: it needs about {need / 2**20:.1f} MiB in "
                            f"{self.path}, {free / 2**20:.1f} MiB are free; free some space and rerun the same command "
                            f"to resume from {self._newest()}")
        opt_state = {"step": state.step, "opt_state": state.opt_state}
        integrity = {"params": fingerprint(state.params)[0], "opt_state": fingerprint(opt_state)[0]}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
            integrity=ocp.args.JsonSave(integrity),
        )
        self._pending = step
        with self._disk_full_is_one_line():
            self.manager.save(step, args=args, force=True)

    def _newest(self) -> str:
        """The newest committed checkpoint, in words."""
        steps = [s for s in self.all_steps() if s != self._pending]
        return f"checkpoint {steps[-1]}" if steps else "the start (no checkpoint was committed)"

    @contextlib.contextmanager
    def _disk_full_is_one_line(self) -> Iterator[None]:
        """Turns a full disk met while writing the pending save (e.g. out of inodes) into one line; the
        unfinished write never becomes a checkpoint, and the next start removes it."""
        try:
            yield
        except Exception as e:  # orbax and tensorstore wrap the OSError in their own errors
            if "No space left on device" not in str(e) and getattr(e, "errno", None) != errno.ENOSPC:
                raise
            raise DiskFull(f"the disk filled up while writing checkpoint {self._pending} in {self.path}; free some "
                           f"space and rerun the same command to resume from {self._newest()}") from None

    def save_params(self, step: int, params: Any, meta: dict[str, Any]) -> None:
        """A checkpoint of parameters alone (e.g. imported weights): enough to sample, evaluate or fine-tune."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta),
                                  integrity=ocp.args.JsonSave({"params": fingerprint(params)[0]}))
        self.manager.save(step, args=args, force=True)

    def _integrity(self, step: int) -> dict[str, Any]:
        """The checksums written with checkpoint `step` ({} for a checkpoint written before they were)."""
        if not os.path.exists(os.path.join(self.path, str(step), "integrity")):
            return {}
        return self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore())).integrity

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The train state saved at `step`, placed as `abstract_state`'s shardings say, and the data state;
        Damaged if it does not restore whole."""
        try:
            expected = self._integrity(step)
            out = self.manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                opt_state=ocp.args.StandardRestore({"step": abstract_state.step,
                                                    "opt_state": abstract_state.opt_state}),
                data=ocp.args.JsonRestore(),
            ))
        except Exception as e:  # noqa: BLE001 (truncated or missing files fail in orbax or tensorstore)
            raise Damaged(_first_line(e)) from e
        _verify("params", out.params, expected.get("params"))
        _verify("opt_state", out.opt_state, expected.get("opt_state"))
        state = TrainState(step=out.opt_state["step"], params=out.params, opt_state=out.opt_state["opt_state"])
        return state, out.data

    def set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints out of the way, as damaged-STEP (process 0; every process calls it)."""
        if jax.process_index() == 0:
            for step in steps:
                target = os.path.join(self.path, f"damaged-{step}")
                if os.path.exists(target):
                    target += f".{time.time_ns()}"
                os.replace(os.path.join(self.path, str(step)), target)
        sync("checkpoint.damaged")
        self.manager.reload()

    def newest_meta(self) -> tuple[int | None, dict[str, Any] | None, list[str]]:
        """(step, meta) of the newest checkpoint whose meta reads, and the damaged ones newer than it, each
        'STEP (what failed)', moved aside. (None, None, damaged) when no checkpoint has a readable meta."""
        damaged: list[tuple[int, str]] = []
        found = (None, None)
        for step in sorted(self.all_steps(), reverse=True):
            try:
                found = (step, _checked_meta(self.meta(step)))
                break
            except Exception as e:  # noqa: BLE001 (a missing, truncated or edited meta)
                damaged.append((step, _first_line(e.__cause__ or e)))
        if damaged:
            self.set_aside([bad for bad, _ in damaged])
        return *found, [f"{bad} ({why})" for bad, why in damaged]

    def restore_newest_good(self, newest: int, abstract_state: TrainState
                            ) -> tuple[int, TrainState, dict[str, Any], list[str]]:
        """The newest checkpoint at or before `newest` that restores whole: (step, state, data state, the
        damaged ones skipped, each 'STEP (what failed)'). Damaged checkpoints are moved aside as damaged-STEP."""
        damaged = []
        for step in sorted((s for s in self.all_steps() if s <= newest), reverse=True):
            try:
                state, data_state = self.restore(step, abstract_state)
            except Damaged as e:
                damaged.append((step, str(e)))
                continue
            if damaged:
                self.set_aside([bad for bad, _ in damaged])
            return step, state, data_state, [f"{bad} ({why})" for bad, why in damaged]
        raise UserError(f"no checkpoint in {self.path} restores ({'; '.join(f'{b}: {w}' for b, w in damaged)}); "
                        "start a new --workdir")

    def meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def params(self, step: int, abstract_params: Any, verify: bool = True) -> Any:
        """Parameters alone, restored onto the shardings of `abstract_params` (ShapeDtypeStructs); Damaged if
        they do not restore whole (`verify`: checked against their checksums and for finiteness)."""
        try:
            expected = self._integrity(step) if verify else {}
            args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
            params = self.manager.restore(step, args=args).params
        except Exception as e:  # noqa: BLE001 (truncated or missing files fail in orbax or tensorstore)
            raise Damaged(_first_line(e)) from e
        if verify:
            _verify("params", params, expected.get("params"))
        return params

    def wait(self) -> None:
        with self._disk_full_is_one_line():
            self.manager.wait_until_finished()
        self._pending = -1

    def close(self) -> None:
        self.manager.close()


def _checked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's meta, once its model config and tokenizer are known to read."""
    ModelConfig.from_dict(meta["model"])
    tokenizer_lib.from_json(meta["tokenizer"])
    meta["config"]  # noqa: B018 (present)
    return meta


def open_run(
    workdir: str, step: int | None = None
) -> tuple[Checkpointer, int, ModelConfig, AnyTokenizer | None, dict[str, Any]]:
    """A workdir's checkpointer, chosen step, model config, tokenizer (None if it has none) and run config."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise UserError(f"{workdir} holds no checkpoints; train first with python -m lm.train --workdir {workdir}")
    ckpt = Checkpointer(workdir, read_only=True)
    steps = ckpt.all_steps()
    if not steps:
        raise UserError(f"{workdir} holds no finished checkpoint; train first with python -m lm.train")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"{workdir} has no checkpoint at step {step}; it has steps {steps}")
    meta = ckpt.meta(step)
    tokenizer = tokenizer_lib.from_json(meta["tokenizer"])
    return ckpt, step, ModelConfig.from_dict(meta["model"]), tokenizer, meta["config"]


class Reading(NamedTuple):
    """What a reader (sampler, evaluator, exporter) takes from a workdir: one committed checkpoint."""

    step: int
    params: Any
    model: ModelConfig
    tokenizer: AnyTokenizer | None
    run: dict[str, Any]


def read(workdir: str, step: int | None, layout_for: Callable[[dict[str, Any]], Layout]) -> Reading:
    """The parameters of checkpoint `step` (None: the newest that reads whole) with its model config, tokenizer
    and run config, on the layout `layout_for(run config)` gives. Never writes to the workdir. A damaged
    checkpoint is skipped with one warning (an explicit `step` that is damaged is one line of error); one that
    a trainer deletes while it is read is followed by the newest again."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise UserError(f"{workdir} holds no checkpoints; train first with python -m lm.train --workdir {workdir}")
    damaged: list[str] = []
    for _ in range(10):  # each retry follows a checkpoint deleted by a trainer while it was read
        try:
            ckpt = Checkpointer(workdir, read_only=True)
        except FileNotFoundError:
            continue  # a step deleted by a trainer between listing the folder and looking inside it
        steps = ckpt.all_steps()
        if not steps:
            raise UserError(f"{workdir} holds no finished checkpoint; train first with python -m lm.train")
        if step is not None and step not in steps:
            raise UserError(f"{workdir} has no checkpoint at step {step}; it has steps {steps}")
        for s in [step] if step is not None else sorted(steps, reverse=True):
            try:
                meta = _checked_meta(ckpt.meta(s))
                model = ModelConfig.from_dict(meta["model"])
                layout = layout_for(meta["config"])
                params = ckpt.params(s, abstract_params(TransformerLM(model), layout))
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 (Damaged, or a meta that does not read)
                if not os.path.isdir(os.path.join(ckpt.path, str(s))):
                    break  # deleted by a trainer: read the newest again
                why = str(e) if isinstance(e, Damaged) else _first_line(e.__cause__ or e)
                if step is not None:
                    raise UserError(f"checkpoint {s} in {workdir} is damaged ({why}); read another --step of "
                                    f"{[x for x in steps if x != s]}") from None
                if jax.process_index() == 0:
                    print(f"warning: checkpoint {s} in {workdir} is damaged ({why}); reading the one before it",
                          file=sys.stderr, flush=True)
                damaged.append(f"{s}: {why}")
                continue
            ckpt.close()
            return Reading(s, params, model, tokenizer_lib.from_json(meta["tokenizer"]), meta["config"])
        else:
            raise UserError(f"no checkpoint in {workdir} reads whole ({'; '.join(damaged)}); train again or copy a "
                            "good checkpoint in")
        ckpt.close()
    raise UserError(f"the checkpoints of {workdir} were deleted faster than they could be read; try again")


def require_tokenizer(tokenizer: AnyTokenizer | None, workdir: str) -> AnyTokenizer:
    """The workdir's tokenizer, or one line saying it has none (e.g. weights imported without one)."""
    if tokenizer is None:
        raise UserError(f"{workdir} holds no tokenizer (its weights were imported without vocab.json and "
                        "merges.txt), so it cannot read or write text")
    return tokenizer


def check_compatible(saved: dict[str, Any], current: ModelConfig, tokenizer: dict[str, Any], batch_size: int,
                     workdir: str) -> None:
    """Stops with one line when a workdir's checkpoint (its meta) holds a model of another shape, was trained
    with other tokenizer settings than `tokenizer` (config.tokenizer) or another batch size (the step counts
    the tokens and the data position), or holds an optimizer state in another format (written by an older lm,
    before `optim.adamw`)."""
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
    if found != optim.STATE_FORMAT:
        written = repr(found) if found else "that of an older lm"
        raise UserError(f"{workdir} holds an optimizer state in another format ({written}; this lm reads "
                        f"{optim.STATE_FORMAT!r}); continue from its parameters with --config.init_from={workdir} and "
                        "a new --workdir")


# Model settings that change how the parameters are computed with or stored, not what they are.
RUNTIME_FIELDS = ("attention", "scan_layers", "scan_unroll", "remat", "dtype", "param_dtype", "vocab_multiple")


def init_source(spec: str) -> tuple[Checkpointer, int, ModelConfig, AnyTokenizer, str]:
    """`config.init_from` ('WORKDIR' or 'WORKDIR:STEP'): its checkpointer, step, model config, tokenizer, workdir."""
    workdir, step = spec, None
    head, _, tail = spec.rpartition(":")
    if head and tail.isdigit():
        workdir, step = head, int(tail)
    ckpt, step, model_config, tokenizer, _ = open_run(workdir, step)
    return ckpt, step, model_config, require_tokenizer(tokenizer, workdir), workdir


def _restack(params: dict[str, Any], c: ModelConfig) -> dict[str, Any]:
    """Layer parameters stacked on a leading axis ('blocks') if `c.scan_layers`, else one entry per layer."""
    params = dict(params)
    if c.scan_layers:
        layers = [params.pop(f"block_{i}") for i in range(c.num_layers)]
        params["blocks"] = jax.tree.map(lambda *x: jnp.stack(x), *layers)
    else:
        blocks = params.pop("blocks")
        params.update({f"block_{i}": jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(c.num_layers)})
    return params


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
    diff = [f"model.{f.name}: {getattr(current, f.name)} here, {getattr(saved, f.name)} there"
            for f in dataclasses.fields(ModelConfig)
            if f.name not in RUNTIME_FIELDS and getattr(saved, f.name) != getattr(current, f.name)]
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
        params = _restack(params, current)
    if saved.padded_vocab != current.padded_vocab:
        params = _repad(params, current)
    target = abstract_params(TransformerLM(current), layout)
    return jax.device_put(params, jax.tree.map(lambda a: a.sharding, target))

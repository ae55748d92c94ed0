"""Orbax checkpoints of a run: parameters, optimizer state, data-pipeline state, model config and tokenizer.

Layout: WORKDIR/checkpoints/STEP/{params, opt_state, data, meta, integrity}. Every process writes its shards
of the arrays; `data` (the pipelines' positions, gathered from every process), `meta` (JSON: the model config,
the tokenizer, the run config and the optimizer state's format) and `integrity` (a checksum of every array,
integrity.py) are written once. A checkpoint is all the sampler and evaluator need (reader.py): they restore
`params` alone, onto their own shardings, on any mesh.
"""

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from lm.checkpoint import integrity
from lm.checkpoint.integrity import Damaged, fingerprint
from lm.checkpoint.settled import settled_reads
from lm.cli import interrupt
from lm.errors import DiskFull, UserError
from lm.model.config import ModelConfig
from lm.parallel.processes import global_max, sync
from lm.run_files import CHECKPOINTS
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer

# A train state: anything with `step`, `params` and `opt_state` and a `replace` of them (lm/train/state.py's).
TrainState = Any


def first_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(e).strip().split(". See full TensorStore details")[0].splitlines()  # (a spec of ~60 lines follows)
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def make_meta(model_config: ModelConfig, tokenizer: AnyTokenizer | None, run_config: dict[str, Any],
              optimizer_state: str = "") -> dict[str, Any]:
    """The JSON part of a checkpoint: model config, tokenizer (if any), run config, the optimizer state's format
    (lm.optim.Optimizer.state_format; '' for parameters alone) and that the checkpoint holds checksums (its `integrity`
    item; one written before they were has none, and is read without them)."""
    return {"model": model_config.to_dict(), "tokenizer": tokenizer.to_json() if tokenizer else None,
            "config": run_config, "optimizer_state": optimizer_state, "checksums": True}


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

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], meta: dict[str, Any],
             eval_params: Any = None) -> None:
        """Starts an asynchronous save at `step` (every process calls it, with the same `data_state`).
        `eval_params`: where a run evaluates other parameters than it trains (schedule-free), they are the
        checkpoint's `params`, which every reader takes, and the trained ones go with the optimizer state.

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
        params = state.params
        if eval_params is not None:
            opt_state["params"], params = state.params, eval_params
        sums = fingerprint({"params": params, "opt_state": opt_state})[0]  # one program for both
        integrity = {item: {k.split("/", 1)[1]: v for k, v in sums.items() if k.split("/", 1)[0] == item}
                     for item in ("params", "opt_state")}
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
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
        """The checksums written with checkpoint `step` ({} for a checkpoint written before they were); Damaged if
        its meta says it holds them and they are gone."""
        if not os.path.exists(os.path.join(self.path, str(step), "integrity")):
            if self.meta(step).get("checksums"):
                raise Damaged("its checksums (the integrity item) are missing")
            return {}
        return self._restore(step, integrity=ocp.args.JsonRestore()).integrity

    def restore(self, step: int, abstract_state: TrainState, apart: bool = False
                ) -> tuple[TrainState, dict[str, Any]]:
        """The train state saved at `step`, placed as `abstract_state`'s shardings say, and the data state;
        Damaged if it does not restore whole. `apart`: the trained parameters were saved with the optimizer
        state (`save`'s eval_params)."""
        opt_state = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
        items = {"opt_state": opt_state, "params": abstract_state.params}
        if apart:
            items = {"opt_state": {**opt_state, "params": abstract_state.params}}
        try:
            expected = self._integrity(step)
            out = self._restore(step, **{k: ocp.args.StandardRestore(v) for k, v in items.items()},
                                data=ocp.args.JsonRestore())
        except Damaged:
            raise
        except Exception as e:  # noqa: BLE001 (truncated or missing files fail in orbax or tensorstore)
            raise Damaged(first_line(e)) from e
        for item in items:
            integrity.verify(item, out[item], expected.get(item))
        params = out.opt_state["params"] if apart else out.params
        state = abstract_state.replace(step=out.opt_state["step"], params=params,
                                       opt_state=out.opt_state["opt_state"])
        return state, out.data

    def set_aside(self, damaged: list[tuple[int, str]]) -> list[str]:
        """Moves damaged checkpoints ((step, what failed)) out of the way, as damaged-STEP (process 0; every
        process calls it); each as 'STEP (what failed), moved aside to checkpoints/damaged-STEP'."""
        said = []
        for step, why in damaged:
            target = os.path.join(self.path, f"damaged-{step}")
            if os.path.exists(target):
                target += f".{time.time_ns()}"
            if jax.process_index() == 0:
                os.replace(os.path.join(self.path, str(step)), target)
            said.append(f"{step} ({why}), moved aside to {os.path.join(CHECKPOINTS, os.path.basename(target))}")
        sync("checkpoint.damaged")
        self.manager.reload()
        return said

    def newest_meta(self) -> tuple[int | None, dict[str, Any] | None, list[str]]:
        """(step, meta) of the newest checkpoint whose meta reads, and the damaged ones newer than it, moved aside
        (`set_aside`). (None, None, damaged) when no checkpoint has a readable meta."""
        damaged: list[tuple[int, str]] = []
        found = (None, None)
        for step in sorted(self.all_steps(), reverse=True):
            try:
                found = (step, checked_meta(self.meta(step)))
                break
            except Exception as e:  # noqa: BLE001 (a missing, truncated or edited meta)
                damaged.append((step, first_line(e.__cause__ or e)))
        return *found, self.set_aside(damaged)

    def restore_newest_good(self, newest: int, abstract_state: TrainState, apart: bool = False
                            ) -> tuple[int, TrainState, dict[str, Any], list[str]]:
        """The newest checkpoint at or before `newest` that restores whole: (step, state, data state, the
        damaged ones skipped and moved aside: `set_aside`)."""
        damaged = []
        for step in sorted((s for s in self.all_steps() if s <= newest), reverse=True):
            try:
                state, data_state = self.restore(step, abstract_state, apart)
            except Damaged as e:
                damaged.append((step, str(e)))
                continue
            return step, state, data_state, self.set_aside(damaged)
        raise UserError(f"no checkpoint in {self.path} restores ({'; '.join(f'{b}: {w}' for b, w in damaged)}); "
                        "start a new --workdir")

    def _restore(self, step: int, **items: Any) -> Any:
        """orbax's restore of `items` at `step`; a read that fails leaves none of the others running."""
        with settled_reads():
            return self.manager.restore(step, args=ocp.args.Composite(**items))

    def meta(self, step: int) -> dict[str, Any]:
        return self._restore(step, meta=ocp.args.JsonRestore()).meta

    def params(self, step: int, abstract_params: Any, verify: bool = True) -> Any:
        """Parameters alone, restored onto the shardings of `abstract_params` (ShapeDtypeStructs); Damaged if
        they do not restore whole (`verify`: checked against their checksums and for finiteness)."""
        try:
            expected = self._integrity(step) if verify else {}
            params = self._restore(step, params=ocp.args.StandardRestore(abstract_params)).params
        except Damaged:
            raise
        except Exception as e:  # noqa: BLE001 (truncated or missing files fail in orbax or tensorstore)
            raise Damaged(first_line(e)) from e
        if verify:
            integrity.verify("params", params, expected.get("params"))
        return params

    def wait(self) -> None:
        with self._disk_full_is_one_line():
            interrupt.waiting(self.manager.wait_until_finished)  # a second Ctrl-C stops at once
        self._pending = -1

    def close(self) -> None:
        self.manager.close()


def checked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's meta, once its model config and tokenizer are known to read."""
    ModelConfig.from_dict(meta["model"])
    kinds.from_json(meta["tokenizer"])
    meta["config"]  # noqa: B018 (present)
    return meta


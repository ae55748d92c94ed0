"""Where a run begins: a fresh run (a tokenizer trained or loaded, parameters initialized), a resume (the newest
checkpoint that restores whole) or `config.init_from` (another run's parameters and tokenizer). `start` returns
the same `Start` for all three: the step done so far, the tokenizer, the model, the state and the data
position, with the backend's choices for this platform made once (lm/backends/select.py)."""

import dataclasses
import json
import math
import os
import sys
from typing import Any, NamedTuple

import jax
import optax

from lm import config as config_lib
from lm import folders, schedules
from lm.backends import select
from lm.checkpoint import compatibility
from lm.checkpoint.manager import Checkpointer, make_meta
from lm.config import RunConfig
from lm.data import corpus as corpus_lib
from lm.data.batches import STATE_FORMAT, TrainBatches
from lm.data.shards import Split
from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.optim import Optimizer
from lm.parallel import placement, processes
from lm.parallel.mesh import Layout
from lm.run_files import TOKENIZER
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer
from lm.train import state as state_lib
from lm.train.nonfinite import NonFiniteSteps
from lm.train.state import TrainState
from lm.train.step import GradientSums


class Start(NamedTuple):
    step: int  # the last step done (0: none)
    tokenizer: AnyTokenizer
    model: TransformerLM
    optimizer: Optimizer  # built once (lm/optim.py)
    state: TrainState
    validation: list[Split]  # the validation rows of each corpus
    batches: TrainBatches  # at the data position of `step`
    identities: dict[str, str]  # what each corpus holds, saved with the data position
    guard: NonFiniteSteps  # counts of skipped steps so far
    sums: GradientSums | None  # how the step combines the devices' gradients (lm/backends/select.py)
    checkpointer: Checkpointer
    meta: dict[str, Any]  # what every checkpoint of the run records besides its arrays
    origin: str  # where it begins, in words


def check_batch(run: RunConfig, layout: Layout) -> None:
    """One line if the batch (or each device's rows into the microbatches) does not divide over the mesh."""
    batch, micro = run.train.batch_size, run.train.microbatches
    if batch % layout.data_parallel:
        raise UserError(f"config.train.batch_size={batch} is not divisible by the data-parallel size "
                        f"{layout.data_parallel} (mesh data x fsdp)")
    if batch // layout.data_parallel % micro:  # each microbatch takes rows of every device (lm/train/step.py)
        raise UserError(f"config.train.microbatches={micro} does not divide the {batch // layout.data_parallel} "
                        f"row(s) of each of the {layout.data_parallel} data-parallel devices (config.train.batch_size="
                        f"{batch}); use fewer microbatches or a larger batch")


def _tokenizer(run: RunConfig, workdir: str) -> AnyTokenizer:
    """A fresh run's tokenizer, made (or loaded) by process 0 and read back by the others from the workdir."""
    path = os.path.join(workdir, TOKENIZER)
    if jax.process_index() == 0:
        tok = corpus_lib.fresh_tokenizer(run.data, run.tokenizer)
        os.makedirs(workdir, exist_ok=True)
        folders.write_json(path, tok.to_json())
    processes.sync("tokenizer")
    with open(path) as f:
        return kinds.from_json(json.load(f))


def _open_data(run: RunConfig, tokenizer: AnyTokenizer, row_len: int,
               saved: dict[str, str] | None) -> tuple[list, list[Split], dict[str, str]]:
    """The run's data, prepared by process 0 (the others wait, then open what it prepared)."""
    if jax.process_index() == 0:
        opened = corpus_lib.open_data(run.data, tokenizer, row_len, saved)
    processes.sync("data")
    if jax.process_index() != 0:
        opened = corpus_lib.open_data(run.data, tokenizer, row_len, saved)
    return opened


def _say_unread(components: list, whose: str) -> None:
    """A warning, at a run's start, if a tokenizer made for other text (inherited, or given) cannot read some of
    the training tokens: they become <unk>, which the model learns nothing from."""
    pieces = [p for c in components for p in c.rows.pieces]
    unknown = sum(p.unknown or 0 for p in pieces)
    if unknown:
        total = sum(p.end - p.start for p in pieces)
        print(f"warning: {whose} cannot read {unknown:,} of the {total:,} training tokens ({unknown / total:.1%}): "
              "they are <unk>; give a tokenizer made for this data, or train one (a run of its own)",
              file=sys.stderr, flush=True)


class _Begun(NamedTuple):
    """Where a fresh run, a resumed run or an init_from run begins, before its data is opened."""

    step: int
    tokenizer: AnyTokenizer
    model: TransformerLM
    state: TrainState
    data_state: dict[str, Any] | None  # the resumed checkpoint's data position
    origin: str  # in words
    damaged: list[str]  # checkpoints that did not restore and were set aside


def _resumed(run: RunConfig, workdir: str, layout: Layout, opt: Optimizer, ckpt: Checkpointer,
             newest: int, saved: dict[str, Any]) -> _Begun:
    """The newest checkpoint that restores whole, once it is known to serve `run`."""
    tokenizer = kinds.from_json(saved["tokenizer"])
    model = select.model(config_lib.model_config(run, saved["model"]["vocab_size"]))
    compatibility.check_compatible(saved, model.config, dataclasses.asdict(run.tokenizer), run.train.batch_size,
                                   opt.state_format, workdir)
    step, state, data_state, damaged = ckpt.restore_newest_good(newest, state_lib.abstract(model, opt.tx, layout),
                                                                opt.apart)
    if data_state and data_state.get("format") != STATE_FORMAT:  # a run saved before prepared shards
        if jax.process_index() == 0:
            print(f"warning: checkpoint {step} holds a data position of the earlier input pipeline; the data order "
                  "goes on from the row it would have reached in the new one", file=sys.stderr, flush=True)
        data_state = {"nonfinite": data_state.get("nonfinite")}
    if jax.process_index() == 0:
        _say_schedule_change(RunConfig.from_dict(saved["config"]), run, step)
    return _Begun(step, tokenizer, model, state, data_state, f"resuming at step {step}", damaged)


def _say_schedule_change(was: RunConfig, run: RunConfig, step: int) -> None:
    """A warning, at a resume, if the learning rate of the next step is not the one the saved run would have used:
    a cosine or linear schedule stretched by a longer config.train.steps, or other schedule settings."""
    rate = lambda r: float(schedules.schedule(r.optim, schedules.horizon(r.optim, r.train.steps))(step))  # noqa: E731
    before, now = rate(was), rate(run)
    if math.isclose(before, now, rel_tol=1e-6):
        return
    keys = [("train", "steps")] + [("optim", k) for k in ("lr", "min_lr", "warmup_steps", "schedule",
                                                         "schedule_steps", "cooldown_steps", "cooldown")]
    changed = [f"config.{s}.{k} {getattr(getattr(was, s), k)} -> {getattr(getattr(run, s), k)}" for s, k in keys
               if getattr(getattr(was, s), k) != getattr(getattr(run, s), k)]
    print(f"warning: the learning-rate schedule changed since checkpoint {step} ({', '.join(changed)}): the next "
          f"step's rate is {now:.3g}, not {before:.3g}; a warmup-stable-decay schedule "
          "(--config.optim.schedule=wsd) continues a run to more steps without such a jump", file=sys.stderr,
          flush=True)


def _from_other_run(run: RunConfig, layout: Layout, tx: optax.GradientTransformation) -> _Begun:
    """Step 0 with the parameters and tokenizer of `config.init_from`."""
    source, source_step, source_model, tokenizer, _ = compatibility.init_source(run.init_from)
    model = select.model(config_lib.model_config(run, source_model.vocab_size))
    params = compatibility.init_params(source, source_step, source_model, model.config, layout, run.init_from)
    origin = f"starting at step 0 from the parameters and tokenizer of {run.init_from} (step {source_step})"
    return _Begun(0, tokenizer, model, state_lib.from_params(model, tx, layout, params), None, origin, [])


def _check_fits(run: RunConfig, layout: Layout, tx: optax.GradientTransformation) -> None:
    """One line if the model does not divide over the mesh, or the optimizer `tx` does not fit its parameters, before
    a fresh run's tokenizer is trained: checked on the model with a stand-in vocabulary every mesh axis divides (the
    vocabulary itself is checked when the state is built)."""
    any_vocab = layout.mesh.size * 128
    params = placement.abstract_params(TransformerLM(config_lib.model_config(run, any_vocab)), layout)
    jax.eval_shape(tx.init, params)  # an optimizer setting that does not fit a parameter (Muon's) stops here


def _fresh(run: RunConfig, workdir: str, layout: Layout, tx: optax.GradientTransformation) -> _Begun:
    """Step 0 with a tokenizer trained or loaded, and parameters initialized from `config.seed`."""
    _check_fits(run, layout, tx)
    tokenizer = _tokenizer(run, workdir)
    model = select.model(config_lib.model_config(run, tokenizer.vocab_size))
    return _Begun(0, tokenizer, model, state_lib.create(model, tx, layout, run.seed), None, "starting at step 0", [])


def start(run: RunConfig, workdir: str, layout: Layout, opt: Optimizer) -> Start:
    """Where the run of `run` in `workdir` begins, with the optimizer `opt`; damaged newer
    checkpoints are set aside with one warning."""
    ckpt = Checkpointer(workdir, run.checkpoint.every, run.checkpoint.keep)
    newest, saved, damaged = ckpt.newest_meta()  # damaged: newer checkpoints whose meta does not read
    if newest == 0:
        raise UserError(f"{workdir} holds imported weights (step 0); train from them with "
                        f"--config.init_from={workdir} and a new --workdir")
    begun = (_resumed(run, workdir, layout, opt, ckpt, newest, saved) if newest else
             _from_other_run(run, layout, opt.tx) if run.init_from else _fresh(run, workdir, layout, opt.tx))
    step, tokenizer, model, state, data_state = begun[:5]
    damaged += begun.damaged
    if damaged and jax.process_index() == 0:
        resumed = f"resuming from checkpoint {step} instead" if step else "starting afresh: none of them reads"
        print(f"warning: damaged checkpoint {'; '.join(damaged)}; {resumed}", file=sys.stderr, flush=True)
    components, validation, identities = _open_data(run, tokenizer, model.config.max_len + 1,
                                                    (data_state or {}).get("identities"))
    if not step and (run.init_from or run.tokenizer.path) and jax.process_index() == 0:
        _say_unread(components, f"the tokenizer of {run.init_from}" if run.init_from else
                    f"the tokenizer at config.tokenizer.path {run.tokenizer.path}")
    batches = TrainBatches(components, run.train.batch_size, run.seed, jax.process_index(), jax.process_count(),
                           run.data.ahead)
    if data_state and "rows" in data_state:
        batches.set_state(data_state)
    elif step:
        batch = run.train.batch_size
        batches.set_state({"batches": step, "rows": {c.name: step * batch for c in components}})
    meta = make_meta(model.config, tokenizer, run.to_dict(), opt.state_format)
    guard = NonFiniteSteps(run.train.nonfinite, run.train.max_skips, (data_state or {}).get("nonfinite"))
    sums = select.gradient_sums(layout, state.params)
    return Start(step, tokenizer, model, opt, state, validation, batches, identities, guard, sums, ckpt, meta,
                 begun.origin)

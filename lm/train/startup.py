"""Where a run begins: a fresh run (a tokenizer trained or loaded, parameters initialized), a resume (the newest
checkpoint that restores whole) or `config.init_from` (another run's parameters and tokenizer). `start` returns
the same `Start` for all three: the step done so far, the tokenizer, the model, the state and the data
position, with the backend's choices for this platform made once (lm/backends/select.py)."""

import json
import os
import sys
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from lm import config as config_lib
from lm import folders, optim
from lm.backends import select
from lm.checkpoint import compatibility
from lm.checkpoint.manager import Checkpointer, make_meta
from lm.data import corpus as corpus_lib
from lm.data.batches import STATE_FORMAT, TrainBatches
from lm.data.shards import Split
from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.parallel import placement, processes
from lm.parallel.mesh import Layout
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer
from lm.train import state as state_lib
from lm.train.nonfinite import NonFiniteSteps
from lm.train.state import TrainState
from lm.train.step import GradientSums

TOKENIZER_FILE = "tokenizer.json"  # a fresh run's tokenizer, for the other processes and a restart before step 1


class Start(NamedTuple):
    step: int  # the last step done (0: none)
    tokenizer: AnyTokenizer
    model: TransformerLM
    tx: optax.GradientTransformation
    lr: optax.Schedule
    state: TrainState
    validation: list[Split]  # the validation rows of each corpus
    batches: TrainBatches  # at the data position of `step`
    identities: dict[str, str]  # what each corpus holds, saved with the data position
    guard: NonFiniteSteps  # counts of skipped steps so far
    sums: GradientSums | None  # how the step combines the devices' gradients (lm/backends/select.py)
    checkpointer: Checkpointer
    meta: dict[str, Any]  # what every checkpoint of the run records besides its arrays
    origin: str  # where it begins, in words


def check_fits(cfg: ml_collections.ConfigDict, layout: Layout) -> None:
    """One line if the batch (or each device's rows into the microbatches) or the model does not divide over the
    mesh, or the optimizer does not fit the parameters, before any tokenizer is trained."""
    batch, micro = cfg.train.batch_size, cfg.train.microbatches
    if batch % layout.data_parallel:
        raise UserError(f"config.train.batch_size={batch} is not divisible by the data-parallel size "
                        f"{layout.data_parallel} (mesh data x fsdp)")
    if batch // layout.data_parallel % micro:  # each microbatch takes rows of every device (lm/train/step.py)
        raise UserError(f"config.train.microbatches={micro} does not divide the {batch // layout.data_parallel} "
                        f"row(s) of each of the {layout.data_parallel} data-parallel devices (config.train.batch_size="
                        f"{batch}); use fewer microbatches or a larger batch")
    any_vocab = layout.mesh.size * 128  # a vocabulary every mesh axis divides
    params = placement.abstract_params(TransformerLM(config_lib.model_config(cfg, any_vocab)), layout)
    tx, _ = optim.optimizer(cfg.optim, cfg.train.steps)
    jax.eval_shape(tx.init, params)  # an optimizer setting that does not fit a parameter (Muon's) stops here


def _tokenizer(cfg: ml_collections.ConfigDict, workdir: str) -> AnyTokenizer:
    """A fresh run's tokenizer, made (or loaded) by process 0 and read back by the others from the workdir."""
    path = os.path.join(workdir, TOKENIZER_FILE)
    if jax.process_index() == 0:
        tok = corpus_lib.fresh_tokenizer(cfg.data, cfg.tokenizer)
        os.makedirs(workdir, exist_ok=True)
        folders.write_atomic(path, json.dumps(tok.to_json()))
    processes.sync("tokenizer")
    with open(path) as f:
        return kinds.from_json(json.load(f))


def _open_data(cfg: ml_collections.ConfigDict, tokenizer: AnyTokenizer, row_len: int,
               saved: dict[str, str] | None) -> tuple[list, list[Split], dict[str, str]]:
    """The run's data, prepared by process 0 (the others wait, then open what it prepared)."""
    if jax.process_index() == 0:
        opened = corpus_lib.open_data(cfg.data, tokenizer, row_len, saved)
    processes.sync("data")
    if jax.process_index() != 0:
        opened = corpus_lib.open_data(cfg.data, tokenizer, row_len, saved)
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


def start(cfg: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Start:
    """Where the run of `cfg` in `workdir` begins; damaged newer checkpoints are set aside with one warning."""
    ckpt = Checkpointer(workdir, cfg.checkpoint.every, cfg.checkpoint.keep)
    newest, saved, damaged = ckpt.newest_meta()  # damaged: newer checkpoints whose meta does not read
    if newest == 0:
        raise UserError(f"{workdir} holds imported weights (step 0); train from them with "
                        f"--config.init_from={workdir} and a new --workdir")
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)
    step, data_state, params, origin = 0, None, None, "starting at step 0"
    if newest:
        tokenizer = kinds.from_json(saved["tokenizer"])
        model = select.model(config_lib.model_config(cfg, saved["model"]["vocab_size"]))
        compatibility.check_compatible(saved, model.config, cfg.tokenizer.to_dict(), cfg.train.batch_size,
                                       optim.state_format(cfg.optim), workdir)
        step, state, data_state, more = ckpt.restore_newest_good(newest, state_lib.abstract(model, tx, layout),
                                                                 optim.evaluated_apart(cfg.optim))
        damaged, origin = damaged + more, f"resuming at step {step}"
    elif cfg.init_from:
        source, source_step, source_model, tokenizer, _ = compatibility.init_source(cfg.init_from)
        model = select.model(config_lib.model_config(cfg, source_model.vocab_size))
        params = compatibility.init_params(source, source_step, source_model, model.config, layout, cfg.init_from)
        origin = f"starting at step 0 from the parameters and tokenizer of {cfg.init_from} (step {source_step})"
    else:
        tokenizer = _tokenizer(cfg, workdir)
        model = select.model(config_lib.model_config(cfg, tokenizer.vocab_size))
    if not step:
        state = (state_lib.from_params(model, tx, layout, params) if params is not None
                 else state_lib.create(model, tx, layout, cfg.seed))
    if damaged and jax.process_index() == 0:
        resumed = f"resuming from checkpoint {step} instead" if step else "starting afresh: none of them reads"
        print(f"warning: checkpoint {', '.join(damaged)} is damaged and was moved aside as damaged-STEP; {resumed}",
              file=sys.stderr, flush=True)
    if data_state and data_state.get("format") != STATE_FORMAT and jax.process_index() == 0:
        print(f"warning: checkpoint {step} holds a data position of the earlier input pipeline; the data order goes "
              "on from the row it would have reached in the new one", file=sys.stderr, flush=True)
    if data_state and data_state.get("format") != STATE_FORMAT:  # a run saved before prepared shards
        data_state = {"nonfinite": data_state.get("nonfinite")}
    components, validation, identities = _open_data(cfg, tokenizer, model.config.max_len + 1,
                                                    (data_state or {}).get("identities"))
    if not step and (cfg.init_from or cfg.tokenizer.path) and jax.process_index() == 0:
        _say_unread(components, f"the tokenizer of {cfg.init_from}" if cfg.init_from else
                    f"the tokenizer at config.tokenizer.path {cfg.tokenizer.path}")
    batches = TrainBatches(components, cfg.train.batch_size, cfg.seed, jax.process_index(), jax.process_count(),
                           cfg.data.ahead)
    if data_state and "rows" in data_state:
        batches.set_state(data_state)
    elif step:
        batch = cfg.train.batch_size
        batches.set_state({"batches": step, "rows": {c.name: step * batch for c in components}})
    run_config = cfg.to_dict()
    meta = make_meta(model.config, tokenizer, run_config, optim.state_format(cfg.optim))
    guard = NonFiniteSteps(cfg.train.nonfinite, cfg.train.max_skips, (data_state or {}).get("nonfinite"))
    sums = select.gradient_sums(layout, state.params)
    return Start(step, tokenizer, model, tx, lr, state, validation, batches, identities, guard, sums, ckpt, meta,
                 origin)

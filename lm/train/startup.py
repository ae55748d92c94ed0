"""Where a run begins: a fresh run (a tokenizer trained or loaded, parameters initialized), a resume (the newest
checkpoint that restores whole) or `config.init_from` (another run's parameters and tokenizer). `start` returns
the same `Start` for all three: the step done so far, the tokenizer, the model, the state and the data
position, with the backend's choices for this platform made once (lm/backends/select.py)."""

import os
import sys
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from lm import config as config_lib
from lm import optim
from lm.backends import select
from lm.checkpoint import compatibility
from lm.checkpoint.manager import Checkpointer, make_meta
from lm.data import sources
from lm.data.batches import TrainBatches
from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.parallel import placement, processes
from lm.parallel.mesh import Layout
from lm.tokenizer import kinds, sentencepiece
from lm.tokenizer.kinds import AnyTokenizer
from lm.train import state as state_lib
from lm.train.nonfinite import NonFiniteSteps
from lm.train.state import TrainState
from lm.train.step import GradientSums


class Start(NamedTuple):
    step: int  # the last step done (0: none)
    tokenizer: AnyTokenizer
    model: TransformerLM
    tx: optax.GradientTransformation
    lr: optax.Schedule
    state: TrainState
    corpus: sources.Corpus
    batches: TrainBatches  # at the data position of `step`
    shards: int  # the data pipelines the batches are drawn from
    guard: NonFiniteSteps  # counts of skipped steps so far
    sums: GradientSums | None  # how the step combines the devices' gradients (lm/backends/select.py)
    checkpointer: Checkpointer
    meta: dict[str, Any]  # what every checkpoint of the run records besides its arrays
    origin: str  # where it begins, in words


def check_fits(cfg: ml_collections.ConfigDict, layout: Layout) -> None:
    """One line if the batch or the model does not divide over the mesh, before any tokenizer is trained."""
    batch = cfg.train.batch_size
    if batch % layout.data_parallel:
        raise UserError(f"config.train.batch_size={batch} is not divisible by the data-parallel size "
                        f"{layout.data_parallel} (mesh data x fsdp)")
    any_vocab = layout.mesh.size * 128  # a vocabulary every mesh axis divides
    placement.abstract_params(TransformerLM(config_lib.model_config(cfg, any_vocab)), layout)


def _tokenizer(cfg: ml_collections.ConfigDict, workdir: str, corpus: sources.Corpus) -> AnyTokenizer:
    """A fresh run's tokenizer, trained (or loaded) by process 0 and read back by the others."""
    path = os.path.join(workdir, sentencepiece.MODEL_FILE)
    if jax.process_index() == 0:
        t = cfg.tokenizer
        sentencepiece.load_or_train(workdir, t.type, t.vocab_size, sources.texts(corpus, "train"), t.path,
                                    t.sample_chars)
    processes.sync("tokenizer")
    return sentencepiece.Tokenizer.load(path)


def start(cfg: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Start:
    """Where the run of `cfg` in `workdir` begins; damaged newer checkpoints are set aside with one warning."""
    ckpt = Checkpointer(workdir, cfg.checkpoint.every, cfg.checkpoint.keep)
    newest, saved, damaged = ckpt.newest_meta()  # damaged: newer checkpoints whose meta does not read
    if newest == 0:
        raise UserError(f"{workdir} holds imported weights (step 0); train from them with "
                        f"--config.init_from={workdir} and a new --workdir")
    corpus = sources.open_corpus(cfg.data)
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)
    step, data_state, params, origin = 0, None, None, "starting at step 0"
    if newest:
        tokenizer = kinds.from_json(saved["tokenizer"])
        model = select.model(config_lib.model_config(cfg, saved["model"]["vocab_size"]))
        compatibility.check_compatible(saved, model.config, cfg.tokenizer.to_dict(), cfg.train.batch_size,
                                       optim.state_format(cfg.optim), workdir)
        step, state, data_state, more = ckpt.restore_newest_good(newest, state_lib.abstract(model, tx, layout))
        damaged, origin = damaged + more, f"resuming at step {step}"
    elif cfg.init_from:
        source, source_step, source_model, tokenizer, _ = compatibility.init_source(cfg.init_from)
        model = select.model(config_lib.model_config(cfg, source_model.vocab_size))
        params = compatibility.init_params(source, source_step, source_model, model.config, layout, cfg.init_from)
        origin = f"starting at step 0 from the parameters and tokenizer of {cfg.init_from} (step {source_step})"
    else:
        tokenizer = _tokenizer(cfg, workdir, corpus)
        model = select.model(config_lib.model_config(cfg, tokenizer.vocab_size))
    if not step:
        state = (state_lib.from_params(model, tx, layout, params) if params is not None
                 else state_lib.create(model, tx, layout, cfg.seed))
    if damaged and jax.process_index() == 0:
        resumed = f"resuming from checkpoint {step} instead" if step else "starting afresh: none of them reads"
        print(f"warning: checkpoint {', '.join(damaged)} is damaged and was moved aside as damaged-STEP; {resumed}",
              file=sys.stderr, flush=True)
    shards = cfg.data.shards or (data_state["shards"] if data_state else jax.process_count())
    batches = TrainBatches(corpus, tokenizer, model.config.max_len + 1, cfg.train.batch_size, cfg.seed, shards,
                           jax.process_index(), jax.process_count(), cfg.data.ahead)
    if data_state:
        batches.set_state(data_state)
    run_config = cfg.to_dict()
    run_config["data"]["shards"] = shards
    meta = make_meta(model.config, tokenizer, run_config, optim.state_format(cfg.optim))
    guard = NonFiniteSteps(cfg.train.nonfinite, cfg.train.max_skips, (data_state or {}).get("nonfinite"))
    sums = select.gradient_sums(layout, state.params)
    return Start(step, tokenizer, model, tx, lr, state, corpus, batches, shards, guard, sums, ckpt, meta, origin)

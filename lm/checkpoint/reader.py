"""Reading a workdir's checkpoints without writing to it (the sampler, the evaluator, the exporter, init_from):
one committed checkpoint's parameters, model config, tokenizer and run config. A damaged checkpoint is skipped
with one warning; one that a trainer deletes while it is read is followed by the newest again."""

import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from lm.checkpoint.integrity import Damaged
from lm.checkpoint.manager import Checkpointer, checked_meta, first_line
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout
from lm.parallel.placement import abstract_params
from lm.run_files import CHECKPOINTS
from lm.tokenizer import kinds
from lm.tokenizer.kinds import AnyTokenizer


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
    tokenizer = kinds.from_json(meta["tokenizer"])
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
                meta = checked_meta(ckpt.meta(s))
                model = ModelConfig.from_dict(meta["model"])
                layout = layout_for(meta["config"])
                params = ckpt.params(s, abstract_params(TransformerLM(model), layout))
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 (Damaged, or a meta that does not read)
                listed = sorted(int(n) for n in os.listdir(ckpt.path) if n.isdigit())
                if s not in listed or listed != sorted(steps):
                    break  # deleted, or being deleted, by a trainer that saved a newer one: read the newest again
                why = str(e) if isinstance(e, Damaged) else first_line(e.__cause__ or e)
                if step is not None:
                    raise UserError(f"checkpoint {s} in {workdir} is damaged ({why}); read another --step of "
                                    f"{[x for x in steps if x != s]}") from None
                if jax.process_index() == 0:
                    print(f"warning: checkpoint {s} in {workdir} is damaged ({why}); reading the one before it",
                          file=sys.stderr, flush=True)
                damaged.append(f"{s}: {why}")
                continue
            ckpt.close()
            return Reading(s, params, model, kinds.from_json(meta["tokenizer"]), meta["config"])
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

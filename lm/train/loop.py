"""The training loop. `train(cfg, workdir)` begins where the workdir says (startup.py: fresh, resumed or from
another run), runs the jitted step (step.py), and hands off to the metrics log, evaluations, checkpoints, the
non-finite policy and preemption, each when it is due."""

import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from lm import config as config_lib
from lm import flops, folders
from lm.errors import Stopped
from lm.parallel.mesh import Layout, bytes_per_device, make_layout
from lm.train import duties, faults, startup
from lm.train import workdir as workdir_lib
from lm.train.metrics import MetricsLog
from lm.train.nonfinite import EXIT_NONFINITE, NonFinite
from lm.train.preemption import StopSignal
from lm.train.step import make_train_step

SUMMARY = "summary.json"  # written when a run reaches its last step


def train(cfg: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None
          ) -> dict[str, float]:
    """Trains (or resumes) the run of `cfg` in `workdir`, which it holds alone while it runs; returns the final
    validation metrics. `devices`: those config.mesh spans (default: all of them), e.g. one GPU of a notebook's
    eight."""
    config_lib.validate(cfg)
    layout = make_layout(cfg.mesh, devices)
    startup.check_fits(cfg, layout)
    with workdir_lib.hold(workdir):
        start = startup.start(cfg, workdir, layout)
        log = _metrics_log(cfg, workdir, start)
        log.write(None, _describe(layout, start))
        saves = duties.Checkpoints(cfg, start)
        try:
            result = _loop(cfg, workdir, layout, start, log, saves)
        except NonFinite as e:
            raise Stopped(f"error: {e}; {saves.close()}", EXIT_NONFINITE) from None
        saves.close()
        if log.active:  # the mark of a finished run (lm.sweep skips it)
            _write_json(os.path.join(workdir, SUMMARY), {"steps": cfg.train.steps, "parameters": _size(start.state),
                                                         "final": result})  # validation and task scores
        return result


def _loop(cfg: ml_collections.ConfigDict, workdir: str, layout: Layout, start: startup.Start, log: MetricsLog,
          saves: duties.Checkpoints) -> dict[str, float]:
    step_fn, evals = _compiled_step(cfg, layout, start), duties.Evaluations(cfg, start, layout, log)
    state, guard, result, previous = start.state, start.guard, {}, None
    with layout.scope(), StopSignal() as stop:
        for step in range(start.step + 1, cfg.train.steps + 1):
            batch = faults.corrupted(next(start.batches), step, cfg.train.nan_steps, start.model.config.padded_vocab)
            state, metrics = step_fn(state, layout.global_batch(batch))
            if previous is not None:  # at most two steps in flight: this waits for the one before
                guard.observe(step - 1, bool(previous["finite"]))
                guard.check()
            previous = metrics
            if log.due(step):
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                guard.observe(step, bool(values.pop("finite")))
                log.step(step, values, guard.skipped)
                guard.check()
            if evals.due(step):
                result = evals.run(step, state)
            if saves.due(step):
                saves.save(step, state, metrics["finite"])
            signum = stop.agreed()
            if signum and step < cfg.train.steps:
                saves.save(step, state, metrics["finite"])
                saves.close()
                raise Stopped(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {step} saved in "
                              f"{workdir}; rerun the same command to resume", 128 + signum)
    return result or evals.run(start.step, state, record=False)  # a finished run resumed: its final result


def _compiled_step(cfg: ml_collections.ConfigDict, layout: Layout, start: startup.Start) -> Callable:
    """The train step jitted once with the state's shardings, the state donated."""
    step = make_train_step(start.model, start.tx, start.lr, cfg.train.microbatches, cfg.train.z_loss, start.sums)
    shardings = jax.tree.map(lambda x: x.sharding, start.state)
    return jax.jit(step, in_shardings=(shardings, layout.batch_sharding()), out_shardings=(shardings, None),
                   donate_argnums=0)


def _metrics_log(cfg: ml_collections.ConfigDict, workdir: str, start: startup.Start) -> MetricsLog:
    c = start.model.config
    peak, _ = flops.peak_flops_per_second(True, c.dtype)
    return MetricsLog(workdir, start.step, cfg.train.log_every, cfg.train.steps, cfg.train.batch_size * c.max_len,
                      flops.flops_per_token(c, start.state.params), peak)


def _size(state: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(state.params))


def _describe(layout: Layout, start: startup.Start) -> str:
    """The model, the mesh and rules in force, the bytes of state each device holds, and where the run begins."""
    c, state = start.model.config, start.state
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    held = max(bytes_per_device(state).values())
    return (f"model: {_size(state) / 1e6:.2f}M parameters, vocab {c.vocab_size}, context {c.max_len}\n"
            f"{layout.describe()}\n"
            f"parameters + optimizer state: {total / 2**20:.2f} MiB in all, at most {held / 2**20:.2f} MiB per device "
            f"({held / total:.1%})\n{start.origin}")


def _write_json(path: str, value: dict[str, Any]) -> None:
    folders.write_atomic(path, json.dumps(value))

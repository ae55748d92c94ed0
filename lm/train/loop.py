"""The training loop. `train(run, workdir)` begins where the workdir says (startup.py: fresh, resumed or from
another run), runs the jitted step (step.py), and hands off to the metrics log, evaluations, checkpoints, the
non-finite policy and preemption, each when it is due."""

import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from lm import config as config_lib
from lm import flops, folders, optim
from lm.config import RunConfig
from lm.errors import Stopped
from lm.parallel.mesh import Layout, bytes_per_device, make_layout
from lm.run_files import CONFIG, SUMMARY
from lm.train import duties, faults, startup
from lm.train import workdir as workdir_lib
from lm.train.metrics import MetricsLog, count
from lm.train.nonfinite import EXIT_NONFINITE, NonFinite
from lm.train.preemption import StopSignal
from lm.train.step import make_train_step


def train(cfg: ml_collections.ConfigDict | RunConfig, workdir: str, devices: Sequence[jax.Device] | None = None
          ) -> dict[str, float]:
    """Trains (or resumes) the run of `cfg` (a config file's ConfigDict, or the RunConfig `lm.config.build` makes of
    it) in `workdir`, which it holds alone while it runs; returns the final validation metrics. `devices`: those
    config.mesh spans (default: all of them), e.g. one GPU of a notebook's eight."""
    return _train(cfg if isinstance(cfg, RunConfig) else config_lib.build(cfg), workdir, devices)


def _train(run: RunConfig, workdir: str, devices: Sequence[jax.Device] | None) -> dict[str, float]:
    layout = make_layout(run.mesh, devices)
    opt = optim.optimizer(run.optim, run.train.steps)
    startup.check_batch(run, layout)
    with workdir_lib.hold(workdir):
        start = startup.start(run, workdir, layout, opt)
        if jax.process_index() == 0:  # (once the workdir is known to serve this config)
            folders.write_json(os.path.join(workdir, CONFIG), run.to_dict(), indent=2)
        log = _metrics_log(run, workdir, start)
        log.write(None, _describe(run, layout, start))
        saves = duties.Checkpoints(run, start)
        try:
            result = _loop(run, workdir, layout, start, log, saves)
        except NonFinite as e:
            raise Stopped(f"error: {e}; {saves.close()}", EXIT_NONFINITE) from None
        saves.close()
        if log.active:  # the mark of a finished run (lm.sweep skips it)
            folders.write_json(os.path.join(workdir, SUMMARY), {"steps": run.train.steps,
                                                                "parameters": _size(start.state), "final": result})
        return result


def _loop(run: RunConfig, workdir: str, layout: Layout, start: startup.Start, log: MetricsLog,
          saves: duties.Checkpoints) -> dict[str, float]:
    step_fn, evals = _compiled_step(run, layout, start), duties.Evaluations(run, start, layout, log)
    state, guard, result, previous = start.state, start.guard, {}, None
    with layout.scope(), StopSignal() as stop:
        for step in range(start.step + 1, run.train.steps + 1):
            batch = faults.corrupted(next(start.batches), step, run.train.nan_steps, start.model.config.padded_vocab)
            state, metrics = step_fn(state, layout.global_batch(batch))
            if step == start.step + 1:  # compiled as it ran: the clock of tokens/s starts after it
                jax.block_until_ready(metrics)
                log.first_step(step)
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
                jax.block_until_ready(state)  # the steps before it, timed as steps
                with log.paused():
                    result = evals.run(step, state)
            if saves.due(step):
                jax.block_until_ready(state)
                with log.paused():
                    saves.save(step, state, metrics["finite"])
            signum = stop.agreed()
            if signum and step < run.train.steps:
                saves.save(step, state, metrics["finite"])
                saves.close()
                raise Stopped(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {step} saved in "
                              f"{workdir}; rerun the same command to resume", 128 + signum)
    return result or evals.run(start.step, state, record=False)  # a finished run resumed: its final result


def _compiled_step(run: RunConfig, layout: Layout, start: startup.Start) -> Callable:
    """The train step jitted once with the state's shardings, the state donated."""
    opt = start.optimizer
    step = make_train_step(start.model, opt.tx, opt.lr, run.train.microbatches, run.train.z_loss, start.sums)
    shardings = jax.tree.map(lambda x: x.sharding, start.state)
    return jax.jit(step, in_shardings=(shardings, layout.batch_sharding()), out_shardings=(shardings, None),
                   donate_argnums=0)


def _metrics_log(run: RunConfig, workdir: str, start: startup.Start) -> MetricsLog:
    c = start.model.config
    peak, _ = flops.peak_flops_per_second(c.dtype)
    return MetricsLog(workdir, start.step, run.train.log_every, run.train.steps, run.train.batch_size * c.max_len,
                      flops.flops_per_token(c, start.state.params), peak)


def _size(state: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(state.params))


def _describe(run: RunConfig, layout: Layout, start: startup.Start) -> str:
    """The model, the optimizer and its schedule, the mesh and rules in force, the bytes of state each device
    holds, and where the run begins."""
    c, state = start.model.config, start.state
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    held = max(bytes_per_device(state).values())
    return (f"model: {count(_size(state))} parameters, vocab {c.vocab_size}, context {c.max_len}\n"
            f"{run.optim.describe(run.train.steps)}\n{layout.describe()}\n"
            f"parameters + optimizer state: {total / 2**20:.2f} MiB in all, at most {held / 2**20:.2f} MiB per device "
            f"({held / total:.1%})\n{start.origin}")

"""`python -m lm.train --config configs/NAME.py --workdir DIR`: train, evaluate and checkpoint; rerun to resume.

The train step is a pure function `(state, batch) -> (state, metrics)`, jitted once with the state's
shardings and donated. Metrics go to the console, to WORKDIR/metrics.jsonl and to TensorBoard event files in
WORKDIR.
"""

import contextlib
import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import flags
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from lm import checkpoint, cli, data, flops, nonfinite, objective, optim, preemption, tensorboard, tokenizer
from lm import config as config_lib
from lm import sharding as shd
from lm import state as state_lib
from lm import workdir as workdir_lib
from lm.evaluate import evaluate, make_eval_step
from lm.model import TransformerLM

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def _local_sums(model: TransformerLM, params: Any, batch: dict[str, jax.Array], microbatches: int,
                z_loss: float) -> tuple[jax.Array, jax.Array, Any]:
    """`summed_loss_and_grads` over the rows at hand (one device's, or the whole batch under SPMD).

    With `microbatches` > 1 the batch is cut into that many slices whose gradients are accumulated in a scan
    (slice m takes rows m, m + M, ...: every device keeps its own rows): the same sums as one big batch, in the
    memory of one slice.
    """
    grad_fn = jax.value_and_grad(lambda p, b: objective.summed_loss(model, p, b, z_loss), has_aux=True)
    if microbatches == 1:
        (_, (nll_sum, count)), grads = grad_fn(params, batch)
        return nll_sum, count, grads

    def slices(x: jax.Array) -> jax.Array:  # [B, ...] -> [M, B / M, ...]
        return x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)

    def accumulate(carry, micro):
        (_, (nll, n)), g = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (nll, n, g)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.scan(accumulate, zeros, jax.tree.map(slices, batch))[0]


def summed_loss_and_grads(model: TransformerLM, params: Any, batch: dict[str, jax.Array], microbatches: int = 1,
                          z_loss: float = 0.0, reduce_axes: tuple[str, ...] = ()) -> tuple[jax.Array, jax.Array, Any]:
    """(sum of next-token losses, count of targets, gradient of the summed objective: loss plus z-loss) over a
    batch.

    `reduce_axes` (from `Layout.replicated_batch_axes`: the mesh axes that split the batch when no parameter is
    split) makes each device sum its own rows and combine the sums in one all-reduce of one flat buffer, instead
    of the all-reduce per gradient that XLA would insert: CPU collectives pay a rendezvous per buffer (~0.1 ms
    each; 9 of the 48 ms of the shakespeare_char step on two CPU devices).
    """
    if not reduce_axes:
        return _local_sums(model, params, batch, microbatches, z_loss)

    def local(p: Any, b: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, Any]:
        with nn.logical_axis_rules(()):  # inside: per-device arrays, no mesh axes to constrain them to
            flat, unravel = ravel_pytree(_local_sums(model, p, b, microbatches, z_loss))
        return unravel(jax.lax.psum(flat, reduce_axes))

    return jax.shard_map(local, in_specs=(P(), P(reduce_axes)), out_specs=P(), check_vma=False)(params, batch)


def loss_and_grads(model: TransformerLM, params: Any, batch: dict[str, jax.Array], microbatches: int = 1,
                   z_loss: float = 0.0, reduce_axes: tuple[str, ...] = ()) -> tuple[jax.Array, Any]:
    """Mean next-token loss of a batch and the gradient of the mean objective; arguments as in
    `summed_loss_and_grads`."""
    nll_sum, count, grads = summed_loss_and_grads(model, params, batch, microbatches, z_loss, reduce_axes)
    count = jnp.maximum(count, 1.0)
    return nll_sum / count, jax.tree.map(lambda g: g / count, grads)


def make_train_step(model: TransformerLM, tx: optax.GradientTransformationExtraArgs, lr: optax.Schedule,
                    microbatches: int = 1, z_loss: float = 0.0, nan_steps: Sequence[int] = (),
                    reduce_axes: tuple[str, ...] = ()) -> Callable:
    """The pure train step: one optimizer update (`optim.adamw`) on the next-token objective of a global batch,
    dropped if its loss or gradients are not finite. `nan_steps` (for tests of that) are steps whose gradients
    become NaN; `reduce_axes` as in `summed_loss_and_grads`. The gradients stay summed over the targets: the
    optimizer takes 1 / count as a factor, which saves a pass over them."""

    def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]) -> tuple[state_lib.TrainState, dict]:
        nll_sum, count, grads = summed_loss_and_grads(model, state.params, batch, microbatches, z_loss, reduce_axes)
        count = jnp.maximum(count, 1.0)
        loss = nll_sum / count
        if nan_steps:
            poisoned = jnp.isin(state.step + 1, jnp.asarray(nan_steps))
            grads = jax.tree.map(lambda g: jnp.where(poisoned, jnp.nan, g), grads)
        grad_norm = optax.tree.norm(grads) / count
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_norm=grad_norm, finite=finite,
                                       scale=1.0 / count)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr(state.step), "finite": finite}

    return train_step


class MetricsLog:
    """Console lines, a JSONL file and TensorBoard event files in the workdir (written by process 0 only);
    resuming drops records past the restored step, and a record torn by a write cut short (a full disk)."""

    def __init__(self, workdir: str, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS)
        if self.active and os.path.exists(self.path):
            kept, torn = [], 0
            with open(self.path, errors="replace") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        torn += bool(line.strip())
                        continue
                    if record["step"] <= resume_step:
                        kept.append(json.dumps(record) + "\n")
            if torn:
                print(f"warning: dropped {torn} torn line(s) of {self.path} (a write cut short)", file=sys.stderr,
                      flush=True)
            with self._disk_full_is_one_line():
                with open(self.path + ".tmp", "w") as f:
                    f.writelines(kept)
                os.replace(self.path + ".tmp", self.path)  # a kill during the rewrite loses no records
        self.events = tensorboard.EventWriter(workdir, resume_step) if self.active else None

    @contextlib.contextmanager
    def _disk_full_is_one_line(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise cli.DiskFull(f"the disk filled up while writing the metrics in {os.path.dirname(self.path)}; free "
                               "some space and rerun the same command to resume from the last checkpoint") from None

    def write(self, record: dict[str, Any] | None, line: str) -> None:
        if self.active:
            print(line, flush=True)
        if self.active and record is not None:
            with self._disk_full_is_one_line():
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                self.events.scalars(record["step"], {
                    f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}": v
                    for k, v in record.items() if k != "step" and isinstance(v, int | float)})


def _duration(seconds: float) -> str:
    """3h05m, 4m07s or 12s."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _start_up_lines(layout: shd.Layout, state: state_lib.TrainState, model_config: config_lib.ModelConfig,
                    start: int) -> str:
    """The model, the mesh and rules in force, and the bytes of state that each device holds."""
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    held = max(shd.bytes_per_device(state).values())
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return (f"model: {params / 1e6:.2f}M parameters, vocab {model_config.vocab_size}, context {model_config.max_len}\n"
            f"{layout.describe()}\n"
            f"parameters + optimizer state: {total / 2**20:.2f} MiB in all, at most {held / 2**20:.2f} MiB per device "
            f"({held / total:.1%})\n" + (f"resuming at step {start}" if start else "starting at step 0"))


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run of `cfg` in `workdir`, which it holds alone while it runs; returns the final
    validation metrics."""
    config_lib.validate(cfg)
    layout = shd.make_layout(cfg.mesh)
    batch = cfg.train.batch_size
    if batch % layout.data_parallel:
        raise cli.UserError(f"config.train.batch_size={batch} is not divisible by the data-parallel size "
                            f"{layout.data_parallel} (mesh data x fsdp)")
    # Whether the mesh divides the model, before a tokenizer is trained (a vocabulary any mesh divides).
    state_lib.abstract_params(TransformerLM(config_lib.model_config(cfg, layout.mesh.size * 128)), layout)
    with workdir_lib.hold(workdir):
        return _train(cfg, workdir, layout)


def _train(cfg: ml_collections.ConfigDict, workdir: str, layout: shd.Layout) -> dict[str, float]:
    processes, process = jax.process_count(), jax.process_index()
    batch = cfg.train.batch_size
    d = cfg.data
    corpus = data.open_corpus(d)
    ckpt = checkpoint.Checkpointer(workdir, cfg.checkpoint.every, cfg.checkpoint.keep)
    start, saved, damaged = ckpt.newest_meta()  # damaged: newer checkpoints whose meta does not read
    if start == 0:
        raise cli.UserError(f"{workdir} holds imported weights (step 0); train from them with "
                            f"--config.init_from={workdir} and a new --workdir")
    start = start or 0
    if start:  # resuming: the tokenizer and vocabulary the run began with
        tok, vocab = tokenizer.from_json(saved["tokenizer"]), saved["model"]["vocab_size"]
    elif cfg.init_from:
        source_ckpt, source_step, source_model, tok, _ = checkpoint.init_source(cfg.init_from)
        vocab = source_model.vocab_size
    else:
        if process == 0:
            texts = data.texts(corpus, "train")
            t = cfg.tokenizer
            tok = tokenizer.load_or_train(workdir, t.type, t.vocab_size, texts, t.path, t.sample_chars)
        shd.sync("tokenizer")
        if process != 0:
            tok = tokenizer.Tokenizer.load(os.path.join(workdir, tokenizer.MODEL_FILE))
        vocab = tok.vocab_size
    model_config = config_lib.model_config(cfg, vocab)
    model = TransformerLM(model_config)
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)

    if start:
        checkpoint.check_compatible(saved, model_config, cfg.tokenizer.to_dict(), batch, workdir)
        start, state, data_state, more = ckpt.restore_newest_good(start, state_lib.abstract(model, tx, layout))
        damaged += more
    if damaged and process == 0:
        resumed = f"resuming from checkpoint {start} instead" if start else "starting afresh: none of them reads"
        print(f"warning: checkpoint {', '.join(damaged)} is damaged and was moved aside as damaged-STEP; {resumed}",
              file=sys.stderr, flush=True)
    if start:
        shards = d.shards or data_state["shards"]
    else:
        if cfg.init_from:
            params = checkpoint.init_params(source_ckpt, source_step, source_model, model_config, layout,
                                            cfg.init_from)
            state = state_lib.from_params(model, tx, layout, params)
        else:
            state = state_lib.create(model, tx, layout, cfg.seed)
        shards = d.shards or processes
    row_len = model_config.max_len + 1
    batches = data.TrainBatches(corpus, tok, row_len, batch, cfg.seed, shards, process, processes, d.ahead)
    if start:
        batches.set_state(data_state)
    run_config = cfg.to_dict()
    run_config["data"]["shards"] = shards
    meta = checkpoint.make_meta(model_config, tok, run_config)
    steps_guard = nonfinite.NonFiniteSteps(cfg.train.nonfinite, cfg.train.max_skips)
    if start:
        steps_guard.set_state(data_state.get("nonfinite"))
    log = MetricsLog(workdir, start)
    if log.active:
        print(_start_up_lines(layout, state, model_config, start), flush=True)
        if cfg.init_from and not start:
            print(f"parameters and tokenizer from {cfg.init_from} (step {source_step})", flush=True)

    shardings = jax.tree.map(lambda x: x.sharding, state)
    train_step = make_train_step(model, tx, lr, cfg.train.microbatches, cfg.train.z_loss, cfg.train.nan_steps,
                                 layout.replicated_batch_axes(state.params))
    step_fn = jax.jit(train_step, in_shardings=(shardings, layout.batch_sharding()),
                      out_shardings=(shardings, None), donate_argnums=0)
    eval_step = make_eval_step(model, tok.token_bytes(len(d.separator.encode())), layout)
    eval_set: list[dict] = []
    tokens_per_step = batch * model_config.max_len
    flops_per_token = flops.flops_per_token(model_config, state.params)
    peak, _ = flops.peak_flops_per_second(True, model_config.dtype)

    def amount(step: int) -> dict[str, float]:
        """The training tokens and model FLOPs up to `step`, in every record."""
        return {"train_tokens": step * tokens_per_step, "train_flops": step * tokens_per_step * flops_per_token}

    def run_eval(step: int, record: bool = True) -> dict[str, float]:
        if not eval_set:  # packed once, reused by every evaluation
            eval_set.extend(data.eval_batches(corpus, tok, row_len, batch, shards, process, processes,
                                              max_batches=cfg.train.eval_batches))
        result = evaluate(eval_step, state.params, eval_set, layout)
        log.write({"step": step, **amount(step), **{f"val_{k}": v for k, v in result.items()}} if record else None,
                  f"step {step:>6} | val loss {result['loss']:.4f} | ppl {result['perplexity']:.2f} | "
                  f"bits/byte {result['bits_per_byte']:.4f}")
        return result

    result: dict[str, float] = {}
    t_start = t_last = time.time()
    last_logged = start
    previous = None

    def stop_if(reason: str | None) -> None:
        """Stops the run, once pending saves commit, if a non-finite step gave a reason to."""
        if reason:
            ckpt.wait()
            last = ckpt.latest_step()
            ckpt.close()
            kept = f"checkpoint {last} is the last good state" if last else "no checkpoint was written before it"
            raise cli.Stopped(f"error: {reason}; {kept}", nonfinite.EXIT_NONFINITE)

    def save(step: int, step_metrics: dict[str, jax.Array]) -> None:
        stop_if(steps_guard.observe(step, bool(step_metrics["finite"])))  # never a checkpoint after a bad step
        ckpt.save(step, state, {**batches.global_state(), "nonfinite": steps_guard.state()}, meta)

    with layout.scope(), preemption.StopSignal() as stop:
        for step in range(start + 1, cfg.train.steps + 1):
            state, metrics = step_fn(state, layout.global_batch(next(batches)))
            # At most two steps in flight: the next batch is read while a step runs, and queues of many
            # steps with collectives cannot stall XLA's CPU devices (seen with one device per core).
            jax.block_until_ready(previous)
            if previous is not None:
                stop_if(steps_guard.observe(step - 1, bool(previous["finite"])))
            previous = metrics
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                reason = steps_guard.observe(step, bool(m.pop("finite")))
                now = time.time()
                step_s = (now - t_last) / (step - last_logged)
                tps = tokens_per_step / step_s
                t_last, last_logged = now, step
                skipped = f" | skipped {steps_guard.skipped}" if steps_guard.skipped else ""
                mfu = flops_per_token * tps / peak
                log.write({"step": step, **amount(step), **m, "skipped": steps_guard.skipped, "tokens_per_sec": tps,
                           "mfu": mfu, "wall_time": now - t_start},
                          f"step {step:>6}/{cfg.train.steps} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
                          f"grad norm {m['grad_norm']:.3f} | {tps:,.0f} tok/s | MFU {mfu:.1%} | {now - t_start:.1f}s | "
                          f"eta {_duration(step_s * (cfg.train.steps - step))}{skipped}")
                stop_if(reason)
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                result = run_eval(step)
            saved = ckpt.due(step) or step == cfg.train.steps
            if saved:
                save(step, metrics)
            signum = stop.agreed()
            if signum and step < cfg.train.steps:
                if not saved:
                    save(step, metrics)
                ckpt.wait()
                ckpt.close()
                name = signal.Signals(signum).name
                raise cli.Stopped(f"stopped by {name} after step {step}; checkpoint {step} saved in {workdir}; "
                                  "rerun the same command to resume", 128 + signum)
    if not result:  # resumed a finished run: report its final evaluation
        result = run_eval(start, record=False)
    ckpt.wait()
    ckpt.close()
    if log.active:  # the mark of a finished run (lm.sweep skips it)
        summary = {"steps": cfg.train.steps, "parameters": sum(x.size for x in jax.tree.leaves(state.params))}
        with open(os.path.join(workdir, SUMMARY + ".tmp"), "w") as f:
            json.dump(summary, f)
        os.replace(os.path.join(workdir, SUMMARY + ".tmp"), os.path.join(workdir, SUMMARY))
    return result


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None or not f.workdir:
        raise cli.UserError("usage: python -m lm.train --config configs/NAME.py --workdir DIR")
    config_lib.validate(f.config)
    shd.split_cpu(f.config.mesh, f.config.train.batch_size)
    shd.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    train(f.config, f.workdir)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/shakespeare_char.py.")
    flags.DEFINE_string("workdir", None, "Directory for the tokenizer, checkpoints and metrics.")
    flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0 (all processes).")
    flags.DEFINE_integer("num_processes", 1, "Multi-process: how many processes take part.")
    flags.DEFINE_integer("process_id", 0, "Multi-process: this process's index, from 0.")
    flags.DEFINE_bool("distributed", False, "Multi-process with the cluster auto-detected (SLURM, TPU, MPI).")
    cli.run(main)

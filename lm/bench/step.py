"""The train step's figures for `python -m lm.bench --config configs/NAME.py`: compile time, step time, tokens/s,
FLOPs and MFU.

MFU is model FLOPs (6 N per token for the matmul parameters N, plus 12 L D T for attention scores and values)
per second over the peak: a table of accelerator peaks (bfloat16, dense) times the device count, or on a CPU
the dense matmul throughput of the host in the model's compute dtype measured in the same run (CPU devices share
its cores).
A breakdown (forward, forward + backward, optimizer update) says where the step's time goes; `--profile`
splits it by model part from a profiler trace. `--depths 12,48` compares the step's compile time at two depths.
`--decode` times sampling instead (decode.py), `--data` the input pipeline (data.py).
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm import flops, optim
from lm.backends import select
from lm.bench import data as data_bench
from lm.bench import profile as step_profile
from lm.config import RunConfig
from lm.data import corpus
from lm.model import objective
from lm.model.config import ModelConfig
from lm.parallel.mesh import Layout, make_layout
from lm.train import state as state_lib
from lm.train.step import loss_and_grads, make_train_step


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn()` (blocking on its result) over `repeats` runs, after one warm-up."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def synthetic_batch(layout: Layout, batch: int, length: int, vocab: int) -> dict[str, jax.Array]:
    """A global batch of `batch` random rows of `length` + 1 tokens, one document each."""
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, length + 1)).astype(np.int32)
    local = {"tokens": tokens, "segment_ids": np.ones_like(tokens),
             "positions": np.tile(np.arange(length + 1, dtype=np.int32), (batch, 1))}
    return layout.global_batch(local)


def compile_seconds(cfg: RunConfig, model_config: ModelConfig, layout: Layout) -> float:
    """Seconds to lower and compile the train step, from abstract shapes (no parameters are allocated)."""
    model = select.model(model_config)
    tx, lr, *_ = optim.optimizer(cfg.optim, cfg.train.steps)
    abstract = state_lib.abstract(model, tx, layout)
    b, t = cfg.train.batch_size, model_config.max_len + 1
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=layout.batch_sharding())
             for k in ("tokens", "segment_ids", "positions")}
    step = jax.jit(make_train_step(model, tx, lr, cfg.train.microbatches, cfg.train.z_loss,
                                   select.gradient_sums(layout, abstract.params)), donate_argnums=0)
    start = time.perf_counter()
    with layout.scope():
        step.lower(abstract, batch).compile()
    return time.perf_counter() - start


def bench(cfg: RunConfig, repeats: int = 5, profile: bool = False) -> dict[str, Any]:
    """Figures of the train step of `cfg` on synthetic tokens (vocabulary: config.tokenizer.vocab_size)."""
    layout = make_layout(cfg.mesh)
    c = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
    model = select.model(c)
    tx, lr, *_ = optim.optimizer(cfg.optim, cfg.train.steps)
    state = state_lib.create(model, tx, layout, cfg.seed)
    batch = synthetic_batch(layout, cfg.train.batch_size, c.max_len, c.vocab_size)
    tokens = cfg.train.batch_size * c.max_len
    out = {"parameters": sum(x.size for x in jax.tree.leaves(state.params)),
           "compile_s": compile_seconds(cfg, c, layout)}
    sums = select.gradient_sums(layout, state.params)
    step = jax.jit(make_train_step(model, tx, lr, cfg.train.microbatches, cfg.train.z_loss, sums), donate_argnums=0)
    fwd = jax.jit(lambda p, b: objective.mean_loss(model, p, b))
    fwd_bwd = jax.jit(lambda p, b: loss_and_grads(model, p, b, cfg.train.microbatches, cfg.train.z_loss, sums))
    holder = [state]

    def run_step():
        holder[0], metrics = step(holder[0], batch)
        return metrics

    with layout.scope():
        out["step_s"] = _timed(run_step, repeats)
        out["forward_s"] = _timed(lambda: fwd(holder[0].params, batch), repeats)
        out["forward_backward_s"] = _timed(lambda: fwd_bwd(holder[0].params, batch), repeats)
        if profile:
            out["profile"] = step_profile.profile(run_step, step.lower(holder[0], batch).compile().as_text())
    peak, source = flops.peak_flops_per_second(dtype=c.dtype)
    out["tokens_per_s"] = tokens / out["step_s"]
    out["flops_per_token"] = flops.flops_per_token(c, state.params)
    out["flops_per_s"] = out["flops_per_token"] * out["tokens_per_s"]
    out["peak_flops_per_s"], out["peak_source"] = peak, source
    out["mfu"] = out["flops_per_s"] / peak
    return out


def data_speed(cfg: RunConfig, repeats: int) -> None:
    """Prints the training batches' tokens/s from prepared shards against the train step's."""
    tok = corpus.fresh_tokenizer(cfg.data, cfg.tokenizer)
    row_len, batch = cfg.model.max_len + 1, cfg.train.batch_size
    loader = data_bench.loader_speed(cfg.data, tok, row_len, batch)
    step = bench(dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, vocab_size=tok.vocab_size)),
                 repeats)
    print(f"training batches from prepared shards (one process, batch {batch} x {row_len} tokens, "
          f"{loader['tokens']:,.0f} tokens), and the train step:")
    print(f"  batches          {loader['tokens_per_s']:>14,.0f} tokens/s ({loader['batches_per_s']:,.1f} batches/s)")
    print(f"  train step ({jax.device_count()} {jax.devices()[0].platform} device(s)) {step['tokens_per_s']:>12,.0f} "
          f"tokens/s")
    print(f"ratio batches / train step: {loader['tokens_per_s'] / step['tokens_per_s']:.1f}x")

"""`python -m lm.bench --config configs/NAME.py`: compile time, step time, tokens/s, FLOPs and MFU of the train step.

MFU is model FLOPs (6 N per token for the matmul parameters N, plus 12 L D T for attention scores and values)
per second over the peak: a table of accelerator peaks (bfloat16, dense) times the device count, or on a CPU
the dense matmul throughput of the host in the model's compute dtype measured in the same run (CPU devices share
its cores).
A breakdown (forward, forward + backward, optimizer update) says where the step's time goes; `--profile`
splits it by model part from a profiler trace. `--depths 12,48` compares the step's compile time at two depths.
`--decode` times sampling instead (lm/decode_bench.py), `--data` the input pipeline (lm/data_bench.py).
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from lm import cli, data, data_bench, decode_bench, flops, objective, optim, step_profile, tokenizer
from lm import config as config_lib
from lm import sharding as shd
from lm import state as state_lib
from lm.model import TransformerLM
from lm.train import make_train_step, summed_loss_and_grads


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn()` (blocking on its result) over `repeats` runs, after one warm-up."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def synthetic_batch(layout: shd.Layout, batch: int, length: int, vocab: int) -> dict[str, jax.Array]:
    """A global batch of `batch` random rows of `length` + 1 tokens, one document each."""
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, length + 1)).astype(np.int32)
    local = {"tokens": tokens, "segment_ids": np.ones_like(tokens),
             "positions": np.tile(np.arange(length + 1, dtype=np.int32), (batch, 1))}
    return layout.global_batch(local)


def compile_seconds(cfg: Any, model_config: config_lib.ModelConfig, layout: shd.Layout) -> float:
    """Seconds to lower and compile the train step, from abstract shapes (no parameters are allocated)."""
    model = TransformerLM(model_config)
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)
    abstract = state_lib.abstract(model, tx, layout)
    b, t = cfg.train.batch_size, model_config.max_len + 1
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=layout.batch_sharding())
             for k in ("tokens", "segment_ids", "positions")}
    step = jax.jit(make_train_step(model, tx, lr, cfg.train.microbatches, cfg.train.z_loss,
                                   reduce_axes=layout.replicated_batch_axes(abstract.params)), donate_argnums=0)
    start = time.perf_counter()
    with layout.scope():
        step.lower(abstract, batch).compile()
    return time.perf_counter() - start


def bench(cfg: Any, repeats: int = 5, profile: bool = False) -> dict[str, Any]:
    """Figures of the train step of `cfg` on synthetic tokens (vocabulary: config.tokenizer.vocab_size)."""
    config_lib.validate(cfg)
    layout = shd.make_layout(cfg.mesh)
    c = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
    model = TransformerLM(c)
    tx, lr = optim.optimizer(cfg.optim, cfg.train.steps)
    state = state_lib.create(model, tx, layout, cfg.seed)
    batch = synthetic_batch(layout, cfg.train.batch_size, c.max_len, c.vocab_size)
    tokens = cfg.train.batch_size * c.max_len
    out = {"parameters": sum(x.size for x in jax.tree.leaves(state.params)),
           "compile_s": compile_seconds(cfg, c, layout)}
    reduce_axes = layout.replicated_batch_axes(state.params)
    train_step = make_train_step(model, tx, lr, cfg.train.microbatches, cfg.train.z_loss, reduce_axes=reduce_axes)
    step = jax.jit(train_step, donate_argnums=0)
    fwd = jax.jit(lambda p, b: objective.mean_loss(model, p, b))
    fwd_bwd = jax.jit(lambda p, b: summed_loss_and_grads(model, p, b, cfg.train.microbatches, cfg.train.z_loss,
                                                          reduce_axes))
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


def data_speed(cfg: Any, repeats: int) -> None:
    """Prints the input pipeline's tokens/s (the config's tokenizer, then BPE) against the train step's."""
    corpus = data.open_corpus(cfg.data)
    t = cfg.tokenizer
    tok = tokenizer.train(data.texts(corpus, "train"), t.type, t.vocab_size, t.sample_chars)
    bpe = tokenizer.train(data.texts(corpus, "train"), "bpe", 2000, t.sample_chars)
    row_len, batch = cfg.model.max_len + 1, cfg.train.batch_size
    mine = data_bench.pipeline(corpus, tok, row_len, batch)
    with_bpe = data_bench.pipeline(corpus, bpe, row_len, batch)
    cfg = cfg.copy_and_resolve_references()
    cfg.tokenizer.vocab_size = tok.vocab_size
    step = bench(cfg, repeats)
    print(f"input pipeline alone (one process, batch {batch} x {row_len} tokens), and the train step:")
    data_bench.report(f"{t.type} ({tok.vocab_size} ids)", mine)
    data_bench.report(f"bpe ({bpe.vocab_size} ids)", with_bpe)
    print(f"  train step ({jax.device_count()} {jax.devices()[0].platform} device(s)) {step['tokens_per_s']:>12,.0f} "
          f"tokens/s")
    print(f"ratio pipeline / train step: {mine['tokens_per_s'] / step['tokens_per_s']:.1f}x")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None:
        raise cli.UserError("usage: python -m lm.bench --config configs/NAME.py [--depths 12,48]")
    cfg = f.config
    config_lib.validate(cfg)
    if f.decode:  # the model split over --decode_tensor devices, as `lm.sample --tensor` splits it
        layout = shd.tensor_layout(f.decode_tensor, "--decode_tensor")
        c = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
        shardings = jax.tree.map(lambda a: a.sharding, state_lib.abstract_params(TransformerLM(c), layout))
        params = jax.jit(lambda: nn.unbox(state_lib.boxed_params(TransformerLM(c), cfg.seed)),
                         out_shardings=shardings)()
        batches = [int(b) for b in f.decode_batches.split(",")]
        with layout.scope():
            rows = decode_bench.measure(c, params, batches, f.decode_formats.split(","), f.prompt_len,
                                        f.new_tokens, f.repeats)
        decode_bench.report(rows, f.prompt_len, f.new_tokens, f.decode_tensor)
        return
    shd.split_cpu(cfg.mesh, cfg.train.batch_size)
    if f.data:
        data_speed(cfg, f.repeats)
        return
    r = bench(cfg, f.repeats, f.profile)
    b, t = cfg.train.batch_size, cfg.model.max_len
    print(f"train step of {r['parameters'] / 1e6:.1f}M parameters, batch {b} x {t} tokens, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"compile {r['compile_s']:.1f} s | step {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} tokens/s")
    print(f"model FLOPs {r['flops_per_token'] / 1e6:.1f} M/token | {r['flops_per_s'] / 1e9:.1f} GFLOP/s | "
          f"MFU {r['mfu']:.1%} of {r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({r['peak_source']})")
    fwd, fb, step = r["forward_s"], r["forward_backward_s"], r["step_s"]
    print(f"where the step's time goes: forward {fwd / step:.0%}, backward {(fb - fwd) / step:.0%}, "
          f"optimizer update and the rest {max(step - fb, 0.0) / step:.0%} "
          f"(forward {fwd * 1e3:.1f} ms, forward+backward {fb * 1e3:.1f} ms)")
    if f.profile:
        total = sum(r["profile"].values())
        print(f"profile: op time {total * 1e3:.1f} ms per step (summed over threads), by model part:")
        parts = sorted({p for p, _ in r["profile"]}, key=lambda p: -sum(v for (q, _), v in r["profile"].items()
                                                                         if q == p))
        for part in parts:
            fw, bw = r["profile"].get((part, "forward"), 0.0), r["profile"].get((part, "backward"), 0.0)
            print(f"  {part:36s} {(fw + bw) / total:6.1%}  (forward {fw * 1e3:6.2f} ms, backward {bw * 1e3:6.2f} ms)")
    if f.depths:
        layout = shd.make_layout(cfg.mesh)
        depths = [int(d) for d in f.depths.split(",")]
        base = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
        times = {d: compile_seconds(cfg, dataclasses.replace(base, num_layers=d), layout) for d in depths}
        print(f"compile time by depth (scan_layers={base.scan_layers}): "
              + ", ".join(f"{d} layers {s:.1f} s" for d, s in times.items())
              + f"; ratio {times[depths[-1]] / times[depths[0]]:.2f}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/gpt2_124m.py.")
    flags.DEFINE_integer("repeats", 5, "Timed steps (after one warm-up).")
    flags.DEFINE_bool("profile", False, "Also trace the step and print its op time by model part.")
    flags.DEFINE_bool("decode", False, "Measure sampling (decode) speed instead of the train step.")
    flags.DEFINE_bool("data", False, "Measure the input pipeline's speed against the train step's.")
    flags.DEFINE_string("decode_batches", "1,8", "Decode: batch sizes.")
    flags.DEFINE_integer("decode_tensor", 1, "Decode: devices to split the model over, as lm.sample --tensor "
                         "(a CPU host is made into that many devices).")
    flags.DEFINE_string("decode_formats", "none,bfloat16,int8,int8_dynamic",
                        "Decode: weight formats (see lm.sample --quantize).")
    flags.DEFINE_integer("prompt_len", 16, "Decode: prompt tokens.")
    flags.DEFINE_integer("new_tokens", 128, "Decode: tokens generated per row.")
    flags.DEFINE_string("depths", "", "Also compare the step's compile time at these depths, e.g. 12,48.")
    cli.run(main)

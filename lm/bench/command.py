"""The work of `python -m lm.bench` (its usage and flags: options.py)."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from lm import config as config_lib
from lm.backends import cpu_devices
from lm.bench import decode
from lm.bench import tasks as task_bench
from lm.bench.step import bench, compile_seconds, data_speed
from lm.config import RunConfig
from lm.errors import UserError
from lm.model.transformer import TransformerLM
from lm.parallel import placement
from lm.parallel.mesh import make_layout, tensor_layout
from lm.train.metrics import count


def _decode(cfg: RunConfig, f: Any) -> None:
    """Decode speed, the model split over --decode_tensor devices as `lm.sample --tensor` splits it."""
    if f.decode_tensor >= 1:
        cpu_devices.split_cpu(f.decode_tensor)
    layout = tensor_layout(f.decode_tensor, "--decode_tensor")
    c = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
    params = placement.init_params(TransformerLM(c), layout, cfg.seed)
    batches = [int(b) for b in f.decode_batches.split(",")]
    with layout.scope():
        rows = decode.measure(c, params, batches, f.decode_formats.split(","), f.prompt_len, f.new_tokens, f.repeats)
    decode.report(rows, f.prompt_len, f.new_tokens, f.decode_tensor)


def _report(r: dict[str, Any], cfg: RunConfig) -> None:
    b, t = cfg.train.batch_size, cfg.model.max_len
    print(f"train step of {count(r['parameters'])} parameters, batch {b} x {t} tokens, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"compile {r['compile_s']:.1f} s | step {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} tokens/s")
    print(f"model FLOPs {r['flops_per_token'] / 1e6:.1f} M/token | {r['flops_per_s'] / 1e9:.1f} GFLOP/s | "
          f"MFU {r['mfu']:.1%} of {r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({r['peak_source']})")
    fwd, fb, step = r["forward_s"], r["forward_backward_s"], r["step_s"]
    print(f"where the step's time goes: forward {fwd / step:.0%}, backward {(fb - fwd) / step:.0%}, "
          f"optimizer update and the rest {max(step - fb, 0.0) / step:.0%} "
          f"(forward {fwd * 1e3:.1f} ms, forward+backward {fb * 1e3:.1f} ms)")
    if "profile" in r:
        profile = r["profile"]
        total = sum(profile.values())
        print(f"profile: op time {total * 1e3:.1f} ms per step (summed over threads), by model part:")
        parts = sorted({p for p, _ in profile}, key=lambda p: -sum(v for (q, _), v in profile.items() if q == p))
        for part in parts:
            fw, bw = profile.get((part, "forward"), 0.0), profile.get((part, "backward"), 0.0)
            print(f"  {part:36s} {(fw + bw) / total:6.1%}  (forward {fw * 1e3:6.2f} ms, backward {bw * 1e3:6.2f} ms)")


def _depths(cfg: RunConfig, depths: list[int]) -> None:
    layout = make_layout(cfg.mesh)
    base = config_lib.model_config(cfg, cfg.tokenizer.vocab_size)
    times = {d: compile_seconds(cfg, dataclasses.replace(base, num_layers=d), layout) for d in depths}
    print(f"compile time by depth (scan_layers={base.scan_layers}): "
          + ", ".join(f"{d} layers {s:.1f} s" for d, s in times.items())
          + f"; ratio {times[depths[-1]] / times[depths[0]]:.2f}")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None:
        raise UserError("usage: python -m lm.bench --config configs/NAME.py [--depths 12,48]")
    cfg = config_lib.build(f.config)
    if f.decode:
        _decode(cfg, f)
        return
    cpu_devices.split_cpu(cpu_devices.cpu_device_count(cfg.mesh, cfg.train.batch_size, cpu_devices.cores()))
    if f.tasks:
        task_bench.report(task_bench.measure(cfg, f.tasks, f.task_examples))
        return
    if f.data:
        data_speed(cfg, f.repeats)
        return
    _report(bench(cfg, f.repeats, f.profile), cfg)
    if f.depths:
        _depths(cfg, [int(d) for d in f.depths.split(",")])

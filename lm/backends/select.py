"""Which implementation runs where: the one place in lm that looks at the platform.

`select(config)` turns the model's `attention` and `matmul` settings ('auto' by default) into the `Ops` the
model is built with; `model(config)` builds it so. `gradient_sums(layout, params)` says how the train step
combines the devices' gradients. Every command calls these once, at start-up.
"""

from collections.abc import Callable
from typing import Any

import jax

from lm.backends import cpu_attention, cpu_data_parallel, cpu_matmul
from lm.model import ops
from lm.model.attention import reference_attention
from lm.model.config import ModelConfig
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout


def _cudnn(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool) -> jax.Array:
    """cuDNN's flash attention (NVIDIA GPUs, bfloat16): with `causal`, it skips the blocks above the diagonal."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")


def _cpu(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool) -> jax.Array:
    return (cpu_attention.causal_attention if causal else cpu_attention.attention)(q, k, v, mask)


def _reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool) -> jax.Array:
    del causal
    return reference_attention(q, k, v, mask)


ATTENTION: dict[str, ops.Attention] = {"xla": ops.attention, "cudnn": _cudnn, "cpu": _cpu, "reference": _reference}
MATMUL: dict[str, ops.Einsum] = {"xla": ops.einsum, "cpu": cpu_matmul.einsum}


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': where JAX runs."""
    return jax.default_backend()


def kinds(config: ModelConfig, on: str | None = None) -> tuple[str, str]:
    """(attention, matmul) that the config's settings mean on platform `on` (default: this one)."""
    on = on or platform()
    attention, matmul = config.attention, config.matmul
    if attention == "auto":
        attention = "cpu" if on == "cpu" else "cudnn" if on == "gpu" and config.dtype == "bfloat16" else "xla"
    if matmul == "auto":
        matmul = "cpu" if on == "cpu" else "xla"
    return attention, matmul


def select(config: ModelConfig, on: str | None = None) -> ops.Ops:
    """The Ops for a model of `config` on platform `on` (default: this one)."""
    attention, matmul = kinds(config, on)
    return ops.Ops(einsum=MATMUL[matmul], attention=ATTENTION[attention])


def model(config: ModelConfig) -> TransformerLM:
    """The model of `config` with the Ops this platform runs it with."""
    return TransformerLM(config, select(config))


def gradient_sums(layout: Layout, params: Any) -> Callable[[Callable], Callable] | None:
    """How the train step sums the devices' gradients: on CPU devices, with the batch split and no parameter
    split, one flat all-reduce (cpu_data_parallel.py); elsewhere None, leaving it to XLA (whose per-gradient
    all-reduces overlap the backward on accelerators)."""
    if layout.mesh.devices.flat[0].platform != "cpu":
        return None
    axes = cpu_data_parallel.batch_axes(layout, params)
    return cpu_data_parallel.summed_over(axes) if axes else None

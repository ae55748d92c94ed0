"""Model FLOPs per token, and the peak FLOP/s that model FLOP/s are divided by for MFU: a table of accelerator
peaks, or on a CPU host the dense-matmul throughput in the compute dtype measured in the same run."""

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib

# Dense bfloat16 peak FLOP/s per chip, by a substring of `device_kind`.
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
         "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


def matmul_flops_per_second(n: int = 2048, dtype: str = "float32", runs: int = 10) -> float:
    """Measured dense matmul throughput of the first local device, [n, n] @ [n, n] accumulated in float32: the
    best of `runs` runs."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops_per_second(quick: bool = False, dtype: str = "float32") -> tuple[float, str]:
    """The peak of all devices together and where it comes from; on a CPU host, matmuls in the compute `dtype`
    measured now (`quick`: in ~0.1 s)."""
    kind, count = jax.devices()[0].device_kind, jax.device_count()
    for name, peak in PEAKS.items():
        if name in kind:
            return peak * count, f"{count} x {kind} bfloat16 peak (table)"
    measured = matmul_flops_per_second(1024, dtype, runs=3) if quick else matmul_flops_per_second(dtype=dtype)
    return measured, f"{kind} host: {jnp.dtype(dtype).name} matmul measured now"


def flops_per_token(c: config_lib.ModelConfig, params: Any) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM count them: 6 x the parameters a token's forward pass
    multiplies by (every parameter but the lookup tables: learned positions, an untied input embedding, and the
    padding rows of the vocabulary) + 12 x layers x heads x head width x context (attention's scores and values)."""
    total = sum(x.size for x in jax.tree.leaves(params))
    lookups = c.padded_vocab * c.embed_dim * (0 if c.tie_embeddings else 1)  # untied input table: a gather
    lookups += c.max_len * c.embed_dim if c.position == "learned" else 0
    lookups += (c.padded_vocab - c.vocab_size) * c.embed_dim  # the head's padding columns are not model FLOPs
    return 6 * (total - lookups) + 12 * c.num_layers * c.num_heads * c.head_dim * c.max_len

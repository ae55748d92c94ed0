"""Model FLOPs per token, and the peak FLOP/s that model FLOP/s are divided by for MFU: a table of accelerator
peaks, or on a CPU host the dense-matmul throughput in the compute dtype measured in the same run."""

import contextlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import folders
from lm.model.config import ModelConfig

PEAK_FILE = "~/.cache/lm/peak_flops.json"  # a CPU host's measured matmul throughput, by device kind and dtype
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


def peak_flops_per_second(dtype: str = "float32") -> tuple[float, str]:
    """The peak of all devices together and where it comes from: a table of accelerators; on a CPU host, the
    dense matmul throughput in the compute `dtype`, measured the first time on this machine and read back from
    PEAK_FILE ever after, so that every run's MFU on a machine has the same denominator."""
    kind, count = jax.devices()[0].device_kind, jax.device_count()
    for name, peak in PEAKS.items():
        if name in kind:
            return peak * count, f"{count} x {kind} bfloat16 peak (table)"
    path, key = os.path.expanduser(PEAK_FILE), f"{kind} x {count}, {jnp.dtype(dtype).name}, jax {jax.__version__}"
    known = {}
    if os.path.isfile(path):
        with open(path) as f, contextlib.suppress(ValueError):
            known = dict(json.load(f))
    if not isinstance(known.get(key), float):
        known[key] = matmul_flops_per_second(dtype=dtype)
        with contextlib.suppress(OSError):  # (a read-only home: measured again next time)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            folders.write_json(path, known, indent=1)
    return known[key], f"{kind} host: {jnp.dtype(dtype).name} matmul, measured once on this machine ({PEAK_FILE})"


def flops_per_token(c: ModelConfig, params: Any) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM count them: 6 x the parameters a token's forward pass
    multiplies by (every parameter but the lookup tables: learned positions, an untied input embedding, and the
    padding rows of the vocabulary) + 12 x layers x heads x head width x context (attention's scores and values)."""
    total = sum(x.size for x in jax.tree.leaves(params))
    lookups = c.padded_vocab * c.embed_dim * (0 if c.tie_embeddings else 1)  # untied input table: a gather
    lookups += c.max_len * c.embed_dim if c.position == "learned" else 0
    lookups += (c.padded_vocab - c.vocab_size) * c.embed_dim  # the head's padding columns are not model FLOPs
    return 6 * (total - lookups) + 12 * c.num_layers * c.num_heads * c.head_dim * c.max_len

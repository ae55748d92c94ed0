"""Where a jitted step's time goes: op times from a JAX profiler trace, grouped by the model part they compute.

Each traced op is matched to its HLO instruction in the compiled step, whose `op_name` metadata names the
Flax module path (e.g. `.../block_1/attn/query/...`) and, for the backward pass, a `transpose(...)`.
"""

import collections
import glob
import gzip
import json
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

# (part, pattern on op_name), first match wins; ops outside the model are the loss and the optimizer update.
PARTS = (
    ("attention projections", r"/attn/(query|key|value|out)/"),
    ("attention scores, softmax, mask", r"/attn/"),
    ("MLP matmuls", r"/mlp/.*dot_general"),
    ("MLP activation and biases", r"/mlp/"),
    ("norms", r"norm"),
    ("embeddings and output head", r"TransformerLM"),
)


def _op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> op_name metadata."""
    names = {}
    for line in hlo_text.split("\n"):
        inst, meta = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line), re.search(r'op_name="([^"]*)"', line)
        if inst and meta:
            names.setdefault(inst.group(1), meta.group(1))
    return names


def _part(op_name: str) -> str:
    if "TransformerLM" not in op_name:
        return "loss, optimizer update and the rest"
    for part, pattern in PARTS:
        if re.search(pattern, op_name):
            return part
    return "embeddings and output head"


def profile(step: Callable[[], Any], compiled_text: str, steps: int = 5) -> dict[tuple[str, str], float]:
    """Op seconds per step of `step()` (which runs the compiled program `compiled_text` once), by
    (model part, 'forward' | 'backward'). On a CPU, ops of different threads overlap: shares, not wall time."""
    names = _op_names(compiled_text)
    jax.block_until_ready(step())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(step())
        files = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(files[0]) as f:
            events = json.load(f)["traceEvents"]
    seconds: dict[tuple[str, str], float] = collections.Counter()
    for e in events:
        op_name = names.get(e.get("name", "")) if e.get("ph") == "X" else None
        if op_name is not None:
            direction = "backward" if "transpose(" in op_name else "forward"
            seconds[(_part(op_name), direction)] += e.get("dur", 0) * 1e-6 / steps
    return dict(seconds)

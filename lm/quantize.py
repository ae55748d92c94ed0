"""Weight formats for sampling (`--quantize`): as saved, bfloat16, or int8 with a float32 scale per output channel.

int8 is weight-only: every matrix (projection kernels, embedding tables, output head) is stored as
round(w / scale) with scale = max|w| / 127 over the input axis (over the width for each embedding row), and
turned back into the compute dtype inside the jitted step, so at rest the weights take a quarter of their
float32 bytes. Norm scales and biases stay in float32.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

FORMATS = ("none", "bfloat16", "int8")  # none: as saved (float32 unless param_dtype says otherwise)


@flax.struct.dataclass
class Int8Weight:
    """values int8 [...], scale float32 broadcastable to values: the weight is values * scale."""

    values: jax.Array
    scale: jax.Array


def _input_axes(path: tuple[Any, ...], x: jax.Array) -> tuple[int, ...]:
    """The axes a weight's scale is shared along (its input axes), or () for vectors kept in float32."""
    keys = [str(getattr(k, "key", k)) for k in path]
    first = 1 if "blocks" in keys else 0  # scanned layers: a leading layer axis
    if keys[-1] in ("token_embedding", "position_embedding"):
        return (x.ndim - 1,)  # a scale per row: per token for look-ups, per output for a tied head
    if keys[-1] not in ("kernel", "lm_head"):
        return ()  # norm scales, biases
    if keys[-2:] == ["out", "kernel"]:
        return (first, first + 1)  # [N, H, D]: heads and head dim in, model dim out
    return (first,)  # [D, ...] or [F, D]: the first axis in


def _to_int8(x: jax.Array, axes: tuple[int, ...]) -> Int8Weight:
    scale = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    return Int8Weight(jnp.round(x / scale).astype(jnp.int8), scale)


def convert(params: Any, fmt: str) -> Any:
    """The parameters in weight format `fmt` (one of FORMATS)."""
    if fmt == "none":
        return params
    if fmt == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    if fmt != "int8":
        raise ValueError(f"unknown weight format {fmt!r}; use one of {FORMATS}")

    def one(path: tuple[Any, ...], x: jax.Array) -> Any:
        axes = _input_axes(path, x)
        return _to_int8(x, axes) if axes else x

    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(one, p))(params)


def is_int8(params: Any) -> bool:
    return any(isinstance(x, Int8Weight) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Int8Weight)))


def dequantize(params: Any, dtype: str) -> Any:
    """int8 weights back to `dtype` (values * scale); other leaves unchanged. Call it inside the jitted step."""
    def one(x: Any) -> Any:
        return x.values.astype(dtype) * x.scale.astype(dtype) if isinstance(x, Int8Weight) else x

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, Int8Weight))


def nbytes(params: Any) -> int:
    """Bytes the parameters take at rest."""
    return sum(x.nbytes for x in jax.tree.leaves(params))

"""Weight formats for sampling (`--quantize`): as saved, bfloat16, or int8 with a float32 scale per output channel.

int8 stores every matrix (projection kernels, embedding tables, output head) as round(w / scale) with
scale = max|w| / 127 over the input axis (over the width for each embedding row); norm scales and biases stay
in float32. The model takes int8 weights as they are, with no float copy of the parameters made before the
step: look-ups scale the rows they gather and matmuls scale their output per channel.
- `int8` is weight-only: each matmul converts the int8 values to the compute dtype (XLA's CPU backend expands
  them to a float buffer first, so on a CPU it saves memory at rest, not time).
- `int8_dynamic` also rounds each token's activations to int8 (a scale per token, as PyTorch's dynamic
  quantization) and multiplies int8 by int8 into int32: the matmuls read a quarter of the bytes, and on a CPU
  decode faster, at some cost in agreement with the float model.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

FORMATS = ("none", "bfloat16", "int8", "int8_dynamic")  # none: as saved (float32 unless param_dtype says otherwise)


@flax.struct.dataclass
class Int8Weight:
    """values int8 [...], scale float32 broadcastable to values: the weight is values * scale. `dynamic`: its
    matmuls round their input to int8 too (format int8_dynamic). It stands in the parameter tree where the float
    parameter was; flax's shape check of an existing parameter sees its first leaf, `values`, of that shape."""

    values: jax.Array
    scale: jax.Array
    dynamic: bool = flax.struct.field(pytree_node=False, default=False)


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


def _to_int8(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(round(x / scale) as int8, scale) with scale = max|x| / 127 over `axes` (kept as size-1 axes)."""
    scale = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.round(x / scale).astype(jnp.int8), scale


def convert(params: Any, fmt: str) -> Any:
    """The parameters in weight format `fmt` (one of FORMATS)."""
    if fmt == "none":
        return params
    if fmt == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    if fmt not in ("int8", "int8_dynamic"):
        raise ValueError(f"unknown weight format {fmt!r}; use one of {FORMATS}")

    def one(path: tuple[Any, ...], x: jax.Array) -> Any:
        axes = _input_axes(path, x)
        return Int8Weight(*_to_int8(x, axes), dynamic=fmt == "int8_dynamic") if axes else x

    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(one, p))(params)


def is_int8(params: Any) -> bool:
    return any(isinstance(x, Int8Weight) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Int8Weight)))


def einsum(equation: str, x: jax.Array, kernel: Any, dtype: str) -> jax.Array:
    """`einsum(equation, x, kernel)` in `dtype` for a float kernel or an Int8Weight, e.g. 'btd,dnh->btnh'.

    The equation contracts x's trailing axes with the kernel's leading (or trailing, as 'btd,vd->btv') axes in the
    same order and lists x's kept axes, then the kernel's. It runs as one matmul of x [..., K] and the kernel
    flattened to [K, N] (or [N, K]), with no transpose in the program, so XLA never copies a weight to fit an
    activation's layout. An Int8Weight's scale multiplies the output."""
    inputs, out = equation.split("->")
    x_axes, kernel_axes = inputs.split(",")
    n = sum(a not in out for a in x_axes)  # contracted axes
    contracted, x_kept = x_axes[len(x_axes) - n:], x_axes[:len(x_axes) - n]
    leading = kernel_axes[:n] == contracted  # else trailing
    kernel_kept = kernel_axes[n:] if leading else kernel_axes[:len(kernel_axes) - n]
    assert out == x_kept + kernel_kept and contracted in (kernel_axes[:n], kernel_axes[len(kernel_axes) - n:]), (
        f"{equation}: contract x's trailing axes with the kernel's leading or trailing ones, keep the rest in order")
    values = kernel.values if isinstance(kernel, Int8Weight) else kernel
    lead, kept = x.shape[:len(x_kept)], values.shape[n:] if leading else values.shape[:len(kernel_kept)]
    x = x.reshape(*lead, -1)  # [..., K]
    values = values.reshape((x.shape[-1], -1) if leading else (-1, x.shape[-1]))  # [K, N] or [N, K]

    def matmul(x: jax.Array, w: jax.Array, accumulate: Any = None) -> jax.Array:  # -> [..., N]
        dims = (((x.ndim - 1,), (0 if leading else 1,)), ((), ()))
        return jax.lax.dot_general(x, w, dims, preferred_element_type=accumulate)

    if not isinstance(kernel, Int8Weight):
        return matmul(x.astype(dtype), values.astype(dtype)).reshape(*lead, *kept)
    scale = kernel.scale.reshape(-1).astype(dtype)  # [N]: its input axes have size 1
    if not kernel.dynamic:
        return (matmul(x.astype(dtype), values.astype(dtype)) * scale).reshape(*lead, *kept)
    x = x.reshape(-1, x.shape[-1])  # [M, K]
    x_int, x_scale = _to_int8(x, (1,))  # a scale per token [M, 1]
    rows = x.shape[0]
    if rows == 1:  # XLA's CPU backend multiplies one int8 row by an int8 matrix slowly, two rows fast
        x_int = jnp.concatenate([x_int, jnp.zeros_like(x_int)], axis=0)
    y = matmul(x_int, values, jnp.int32)[:rows]
    return (y.astype(dtype) * x_scale.astype(dtype) * scale).reshape(*lead, *kept)


def take(table: Any, ids: jax.Array) -> jax.Array:
    """Rows `ids` of a float table, or of an Int8Weight scaled per row (in float32): [V, D] -> [*ids.shape, D]."""
    if not isinstance(table, Int8Weight):
        return jnp.take(table, ids, axis=0)
    return jnp.take(table.values, ids, axis=0).astype(jnp.float32) * jnp.take(table.scale, ids, axis=0)


def nbytes(params: Any) -> int:
    """Bytes the parameters take at rest."""
    return sum(x.nbytes for x in jax.tree.leaves(params))

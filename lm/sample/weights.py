"""Weight formats for sampling (`--quantize`): as saved, bfloat16, or int8 with a float32 scale per output channel.
Training never sees them: the sampler hands the model `ops_for(params, ops)`, whose products and look-ups take
int8 weights as they are.

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

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from lm.model import tree
from lm.model.ops import Ops
from lm.sample.formats import WEIGHT_FORMATS


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
    first = 1 if tree.in_scanned_layers(path) else 0  # scanned layers: a leading layer axis
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
    """The parameters in weight format `fmt` (one of WEIGHT_FORMATS)."""
    if fmt == "none":
        return params
    if fmt == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    if fmt not in ("int8", "int8_dynamic"):
        raise ValueError(f"unknown weight format {fmt!r}; use one of {WEIGHT_FORMATS}")

    def one(path: tuple[Any, ...], x: jax.Array) -> Any:
        axes = _input_axes(path, x)
        return Int8Weight(*_to_int8(x, axes), dynamic=fmt == "int8_dynamic") if axes else x

    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(one, p))(params)


def is_int8(params: Any) -> bool:
    return any(isinstance(x, Int8Weight) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Int8Weight)))


def einsum(equation: str, x: jax.Array, kernel: Int8Weight, dtype: str) -> jax.Array:
    """`einsum(equation, x, kernel)` in `dtype` for an Int8Weight kernel, e.g. 'btd,dnh->btnh' (the model's
    `Ops.einsum` for int8 formats, which convert every kernel).

    The scale multiplies the output: the output's axes must be x's kept axes, then the kernel's. Several
    contracted axes (x's last, the kernel's first, as 'btnh,nhd->btd') are merged into one first: left to
    itself, XLA copied such a kernel into another layout at every decode step, to fit the activation's."""
    equation, x, kernel = _merge_contracted(equation, x, kernel)
    inputs, out = equation.split("->")
    x_axes, kernel_axes = inputs.split(",")
    kept_x, kept_kernel = ("".join(a for a in out if a in axes) for axes in (x_axes, kernel_axes))
    assert out == kept_x + kept_kernel, f"{equation}: the output must list x's axes, then the kernel's"
    scale = jnp.einsum(f"{kernel_axes}->{kept_kernel}", kernel.scale.astype(dtype))  # drops its size-1 input axes
    if not kernel.dynamic:
        return jnp.einsum(equation, x.astype(dtype), kernel.values.astype(dtype)) * scale
    contracted = tuple(i for i, a in enumerate(x_axes) if a not in out)
    x_int, x_scale = _to_int8(x, contracted)  # a scale per token
    rows = x.size // math.prod(x.shape[i] for i in contracted)
    if rows == 1:  # XLA's CPU backend multiplies one int8 row by an int8 matrix slowly, two rows fast
        assert out[0] == x_axes[0], f"{equation}: x's first axis must lead the output"
        x_int = jnp.concatenate([x_int, jnp.zeros_like(x_int)], axis=0)
    y = jnp.einsum(equation, x_int, kernel.values, preferred_element_type=jnp.int32)[: x.shape[0]]
    x_scale = jnp.einsum(f"{x_axes}->{kept_x}", x_scale)  # drops its size-1 contracted axes
    x_scale = x_scale.reshape(x_scale.shape + (1,) * len(kept_kernel))
    return y.astype(dtype) * x_scale.astype(dtype) * scale


def _merge_contracted(equation: str, x: jax.Array, kernel: Any) -> tuple[str, jax.Array, Any]:
    """The same product with x's trailing contracted axes and the kernel's leading ones each merged into one."""
    inputs, out = equation.split("->")
    x_axes, kernel_axes = inputs.split(",")
    merged = "".join(a for a in x_axes if a not in out)
    n = len(merged)
    if n < 2 or not (x_axes.endswith(merged) and kernel_axes.startswith(merged)):
        return equation, x, kernel
    x = x.reshape(*x.shape[:-n], -1)

    def flat(a: jax.Array) -> jax.Array:  # an Int8Weight's scale has size 1 on the merged axes
        return a.reshape(-1, *a.shape[n:])

    kernel = jax.tree.map(flat, kernel)
    axis = merged[0]
    return f"{x_axes[:-n]}{axis},{axis}{kernel_axes[n:]}->{out}", x, kernel


def take(table: Int8Weight, ids: jax.Array) -> jax.Array:
    """Rows `ids` of an Int8Weight table scaled per row, in float32: [V, D] -> [*ids.shape, D]."""
    return jnp.take(table.values, ids, axis=0).astype(jnp.float32) * jnp.take(table.scale, ids, axis=0)


def ops_for(params: Any, base: Ops) -> Ops:
    """The model's Ops for `params`: `base` (the backend's) for float weights; for int8 ones (`convert`), int8
    products and look-ups beside the backend's attention."""
    return Ops(einsum=einsum, take=take, attention=base.attention) if is_int8(params) else base


def nbytes(params: Any) -> int:
    """Bytes the parameters take at rest."""
    return sum(x.nbytes for x in jax.tree.leaves(params))

"""Projections on a CPU: every product of the forward and backward pass in the form XLA's CPU matmul library takes.

XLA's CPU backend sends a dot to its YNNPACK library kernels only when its left operand holds the contracted
axis last in row-major layout, and, in bfloat16, when the product accumulates into float32; it converts every
other bfloat16 dot to float32 first (the native bfloat16 rate, AMX or AVX512-BF16, is several times float32's)
and leaves other float32 dots to slower paths and layout copies. Autodiff of a plain einsum misses this: its
bfloat16 products round to bfloat16, and the kernel's gradient contracts over the tokens, the leading axis of
both operands. `einsum` runs such a projection as a [M, K] x [K, N] matmul whose three products (output,
input gradient, kernel gradient) each take that form.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _split(equation: str) -> tuple[str, str, str, str] | None:
    """(kept x axes, contracted axes, kept kernel axes, kernel order) of 'kept_x + contracted, kernel -> kept_x +
    kept_kernel' with the kernel's axes in order contracted + kept ('kn') or kept + contracted ('nk'); else None."""
    inputs, out = equation.split("->")
    x_axes, kernel_axes = inputs.split(",")
    contracted = "".join(a for a in x_axes if a not in out)
    kept_x = x_axes[:len(x_axes) - len(contracted)]
    kept_kernel = "".join(a for a in kernel_axes if a not in contracted)
    if not contracted or x_axes != kept_x + contracted or out != kept_x + kept_kernel:
        return None
    if kernel_axes == contracted + kept_kernel:
        return kept_x, contracted, kept_kernel, "kn"
    if kernel_axes == kept_kernel + contracted:
        return kept_x, contracted, kept_kernel, "nk"
    return None


def applies(equation: str) -> bool:
    """Whether `einsum` runs this product as one matmul: a product of x's trailing axes with the kernel's
    leading or trailing ones ('btd,dnh->btnh', 'btd,vd->btv'); others go to `jnp.einsum`."""
    return _split(equation) is not None


def einsum(equation: str, x: jax.Array, kernel: jax.Array, dtype: str) -> jax.Array:
    """`einsum(equation, x, kernel)` in `dtype` with float32 accumulation (the model's `Ops.einsum` on a CPU)."""
    if not applies(equation):
        return jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype))
    kept_x, contracted, kept_kernel, order = _split(equation)
    rows = math.prod(x.shape[:len(kept_x)])
    width = math.prod(x.shape[len(kept_x):])
    kernel_2d = kernel.reshape(width, -1) if order == "kn" else kernel.reshape(-1, width)
    y = matmul(x.reshape(rows, width).astype(dtype), kernel_2d, order == "nk")
    kept_shape = kernel.shape[len(contracted):] if order == "kn" else kernel.shape[:len(kept_kernel)]
    return y.reshape(*x.shape[:len(kept_x)], *kept_shape)


def _dot(a: jax.Array, b: jax.Array, contracted: tuple[int, int]) -> jax.Array:
    """a x b over axis contracted[0] of a and contracted[1] of b, accumulated and returned in float32."""
    dims = (((contracted[0],), (contracted[1],)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, transposed: bool) -> jax.Array:
    """x [M, K] @ w [K, N] (or w [N, K] if `transposed`) in any float dtype -> [M, N] in x's dtype, with
    float32 accumulation. w is rounded to x's dtype for the product; its gradient comes in w's own dtype, summed
    in float32 and not rounded to x's dtype on the way."""
    return _dot(x, w.astype(x.dtype), (1, 1 if transposed else 0)).astype(x.dtype)


def _forward(x: jax.Array, w: jax.Array, transposed: bool) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
    w_x = w.astype(x.dtype)
    return matmul(x, w_x, transposed), (x, w_x, jnp.zeros((), w.dtype))


def _backward(transposed: bool, residuals: tuple[jax.Array, jax.Array, Any], g: jax.Array) -> tuple[jax.Array, ...]:
    x, w_x, w_dtype = residuals
    dx = _dot(g, w_x, (1, 0 if transposed else 1)).astype(x.dtype)  # [M, N] x w -> [M, K]
    if transposed:
        dw = _dot(row_major(g.T), x, (1, 0))  # [N, M] x [M, K] -> [N, K]
    else:
        dw = _dot(row_major(x.T), g, (1, 0))  # [K, M] x [M, N] -> [K, N]
    return dx, dw.astype(w_dtype.dtype)


def row_major(x: jax.Array) -> jax.Array:
    """x, typically a transpose, as a row-major matmul operand. A transpose reaches XLA as a view of its input
    in another layout, and a dot taking it would miss the library kernels (in bfloat16: be converted to float32);
    reversing an axis twice is an identity XLA removes, but only after it has chosen which dots take those
    kernels, and by then the transpose is a copy."""
    return jnp.flip(jnp.flip(x, 0), 0)


matmul.defvjp(_forward, _backward)

"""Building blocks shared by attention and the decoder: an einsum projection and layer norm.

Kernels are created in their final shape with one logical name per dimension, so every layout shards.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import sharding as shd


class Projection(nn.Module):
    """`einsum(equation, x, kernel) + bias`, e.g. 'btd,dnh->btnh' with kernel [D, N, H]."""

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str]
    bias_axes: Sequence[str] | None = None  # trailing kernel axes that carry a bias; None: no bias
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), tuple(self.kernel_axes))
        kernel = self.param("kernel", init, tuple(self.kernel_shape), self.param_dtype)
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias_axes is not None:
            shape = tuple(self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes):])
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes))
            y = y + self.param("bias", zeros, shape, self.param_dtype).astype(self.dtype)
        return y


def layer_norm(use_bias: bool, dtype: str, param_dtype: str, name: str) -> nn.LayerNorm:
    """LayerNorm over the model dimension, statistics in float32, parameters named ('embed',)."""
    return nn.LayerNorm(
        epsilon=1e-5,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (shd.EMBED,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (shd.EMBED,)),
        name=name,
    )

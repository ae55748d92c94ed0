"""Building blocks shared by attention and the decoder: einsum projections, norms, rotary embeddings.

Kernels are created in their final shape with one logical name per dimension, so every layout shards.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import axes
from lm.model.ops import Ops


class Projection(nn.Module):
    """`einsum(equation, x, kernel) + bias`, e.g. 'btd,dnh->btnh' with kernel [D, N, H]."""

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str]
    bias_axes: Sequence[str] | None = None  # trailing kernel axes that carry a bias; None: no bias
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), tuple(self.kernel_axes))
        kernel = self.param("kernel", init, tuple(self.kernel_shape), self.param_dtype)
        y = self.ops.einsum(self.equation, x, kernel, self.dtype)
        if self.bias_axes is not None:
            shape = tuple(self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes):])
            zeros = nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.bias_axes))
            y = y + self.param("bias", zeros, shape, self.param_dtype).astype(self.dtype)
        return y


def norm(kind: str, eps: float, use_bias: bool, dtype: str, param_dtype: str, name: str,
         axis_name: str = axes.EMBED) -> nn.Module:
    """LayerNorm or RMSNorm over the last axis (statistics in float32), parameters named (axis_name,)."""
    scale = nn.with_logical_partitioning(nn.initializers.ones, (axis_name,))
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale, name=name)
    return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, scale_init=scale,
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)), name=name)


def rope_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 8.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_len: int = 8192) -> np.ndarray:
    """[H/2] angular frequency of each rotated pair: theta^(-2i/H); with Llama 3's scaling, wavelengths longer
    than original_max_len / low_freq_factor are stretched by `factor`, those shorter than original_max_len /
    high_freq_factor kept, and those between blended smoothly."""
    freqs = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling == "llama3":
        wavelength = 2 * np.pi / freqs
        blend = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - blend) * freqs / factor + blend * freqs
        freqs = np.where(wavelength > original_max_len / low_freq_factor, freqs / factor,
                         np.where(wavelength < original_max_len / high_freq_factor, freqs, blended))
    return freqs.astype(np.float32)


def rope(x: jax.Array, positions: jax.Array, freqs: np.ndarray) -> jax.Array:
    """Rotary position embedding of x [B, T, N, H] at positions [B, T] with frequencies [H/2] (halves rotated,
    as Llama/NeoX)."""
    half = x.shape[-1] // 2
    angles = positions[:, :, None, None].astype(jnp.float32) * jnp.asarray(freqs)  # [B, T, 1, H/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)

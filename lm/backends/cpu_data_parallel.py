"""Data parallelism over CPU devices with one all-reduce of one flat buffer.

When no parameter is split over the mesh, each device can sum the loss and gradients of its own rows and
combine them with one all-reduce of everything raveled into one buffer, instead of the all-reduce per gradient
that XLA inserts: XLA's CPU collectives pay a rendezvous per buffer, which small models feel at every step.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from lm.parallel.mesh import Layout


def batch_axes(layout: Layout, params: Any) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that split the batch, if no parameter in `params` (arrays or
    ShapeDtypeStructs) is split over any mesh axis; else ()."""
    spec = layout.batch_sharding().spec[0]
    axes = tuple(a for a in (spec if isinstance(spec, tuple) else (spec,) if spec else ())
                 if layout.mesh.shape[a] > 1)

    def split(spec: P) -> bool:
        named = [n for a in spec if a is not None for n in (a if isinstance(a, tuple) else (a,))]
        return any(layout.mesh.shape[n] > 1 for n in named)

    return () if any(split(x.sharding.spec) for x in jax.tree.leaves(params)) else axes


def summed_over(axes: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """Wraps `fn(params, batch) -> tree of sums` so that each device applies it to its own rows of the batch
    (split over `axes`) and the sums are added over the devices in one all-reduce."""

    def wrap(fn: Callable) -> Callable:
        def local(params: Any, batch: dict[str, jax.Array]) -> Any:
            with nn.logical_axis_rules(()):  # inside: per-device arrays, no mesh axes to constrain them to
                flat, unravel = ravel_pytree(fn(params, batch))
            return unravel(jax.lax.psum(flat, axes))

        return jax.shard_map(local, in_specs=(P(), P(axes)), out_specs=P(), check_vma=False)

    return wrap

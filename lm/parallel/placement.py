"""Parameters placed on a mesh without a host-side copy: `jax.eval_shape` gives the shapes and logical names,
the layout's rules give shardings, and a jitted init (or an orbax restore onto these targets) creates every
array where it lives."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.axes import CONFIG_NAMES
from lm.model.transformer import TransformerLM
from lm.parallel.mesh import Layout


def boxed_params(model: TransformerLM, seed: int) -> Any:
    """Freshly initialized parameters with their logical names (flax Partitioned boxes)."""
    tokens = jnp.zeros((1, model.config.max_len), jnp.int32)
    return model.init(jax.random.key(seed), tokens, tokens, jnp.ones_like(tokens))["params"]


@functools.lru_cache(maxsize=8)
def boxed_shapes(model: TransformerLM) -> Any:
    """The model's parameters as abstract values with their logical names, traced once per model however often a
    run asks (its state, its evaluations, its restores): the shapes depend on neither the seed nor the mesh."""
    return jax.eval_shape(lambda: boxed_params(model, 0))


def abstract(boxed: Any, layout: Layout) -> Any:
    """A tree of logically boxed abstract values as ShapeDtypeStructs with their shardings on the layout (a
    target to create or restore into); stops with one line if the mesh does not divide a dimension."""
    layout.check_divisible(boxed, CONFIG_NAMES)
    shardings = layout.shardings(boxed)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings)


def abstract_params(model: TransformerLM, layout: Layout) -> Any:
    """The model's parameters as ShapeDtypeStructs with their shardings."""
    return abstract(boxed_shapes(model), layout)


def init_params(model: TransformerLM, layout: Layout, seed: int) -> Any:
    """Freshly initialized parameters, each array created where its sharding puts it."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract_params(model, layout))
    return jax.jit(lambda: nn.unbox(boxed_params(model, seed)), out_shardings=shardings)()

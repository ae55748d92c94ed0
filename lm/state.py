"""Train state and its sharded initialization: abstract shapes first, then a jitted init onto the mesh.

No full host-side copy of the parameters is ever made: `jax.eval_shape` gives the shapes and logical names,
the rules give shardings, and `jax.jit(init, out_shardings=...)` creates every array where it lives.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lm import sharding as shd
from lm.model import TransformerLM


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _dummy_batch(model: TransformerLM) -> tuple[jax.Array, jax.Array, jax.Array]:
    tokens = jnp.zeros((1, model.config.max_len), jnp.int32)
    return tokens, tokens, jnp.ones_like(tokens)


def boxed_params(model: TransformerLM, seed: int) -> Any:
    """Parameters with their logical names (flax Partitioned boxes)."""
    return model.init(jax.random.key(seed), *_dummy_batch(model))["params"]


def param_shardings(model: TransformerLM, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings of the model's parameters on `mesh`."""
    return shd.logical_shardings(jax.eval_shape(lambda: boxed_params(model, 0)), mesh)


def abstract_params(model: TransformerLM, mesh: jax.sharding.Mesh) -> Any:
    """ShapeDtypeStructs with shardings, e.g. to restore parameters onto `mesh`."""
    shapes = nn.unbox(jax.eval_shape(lambda: boxed_params(model, 0)))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, param_shardings(model, mesh)
    )


def _init_fn(model: TransformerLM, tx: optax.GradientTransformation, seed: int) -> Callable[[], TrainState]:
    def init() -> TrainState:
        params = boxed_params(model, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract(model: TransformerLM, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
    """The train state as ShapeDtypeStructs with their shardings on `mesh` (a target to restore into)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
        boxed = jax.eval_shape(_init_fn(model, tx, 0))
        shardings = shd.logical_shardings(boxed, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), shardings)


def create(model: TransformerLM, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, seed: int) -> TrainState:
    """A fresh TrainState, each array created where its sharding on `mesh` puts it."""
    shardings = jax.tree.map(lambda s: s.sharding, abstract(model, tx, mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
        return jax.jit(lambda: nn.unbox(_init_fn(model, tx, seed)()), out_shardings=shardings)()

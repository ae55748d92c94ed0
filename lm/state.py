"""Train state and its sharded initialization: abstract shapes first, then a jitted init onto the mesh.

No full host-side copy of the parameters is ever made: `jax.eval_shape` gives the shapes and logical names,
the rules give shardings, and `jax.jit(init, out_shardings=...)` creates every array where it lives.
"""

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


def create(model: TransformerLM, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, seed: int) -> tuple[TrainState, Any]:
    """A fresh TrainState created sharded on `mesh`, and the state's shardings."""

    def init() -> TrainState:
        params = boxed_params(model, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
        shardings = shd.logical_shardings(jax.eval_shape(init), mesh)
        state = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
    return state, shardings

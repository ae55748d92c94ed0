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

from lm.config import ModelConfig
from lm.model import TransformerLM
from lm.sharding import Layout


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def boxed_params(model: TransformerLM, seed: int) -> Any:
    """Parameters with their logical names (flax Partitioned boxes)."""
    tokens = jnp.zeros((1, model.config.max_len), jnp.int32)
    return model.init(jax.random.key(seed), tokens, tokens, jnp.ones_like(tokens))["params"]


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(tree), shardings)


def abstract_params(model: TransformerLM, layout: Layout) -> Any:
    """The parameters as ShapeDtypeStructs with their shardings (a target to restore into); checks divisibility."""
    boxed = jax.eval_shape(lambda: boxed_params(model, 0))
    layout.check_divisible(boxed, ModelConfig.AXIS_NAMES)
    return _abstract(boxed, layout.shardings(boxed))


def _init_fn(model: TransformerLM, tx: optax.GradientTransformation, seed: int) -> Callable[[], TrainState]:
    def init() -> TrainState:
        params = boxed_params(model, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract(model: TransformerLM, tx: optax.GradientTransformation, layout: Layout) -> TrainState:
    """The train state as ShapeDtypeStructs with their shardings on the layout; checks divisibility."""
    with layout.scope():
        boxed = jax.eval_shape(_init_fn(model, tx, 0))
    layout.check_divisible(boxed.params, ModelConfig.AXIS_NAMES)
    return _abstract(boxed, layout.shardings(boxed))


def create(model: TransformerLM, tx: optax.GradientTransformation, layout: Layout, seed: int) -> TrainState:
    """A fresh TrainState, each array created where its sharding on the layout puts it."""
    shardings = jax.tree.map(lambda s: s.sharding, abstract(model, tx, layout))
    with layout.scope():
        return jax.jit(lambda: nn.unbox(_init_fn(model, tx, seed)()), out_shardings=shardings)()


def from_params(model: TransformerLM, tx: optax.GradientTransformation, layout: Layout, params: Any) -> TrainState:
    """A TrainState at step 0 around given parameters (e.g. another run's) with a fresh optimizer state."""
    shardings = jax.tree.map(lambda s: s.sharding, abstract(model, tx, layout))
    init = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))  # noqa: E731
    with layout.scope():
        return jax.jit(init, out_shardings=shardings)(params)

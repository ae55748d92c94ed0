"""The train state (step, parameters, optimizer state) and its sharded creation: abstract shapes first, then a
jitted init that creates every array where the layout puts it (lm/parallel/placement.py)."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lm.model.transformer import TransformerLM
from lm.parallel import placement
from lm.parallel.mesh import Layout


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _init_fn(model: TransformerLM, tx: optax.GradientTransformation, seed: int) -> Callable[[], TrainState]:
    def init() -> TrainState:
        params = placement.boxed_params(model, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def _unbox_masked(tree: Any) -> Any:
    """The state's boxes around optax's MaskedNode (where a masked or partitioned optimizer leaves a parameter
    out; it holds nothing) taken off, so that only arrays carry logical axis names."""
    return jax.tree.map(lambda x: x.value if isinstance(getattr(x, "value", None), optax.MaskedNode) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


def abstract(model: TransformerLM, tx: optax.GradientTransformation, layout: Layout) -> TrainState:
    """The train state as ShapeDtypeStructs with their shardings on the layout; checks divisibility."""
    params = placement.boxed_shapes(model)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    boxed = _unbox_masked(TrainState(step=step, params=params, opt_state=jax.eval_shape(tx.init, params)))
    return placement.abstract(boxed, layout)


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

"""The pure train step `(state, batch) -> (state, metrics)`: one optimizer update on the mean next-token loss
of a global batch, dropped if the loss or the gradients are not finite (lm/optim.py)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lm import optim
from lm.model import objective
from lm.model.transformer import TransformerLM
from lm.train.state import TrainState

# Wraps `fn(params, batch) -> sums` to combine the devices' sums another way (lm/backends/select.py).
GradientSums = Callable[[Callable], Callable]


def _sums(model: TransformerLM, params: Any, batch: dict[str, jax.Array], microbatches: int,
          z_loss: float) -> tuple[jax.Array, jax.Array, Any]:
    """(sum of next-token losses, count of targets, gradient of the summed objective) over the rows at hand.
    With `microbatches` > 1 the rows are cut into that many slices whose gradients accumulate in a scan (slice m
    takes rows m, m + M, ...: every device keeps its own rows): the same sums, in the memory of one slice."""
    grad_fn = jax.value_and_grad(lambda p, b: objective.summed_loss(model, p, b, z_loss), has_aux=True)
    if microbatches == 1:
        (_, (nll_sum, count)), grads = grad_fn(params, batch)
        return nll_sum, count, grads

    def slices(x: jax.Array) -> jax.Array:  # [B, ...] -> [M, B / M, ...]
        return x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)

    def accumulate(carry: tuple, micro: dict[str, jax.Array]) -> tuple[tuple, None]:
        (_, (nll_sum, count)), grads = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (nll_sum, count, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.scan(accumulate, zeros, jax.tree.map(slices, batch))[0]


def loss_and_grads(model: TransformerLM, params: Any, batch: dict[str, jax.Array], microbatches: int = 1,
                   z_loss: float = 0.0, sums: GradientSums | None = None) -> tuple[jax.Array, Any]:
    """The mean next-token loss of a batch and the gradient of the mean objective (loss plus z-loss); `sums`
    (from lm/backends/select.py) combines the devices' sums its own way."""
    def over_rows(p: Any, b: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, Any]:
        return _sums(model, p, b, microbatches, z_loss)

    nll_sum, count, grads = (sums(over_rows) if sums else over_rows)(params, batch)
    count = jnp.maximum(count, 1.0)
    return nll_sum / count, jax.tree.map(lambda g: g / count, grads)


def make_train_step(model: TransformerLM, tx: optax.GradientTransformation, lr: optax.Schedule,
                    microbatches: int = 1, z_loss: float = 0.0, sums: GradientSums | None = None) -> Callable:
    """The pure train step; `sums` as lm/backends/select.py's `gradient_sums` gives it."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        loss, grads = loss_and_grads(model, state.params, batch, microbatches, z_loss, sums)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = optim.update_if_finite(tx, grads, state.opt_state, state.params, finite)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr(state.step), "finite": finite}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step

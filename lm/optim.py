"""AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay on matrices only, as one
optax transformation that also drops a step whose loss or gradients are not finite.

It is `optax.chain(optax.clip_by_global_norm(clip), optax.adamw(..., mask=decay_mask))` (a test holds it to that)
written as one update, for the memory passes it makes: the parameters' update reads the moments it has just
kept. With the chain and a select over its outputs, XLA recomputes the new moments inside the parameters'
update from the old ones, which the moments' in-place update overwrites, so it copies both moments first: about
twice the passes over the optimizer state (a GPT-2 124M float32 step on a CPU ran ~5% slower).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

STATE_FORMAT = "lm.optim.adamw: count, mu, nu"  # checkpoints record it (another can't be resumed)


class AdamWState(NamedTuple):
    count: jax.Array  # updates applied (a dropped step does not count)
    mu: optax.Params  # first moment, shaped like the parameters
    nu: optax.Params  # second moment


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.min_lr,
    )


# The parameters weight decay reaches, by leaf name: projection kernels, the embedding tables and the head.
# Biases ('bias', [N, H] in attention) and norm scales ('scale') are not decayed, whatever their rank.
DECAYED = ("kernel", "token_embedding", "position_embedding", "lm_head")


def decay_mask(params: optax.Params) -> optax.Params:
    """True for the leaves named in DECAYED (matrices and higher-rank kernels), False for biases, norm scales
    and every other vector; scanned or unrolled layers alike."""
    def decayed(path: tuple[Any, ...], p: jax.Array) -> bool:
        return getattr(path[-1], "key", None) in DECAYED

    return jax.tree_util.tree_map_with_path(decayed, params)


def adamw(lr: optax.Schedule, b1: float, b2: float, weight_decay: float, grad_clip: float,
          eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """AdamW whose `update(grads, state, params, *, grad_norm, finite=True, scale=1.0)` takes the gradient as
    `grads * scale` (e.g. summed gradients and 1 / the count of targets), `grad_norm` its global norm, and
    returns zero updates and the state as it was where `finite` is False. `grad_clip` > 0 scales gradients
    down to that global norm first."""

    def init(params: optax.Params) -> AdamWState:
        return AdamWState(count=jnp.zeros((), jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                          nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads: optax.Updates, state: AdamWState, params: optax.Params, *, grad_norm: jax.Array,
               finite: jax.Array | bool = True, scale: jax.Array | float = 1.0) -> tuple[optax.Updates, AdamWState]:
        if grad_clip > 0:
            scale = scale * jnp.minimum(1.0, grad_clip / grad_norm)

        def kept(old: jax.Array, new: jax.Array) -> jax.Array:
            return jnp.where(finite, new.astype(old.dtype), old)

        mu = jax.tree.map(lambda m, g: kept(m, b1 * m + (1 - b1) * (g * scale)), state.mu, grads)
        nu = jax.tree.map(lambda v, g: kept(v, b2 * v + (1 - b2) * jnp.square(g * scale)), state.nu, grads)
        count = state.count + 1
        mu_correction, nu_correction = 1 - b1 ** count.astype(jnp.float32), 1 - b2 ** count.astype(jnp.float32)
        step_lr = lr(state.count)

        def delta(p: jax.Array, m: jax.Array, v: jax.Array, decayed: bool) -> jax.Array:
            direction = m / mu_correction / (jnp.sqrt(v / nu_correction) + eps)
            if decayed:
                direction = direction + weight_decay * p
            return jnp.where(finite, -step_lr * direction, 0.0).astype(p.dtype)

        updates = jax.tree.map(delta, params, mu, nu, decay_mask(params))
        return updates, AdamWState(count=jnp.where(finite, count, state.count), mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)


def optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformationExtraArgs,
                                                                         optax.Schedule]:
    """The optimizer of a run's `config.optim`, and its learning-rate schedule."""
    lr = schedule(cfg, total_steps)
    return adamw(lr, cfg.b1, cfg.b2, cfg.weight_decay, cfg.grad_clip), lr

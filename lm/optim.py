"""The optimizer, composed from optax parts by `config.optim`: global-norm clipping, then any optax optimizer
(AdamW by default) with weight decay on kernels, embeddings and the head only and a warmup-cosine learning-rate
schedule; and the guard around its update that never applies a step whose loss or gradients are not finite."""

import inspect
from typing import Any

import jax
import ml_collections
import optax

from lm.errors import UserError

# The parameters weight decay reaches, by leaf name: projection kernels, the embedding tables and the head.
# Biases ('bias', [N, H] in attention) and norm scales ('scale') are not decayed, whatever their rank.
DECAYED = ("kernel", "token_embedding", "position_embedding", "lm_head")


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
                                              decay_steps=max(total_steps, cfg.warmup_steps + 1), end_value=cfg.min_lr)


def decay_mask(params: optax.Params) -> optax.Params:
    """True for the leaves named in DECAYED, False for biases, norm scales and every other vector; scanned or
    unrolled layers alike."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) in DECAYED, params)


def _base(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """`optax.<cfg.name>(learning_rate=lr, ...)` with the config's b1, b2 and weight decay where it takes them."""
    factory = getattr(optax, cfg.name, None)
    takes = inspect.signature(factory).parameters if callable(factory) else {}
    if "learning_rate" not in takes:
        raise UserError(f"config.optim.name={cfg.name!r} is not an optax optimizer taking a learning rate; use e.g. "
                        "adamw, lion, adam or sgd")
    kwargs: dict[str, Any] = {k: cfg[k] for k in ("b1", "b2") if k in takes}
    if cfg.weight_decay:
        if "weight_decay" not in takes or "mask" not in takes:
            raise UserError(f"optax.{cfg.name} takes no masked weight decay; set --config.optim.weight_decay=0")
        kwargs.update(weight_decay=cfg.weight_decay, mask=decay_mask)
    return factory(learning_rate=lr, **kwargs)


def optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                         optax.Schedule]:
    """The optimizer of a run's `config.optim`, and its learning-rate schedule."""
    lr = schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return optax.chain(*parts, _base(cfg, lr)), lr


def update_if_finite(tx: optax.GradientTransformation, grads: optax.Updates, opt_state: optax.OptState,
                     params: optax.Params, finite: jax.Array) -> tuple[optax.Params, optax.OptState]:
    """`params` moved by `tx`'s update, and its new state, if `finite`; else both as they were (no moment, count
    or schedule moves): optax.apply_if_finite's rule, with the update and its application in one branch of a
    `lax.cond`, so that XLA fuses them as if there were no guard (optax's form applies the update outside its
    branch, one more pass over the parameters: docs/performance.md)."""
    def apply(operands: tuple[optax.Params, optax.OptState]) -> tuple[optax.Params, optax.OptState]:
        params, opt_state = operands
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.cond(finite, apply, lambda operands: operands, (params, opt_state))


def state_format(cfg: ml_collections.ConfigDict) -> str:
    """What a checkpoint records of the optimizer state's structure; another cannot be resumed."""
    clip = "clip_by_global_norm, " if cfg.grad_clip > 0 else ""
    return f"optax: chain({clip}{cfg.name})"

"""The optimizer, composed from optax parts by `config.optim`: global-norm clipping, any optax optimizer (AdamW
by default) with weight decay on kernels, embeddings and the head only, a warmup-cosine learning-rate schedule,
and a guard that never applies an update whose gradients are not finite (`optax.apply_if_finite`)."""

import inspect
from typing import Any

import jax
import ml_collections
import optax

from lm.errors import UserError

# The parameters weight decay reaches, by leaf name: projection kernels, the embedding tables and the head.
# Biases ('bias', [N, H] in attention) and norm scales ('scale') are not decayed, whatever their rank.
DECAYED = ("kernel", "token_embedding", "position_embedding", "lm_head")
NEVER_APPLIED = 2**30  # consecutive non-finite steps after which optax.apply_if_finite would apply one anyway


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
    return optax.apply_if_finite(optax.chain(*parts, _base(cfg, lr)), NEVER_APPLIED), lr


def applied(opt_state: Any) -> jax.Array:
    """Whether the last update was applied (its gradients were finite)."""
    return opt_state.last_finite


def state_format(cfg: ml_collections.ConfigDict) -> str:
    """What a checkpoint records of the optimizer state's structure; another cannot be resumed."""
    clip = "clip_by_global_norm, " if cfg.grad_clip > 0 else ""
    return f"optax: apply_if_finite(chain({clip}{cfg.name}))"

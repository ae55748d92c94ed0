"""AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay on matrices only."""

from typing import Any

import jax
import ml_collections
import optax


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.min_lr,
    )


def decay_mask(params: optax.Params) -> optax.Params:
    """True for matrices (and higher-rank kernels); biases, norms and other vectors are not decayed. The layer
    axis of scanned layers (parameters under 'blocks', stacked [L, ...]) does not count: a stacked bias is a
    vector per layer."""
    def decayed(path: tuple[Any, ...], p: jax.Array) -> bool:
        stacked = any(getattr(k, "key", None) == "blocks" for k in path)
        return p.ndim - stacked >= 2

    return jax.tree_util.tree_map_with_path(decayed, params)


def optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of a run's `config.optim`, and its learning-rate schedule."""
    lr = schedule(cfg, total_steps)
    adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=1e-8, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw), lr
    return adamw, lr

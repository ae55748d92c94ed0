"""The optimizer, composed from optax parts by `config.optim`: global-norm clipping, then any optax optimizer
(AdamW by default), Muon for the hidden matrices or schedule-free AdamW, with weight decay on kernels, embeddings
and the head only, and a learning-rate schedule (warmup, then cosine, warmup-stable-decay, linear or constant);
the parameters a run evaluates (schedule-free's average, else the trained ones); and the guard around its update
that never applies a step whose loss or gradients are not finite."""

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib

from lm.errors import UserError

# The parameters weight decay reaches, by leaf name: projection kernels, the embedding tables and the head.
# Biases ('bias', [N, H] in attention) and norm scales ('scale') are not decayed, whatever their rank.
DECAYED = ("kernel", "token_embedding", "position_embedding", "lm_head")


SCHEDULES = ("cosine", "wsd", "linear", "constant")
SCHEDULE_FREE = "schedule_free_adamw"  # evaluated at an average of its iterates, with a constant learning rate
COOLDOWNS = ("linear", "1-sqrt")


def horizon(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
    """The steps the schedule spans: `cfg.schedule_steps`, or the run's `total_steps` if 0."""
    return cfg.get("schedule_steps", 0) or total_steps


def cooldown_steps(cfg: ml_collections.ConfigDict, total_steps: int) -> int:
    """Warmup-stable-decay's cooldown: `cfg.cooldown_steps`, or 20% of the run if 0."""
    return cfg.get("cooldown_steps", 0) or max(1, total_steps // 5)


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then by `cfg.schedule`: cosine decay to `min_lr` at
    `total_steps`; linear decay to `min_lr` at `total_steps`; constant `lr`; or warmup-stable-decay (wsd): `lr`
    until the last `cooldown_steps`, which decay to `min_lr` linearly or as 1 - sqrt(fraction of the cooldown).
    A wsd run resumed from a checkpoint of its stable phase with a new length (or cooldown) has had the same
    learning rates so far as a run started with them: that is how such a run is continued."""
    name = cfg.get("schedule", "cosine")  # (configs saved before there was a choice)
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
                                                  decay_steps=max(total_steps, cfg.warmup_steps + 1),
                                                  end_value=cfg.min_lr)
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    if name == "constant":
        return optax.join_schedules([warmup, optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
    if name == "linear":
        decay = optax.linear_schedule(cfg.lr, cfg.min_lr, max(1, total_steps - cfg.warmup_steps))
        return optax.join_schedules([warmup, decay], [cfg.warmup_steps])
    cooldown = cooldown_steps(cfg, total_steps)

    def decay(step: jax.Array) -> jax.Array:
        done = jnp.clip(step / cooldown, 0.0, 1.0)  # fraction of the cooldown behind
        left = 1.0 - done if cfg.cooldown == "linear" else 1.0 - jnp.sqrt(done)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * left

    stable = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([warmup, stable, decay], [cfg.warmup_steps, total_steps - cooldown])


def decay_mask(params: optax.Params) -> optax.Params:
    """True for the leaves named in DECAYED, False for biases, norm scales and every other vector; scanned or
    unrolled layers alike."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] in DECAYED, params)


def _names(path: tuple) -> list[str]:
    """The dictionary keys of a leaf's path (a flax box's `.value` step left out: optimizer states are created
    from logically boxed parameters)."""
    return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]


def muon_dimensions(params: optax.Params, patterns: str = "*kernel") -> optax.Params:
    """Muon's matrix view of each parameter whose path ('blocks/attn/query/kernel') matches one of the
    comma-separated glob `patterns`, None for the rest (they go to AdamW): a projection kernel's input axes are
    its reduction axes (an attention output kernel [N, H, D] reduces N and H; a query, key or value kernel
    [D, N, H] reduces D; any other matrix its first axis), and a scanned stack's layer axis is a batch axis. A
    pattern that matches no parameter, or a bias or norm scale, is one line of error."""
    globs = [g.strip() for g in patterns.split(",") if g.strip()]
    matched: set[str] = set()

    def dims(path: tuple, x: jax.Array) -> contrib.MuonDimensionNumbers | None:
        names = _names(path)
        hits = [g for g in globs if fnmatch.fnmatchcase("/".join(names), g)]
        if not hits:
            return None
        matched.update(hits)
        first = 1 if names[0] == "blocks" else 0  # scanned layers: [L, ...]
        if names[-1] not in DECAYED or x.ndim - first < 2:  # a bias [N, H] is no linear map either
            raise UserError(f"config.optim.muon_params={patterns!r} gives Muon {'/'.join(names)} of shape "
                            f"{list(x.shape)}, which is not a weight matrix (Muon orthogonalizes the updates of "
                            "kernels, embeddings and the head); narrow the patterns so biases and norm scales stay "
                            "with AdamW")
        if names[-1] == "kernel" and names[-2] in ("out", "proj"):  # [..., D]: from heads or MLP width to D
            return contrib.MuonDimensionNumbers(tuple(range(first, x.ndim - 1)), (x.ndim - 1,))
        return contrib.MuonDimensionNumbers((first,), tuple(range(first + 1, x.ndim)))

    views = jax.tree_util.tree_map_with_path(dims, params)
    unmatched = [g for g in globs if g not in matched]
    if unmatched or not globs:
        raise UserError(f"config.optim.muon_params={patterns!r}: {unmatched or 'the empty pattern'} matches no "
                        "parameter; paths look like blocks/attn/query/kernel, token_embedding, lm_head")
    return views


def _muon(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """Muon for the parameters of `cfg.muon_params` (`muon_dimensions`), AdamW for the rest, both with masked
    decay; Muon's learning rate is `lr` scaled by `muon_lr / lr` (the same schedule)."""
    def views(params: optax.Params) -> optax.Params:
        return muon_dimensions(params, cfg.get("muon_params", "*kernel"))

    def labels(params: optax.Params) -> optax.Params:
        return jax.tree.map(lambda d: "adam" if d is None else "muon", views(params),
                            is_leaf=lambda d: d is None or isinstance(d, contrib.MuonDimensionNumbers))

    ratio = (cfg.get("muon_lr", 0.0) or cfg.lr) / cfg.lr
    muon_lr = lr if ratio == 1 else lambda step: ratio * lr(step)
    return optax.partition({
        "muon": contrib.muon(learning_rate=muon_lr, beta=cfg.muon_beta,
                             weight_decay=cfg.weight_decay, muon_weight_dimension_numbers=views),
        "adam": optax.adamw(learning_rate=lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
    }, labels)


def _schedule_free(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """Schedule-free AdamW (optax.contrib.schedule_free around Adam's scaling without momentum, as optax's
    schedule_free_adamw) with weight decay masked as everywhere; b1 is its interpolation, `lr` its warmup then
    constant rate."""
    base = optax.chain(optax.scale_by_rms(decay=cfg.b2, eps=1e-8, eps_in_sqrt=False, bias_correction=True),
                       optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                       optax.scale_by_learning_rate(lr))
    return contrib.schedule_free(base, learning_rate=lr, b1=cfg.b1)


def evaluated_apart(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the run evaluates other parameters than it takes gradients at (schedule-free)."""
    return cfg.name == SCHEDULE_FREE


def eval_params(opt_state: optax.OptState, params: optax.Params) -> optax.Params:
    """The parameters to evaluate, sample from and export: schedule-free's average x, from its state and the
    gradient point `params`; `params` themselves for every other optimizer."""
    is_sf = lambda x: isinstance(x, contrib.ScheduleFreeState)  # noqa: E731
    for part in jax.tree.leaves(opt_state, is_leaf=is_sf):
        if is_sf(part):
            return contrib.schedule_free_eval_params(part, params)
    return params


def evaluation(cfg: ml_collections.ConfigDict) -> Callable[[Any], optax.Params]:
    """state -> the parameters to evaluate (`eval_params`), jitted where they are computed."""
    if not evaluated_apart(cfg):
        return lambda state: state.params
    return jax.jit(lambda state: eval_params(state.opt_state, state.params))


def _base(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """`optax.<cfg.name>(learning_rate=lr, ...)` with the config's b1, b2 and weight decay where it takes them;
    'muon': `_muon`; 'schedule_free_adamw': `_schedule_free`."""
    if cfg.name == "muon":
        return _muon(cfg, lr)
    if cfg.name == SCHEDULE_FREE:
        return _schedule_free(cfg, lr)
    factory = getattr(optax, cfg.name, None)
    takes = inspect.signature(factory).parameters if callable(factory) else {}
    if "learning_rate" not in takes:
        raise UserError(f"config.optim.name={cfg.name!r} is not an optax optimizer taking a learning rate; use e.g. "
                        f"adamw, muon, {SCHEDULE_FREE}, lion, adam or sgd")
    kwargs: dict[str, Any] = {k: cfg[k] for k in ("b1", "b2") if k in takes}
    if cfg.weight_decay:
        if "weight_decay" not in takes or "mask" not in takes:
            raise UserError(f"optax.{cfg.name} takes no masked weight decay; set --config.optim.weight_decay=0")
        kwargs.update(weight_decay=cfg.weight_decay, mask=decay_mask)
    return factory(learning_rate=lr, **kwargs)


def optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                         optax.Schedule]:
    """The optimizer of a run's `config.optim`, and its learning-rate schedule over `cfg.schedule_steps` (0: the
    run's `total_steps`)."""
    lr = schedule(cfg, horizon(cfg, total_steps))
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
    name = f"muon on {cfg.get('muon_params', '*kernel')}" if cfg.name == "muon" else cfg.name  # its partition
    return f"optax: chain({clip}{name})"

"""The optimizer, composed from optax parts by `config.optim`: global-norm clipping, then any optax optimizer
(AdamW by default), Muon for the hidden matrices or schedule-free AdamW, with weight decay on kernels, embeddings
and the head only, and a learning-rate schedule (warmup, then cosine, warmup-stable-decay, linear or constant);
the parameters a run evaluates (schedule-free's average, else the trained ones); and the guard around its update
that never applies a step whose loss or gradients are not finite."""

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from optax import contrib

from lm import schedules
from lm.errors import UserError
from lm.section import key, positive, require

# The parameters weight decay reaches, by leaf name: projection kernels, the embedding tables and the head.
# Biases ('bias', [N, H] in attention) and norm scales ('scale') are not decayed, whatever their rank.
DECAYED = ("kernel", "token_embedding", "position_embedding", "lm_head")


SCHEDULE_FREE = "schedule_free_adamw"  # evaluated at an average of its iterates, with a constant learning rate


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """`config.optim`: the optimizer and its learning-rate schedule (lm/schedules.py), each key with its default
    and meaning; an optimizer that cannot take these settings is one line here."""

    name: str = key("adamw", "muon, schedule_free_adamw, or an optax optimizer taking learning_rate: adamw, lion, "
                             "adam, ...")
    lr: float = key(1e-3, "peak learning rate, after a linear warmup")
    min_lr: float = key(1e-4, "reached at the last step by the decay (cosine, linear, or wsd's cooldown)")
    warmup_steps: int = key(100, "steps of the linear warmup from 0")
    schedule: str = key("cosine", "after the warmup: cosine | wsd (warmup-stable-decay) | linear | constant")
    cooldown_steps: int = key(0, "wsd: the last steps, decaying from lr to min_lr (0: 20% of the schedule's steps)")
    cooldown: str = key("linear", "wsd: the cooldown's shape, linear | 1-sqrt")
    schedule_steps: int = key(0, "steps the schedule spans (0: train.steps); past train.steps, a wsd run stops "
                                 "stable")
    b1: float = key(0.9, "passed to optimizers that take it, as b2 and weight_decay")
    b2: float = key(0.99, "the second moment's decay (AdamW)")
    weight_decay: float = key(0.1, "on kernels, embeddings and the head only")
    grad_clip: float = key(1.0, "global gradient norm clipped to this (0: off)")
    muon_beta: float = key(0.95, "muon: the momentum of the hidden matrices' updates (the rest: AdamW with b1, b2)")
    muon_lr: float = key(0.0, "muon: the matrices' peak learning rate, on lr's schedule (0: lr)")
    muon_params: str = key("*kernel", "muon: globs of the parameter paths it updates (e.g. "
                                      "'blocks/*/kernel,lm_head')")

    def __post_init__(self) -> None:
        positive(self, "optim", "lr")
        require(0 <= self.min_lr <= self.lr, f"config.optim.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.warmup_steps >= 0, f"config.optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.schedule in schedules.SCHEDULES,
                f"config.optim.schedule must be one of {', '.join(schedules.SCHEDULES)}, got {self.schedule!r}")
        require(self.cooldown in schedules.COOLDOWNS,
                f"config.optim.cooldown must be one of {', '.join(schedules.COOLDOWNS)}, got {self.cooldown!r}")
        require(self.cooldown_steps >= 0, f"config.optim.cooldown_steps must be >= 0, got {self.cooldown_steps}")
        require(self.schedule_steps >= 0,
                f"config.optim.schedule_steps must be >= 0 (0: train.steps), got {self.schedule_steps}")
        require(self.name != SCHEDULE_FREE or self.schedule == "constant",
                f"config.optim.name={SCHEDULE_FREE} replaces the decay by averaging; set "
                f"--config.optim.schedule=constant (its warmup stays warmup_steps), got {self.schedule!r}")
        require(self.muon_lr >= 0, f"config.optim.muon_lr must be >= 0 (0: lr), got {self.muon_lr}")
        require(0 < self.b1 < 1 and 0 < self.b2 < 1,
                f"config.optim.b1 and b2 must be in (0, 1), got {self.b1}, {self.b2}")
        require(self.weight_decay >= 0, f"config.optim.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.grad_clip >= 0, f"config.optim.grad_clip must be >= 0 (0 turns it off), got {self.grad_clip}")
        if self.name not in ("muon", SCHEDULE_FREE):
            takes = _arguments(self.name)
            require("learning_rate" in takes, f"config.optim.name={self.name!r} is not an optax optimizer taking a "
                    f"learning rate; use e.g. adamw, muon, {SCHEDULE_FREE}, lion, adam or sgd")
            require(not self.weight_decay or {"weight_decay", "mask"} <= takes,
                    f"optax.{self.name} takes no masked weight decay; set --config.optim.weight_decay=0")

    def describe(self, total_steps: int) -> str:
        """The optimizer and its schedule, in words, for a run's first lines."""
        what = f"{self.name} on {self.muon_params} (AdamW for the rest)" if self.name == "muon" else self.name
        clip = f", gradients clipped to norm {self.grad_clip:g}" if self.grad_clip else ""
        return (f"optimizer: {what}, weight decay {self.weight_decay:g}{clip}; learning rate "
                f"{schedules.describe(self, total_steps)}")


def _arguments(name: str) -> set[str]:
    """The parameters of `optax.<name>` (none if it is not a function of optax)."""
    factory = getattr(optax, name, None)
    return set(inspect.signature(factory).parameters) if callable(factory) else set()


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


def _muon(cfg: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    """Muon for the parameters of `cfg.muon_params` (`muon_dimensions`), AdamW for the rest, both with masked
    decay; Muon's learning rate is `lr` scaled by `muon_lr / lr` (the same schedule)."""
    def views(params: optax.Params) -> optax.Params:
        return muon_dimensions(params, cfg.muon_params)

    def labels(params: optax.Params) -> optax.Params:
        return jax.tree.map(lambda d: "adam" if d is None else "muon", views(params),
                            is_leaf=lambda d: d is None or isinstance(d, contrib.MuonDimensionNumbers))

    ratio = (cfg.muon_lr or cfg.lr) / cfg.lr
    muon_lr = lr if ratio == 1 else lambda step: ratio * lr(step)
    return optax.partition({
        "muon": contrib.muon(learning_rate=muon_lr, beta=cfg.muon_beta,
                             weight_decay=cfg.weight_decay, muon_weight_dimension_numbers=views),
        "adam": optax.adamw(learning_rate=lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
    }, labels)


def _schedule_free(cfg: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    """Schedule-free AdamW (optax.contrib.schedule_free around Adam's scaling without momentum, as optax's
    schedule_free_adamw) with weight decay masked as everywhere; b1 is its interpolation, `lr` its warmup then
    constant rate."""
    base = optax.chain(optax.scale_by_rms(decay=cfg.b2, eps=1e-8, eps_in_sqrt=False, bias_correction=True),
                       optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                       optax.scale_by_learning_rate(lr))
    return contrib.schedule_free(base, learning_rate=lr, b1=cfg.b1)


def eval_params(opt_state: optax.OptState, params: optax.Params) -> optax.Params:
    """The parameters to evaluate, sample from and export: schedule-free's average x, from its state and the
    gradient point `params`; `params` themselves for every other optimizer."""
    is_sf = lambda x: isinstance(x, contrib.ScheduleFreeState)  # noqa: E731
    for part in jax.tree.leaves(opt_state, is_leaf=is_sf):
        if is_sf(part):
            return contrib.schedule_free_eval_params(part, params)
    return params


def _base(cfg: OptimConfig, lr: optax.Schedule) -> optax.GradientTransformation:
    """`optax.<cfg.name>(learning_rate=lr, ...)` with the config's b1, b2 and weight decay where it takes them;
    'muon': `_muon`; 'schedule_free_adamw': `_schedule_free`."""
    if cfg.name == "muon":
        return _muon(cfg, lr)
    if cfg.name == SCHEDULE_FREE:
        return _schedule_free(cfg, lr)
    takes = _arguments(cfg.name)
    kwargs: dict[str, Any] = {k: getattr(cfg, k) for k in ("b1", "b2") if k in takes}
    if cfg.weight_decay:
        kwargs.update(weight_decay=cfg.weight_decay, mask=decay_mask)
    return getattr(optax, cfg.name)(learning_rate=lr, **kwargs)


class Optimizer(NamedTuple):
    """A run's optimizer, built once per start and handed down."""

    tx: optax.GradientTransformation  # the update
    lr: optax.Schedule  # its learning rate by step
    state_format: str  # what a checkpoint records of the state's structure; another cannot be resumed
    apart: bool  # whether the run evaluates other parameters than it takes gradients at (schedule-free)
    evaluated: Callable[[Any], optax.Params]  # state -> the parameters to evaluate (`eval_params`), jitted


def optimizer(cfg: OptimConfig, total_steps: int) -> Optimizer:
    """The optimizer of a run's `config.optim`, with its learning-rate schedule over `cfg.schedule_steps` (0: the
    run's `total_steps`)."""
    lr = schedules.schedule(cfg, schedules.horizon(cfg, total_steps))
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    apart = cfg.name == SCHEDULE_FREE
    evaluated = jax.jit(lambda state: eval_params(state.opt_state, state.params)) if apart else \
        (lambda state: state.params)
    return Optimizer(optax.chain(*parts, _base(cfg, lr)), lr, _state_format(cfg), apart, evaluated)


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


def _state_format(cfg: OptimConfig) -> str:
    clip = "clip_by_global_norm, " if cfg.grad_clip > 0 else ""
    name = f"muon on {cfg.muon_params}" if cfg.name == "muon" else cfg.name  # its partition
    return f"optax: chain({clip}{name})"

"""The learning-rate schedules of `config.optim.schedule`: a linear warmup, then cosine, warmup-stable-decay
(wsd), linear or constant."""

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from lm.optim import OptimConfig

SCHEDULES = ("cosine", "wsd", "linear", "constant")
COOLDOWNS = ("linear", "1-sqrt")


def horizon(cfg: "OptimConfig", total_steps: int) -> int:
    """The steps the schedule spans: `cfg.schedule_steps`, or the run's `total_steps` if 0."""
    return cfg.schedule_steps or total_steps


def cooldown_steps(cfg: "OptimConfig", total_steps: int) -> int:
    """Warmup-stable-decay's cooldown: `cfg.cooldown_steps`, or 20% of the run if 0."""
    return cfg.cooldown_steps or max(1, total_steps // 5)


def schedule(cfg: "OptimConfig", total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then by `cfg.schedule`: cosine decay to `min_lr` at
    `total_steps`; linear decay to `min_lr` at `total_steps`; constant `lr`; or warmup-stable-decay (wsd): `lr`
    until the last `cooldown_steps`, which decay to `min_lr` linearly or as 1 - sqrt(fraction of the cooldown).
    A wsd run resumed from a checkpoint of its stable phase with a new length (or cooldown) has had the same
    learning rates so far as a run started with them: that is how such a run is continued."""
    name = cfg.schedule
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


def describe(cfg: "OptimConfig", total_steps: int) -> str:
    """The schedule of `cfg` over a run of `total_steps`, in words."""
    span = horizon(cfg, total_steps)
    warmup = f"{cfg.lr:g} after {cfg.warmup_steps} warmup steps" if cfg.warmup_steps else f"{cfg.lr:g}"
    if cfg.schedule == "constant":
        return f"{warmup}, constant"
    if cfg.schedule == "wsd":
        return (f"{warmup}, stable, then a {cfg.cooldown} cooldown over the last {cooldown_steps(cfg, span)} of "
                f"{span} steps to {cfg.min_lr:g}")
    return f"{warmup}, {cfg.schedule} decay to {cfg.min_lr:g} at step {span}"

"""Learning-rate schedules (lm/optim.py, docs/reference.md 'Schedules'): the rate of the update after `step`
updates, read from the schedule `optim.optimizer` returns, against numbers worked out by hand from the documented
formulas: a linear warmup from 0 over `warmup_steps`, then cosine or linear decay to `min_lr` at the schedule's
last step, a constant rate, or warmup-stable-decay whose cooldown (the last `cooldown_steps`; 0: 20% of the
schedule's steps) decays linearly or as 1 - sqrt of the fraction done."""

import math

import pytest

from lm import optim

# lr 1e-2 down to min_lr 1e-3 (a drop of 9e-3), after a warmup of 2 steps.
BASE = dict(name="adamw", lr=1e-2, min_lr=1e-3, warmup_steps=2, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0,
            schedule="cosine", cooldown_steps=0, cooldown="linear", schedule_steps=0)

CASES = {
    # 10 steps: warmup 0, 5e-3, 1e-2; then 8 steps of decay
    "cosine": (dict(schedule="cosine"), 10,
               {0: 0.0, 1: 5e-3, 2: 1e-2, 4: 1e-3 + 4.5e-3 * (1 + math.sqrt(0.5)), 6: 5.5e-3,
                8: 1e-3 + 4.5e-3 * (1 - math.sqrt(0.5)), 10: 1e-3}),
    "linear": (dict(schedule="linear"), 10,
               {0: 0.0, 1: 5e-3, 2: 1e-2, 4: 1e-2 - 9e-3 * 2 / 8, 6: 5.5e-3, 9: 1e-2 - 9e-3 * 7 / 8, 10: 1e-3,
                12: 1e-3}),
    "constant": (dict(schedule="constant"), 10, {0: 0.0, 1: 5e-3, 2: 1e-2, 9: 1e-2, 12: 1e-2}),
    "longer warmup": (dict(schedule="constant", warmup_steps=4), 10, {1: 2.5e-3, 3: 7.5e-3, 4: 1e-2}),
    # 20 steps, no cooldown_steps: the last 20% (4 steps) cool down, from step 16 on
    "wsd, linear cooldown of 20% by default": (dict(schedule="wsd"), 20,
                                               {1: 5e-3, 2: 1e-2, 15: 1e-2, 16: 1e-2, 17: 7.75e-3, 18: 5.5e-3,
                                                19: 3.25e-3, 20: 1e-3}),
    "wsd, 1-sqrt cooldown of 20% by default": (dict(schedule="wsd", cooldown="1-sqrt"), 20,
                                               {15: 1e-2, 16: 1e-2, 17: 1e-3 + 9e-3 * (1 - math.sqrt(1 / 4)),
                                                18: 1e-3 + 9e-3 * (1 - math.sqrt(2 / 4)),
                                                19: 1e-3 + 9e-3 * (1 - math.sqrt(3 / 4)), 20: 1e-3}),
    "wsd, 5 cooldown steps": (dict(schedule="wsd", cooldown_steps=5), 20,
                              {14: 1e-2, 15: 1e-2, 16: 1e-2 - 9e-3 / 5, 18: 1e-2 - 9e-3 * 3 / 5, 20: 1e-3}),
    # a schedule of 30 steps in a run of 20: the cooldown is 20% of 30 (6 steps, from step 24): the run ends stable
    "wsd over schedule_steps": (dict(schedule="wsd", schedule_steps=30), 20, {16: 1e-2, 20: 1e-2, 25: 8.5e-3}),
    "linear over schedule_steps": (dict(schedule="linear", schedule_steps=20), 10,
                                   {6: 1e-2 - 9e-3 * 4 / 18, 10: 1e-2 - 9e-3 * 8 / 18}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_learning_rate_at_chosen_steps_is_the_documented_formula_worked_out_by_hand(case):
    settings, steps, want = CASES[case]
    cfg = optim.OptimConfig(**{**BASE, **settings})
    lr = optim.optimizer(cfg, total_steps=steps).lr
    got = {step: float(lr(step)) for step in want}
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)

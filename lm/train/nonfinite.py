"""Non-finite steps: the train step never applies an update whose loss or gradients are not finite
(lm/optim.py); `NonFiniteSteps` decides on the host what the run does then (`config.train.nonfinite`):

- "stop" (the default): the run stops at the first such step with exit status 3, naming the step; no checkpoint
  is written after it, so the newest checkpoint is the last good state.
- "skip": the step's update is dropped (the batch is consumed; the optimizer's moments and step count do not
  move), `skipped` counts such steps in the metrics, and the run stops as above after
  `config.train.max_skips` of them in a row.
"""

EXIT_NONFINITE = 3
POLICIES = ("stop", "skip")


class NonFinite(Exception):
    """The run must stop at a non-finite step; the message says why and what to do."""


class NonFiniteSteps:
    """Counts non-finite steps in the order they ran; `check` raises NonFinite once the run must stop."""

    def __init__(self, policy: str, max_skips: int, state: dict[str, int] | None = None):
        self.policy, self.max_skips = policy, max_skips
        state = state or {}  # a fresh run, or a checkpoint written before counts were kept
        self.skipped = state.get("skipped", 0)  # in the whole run
        self.in_a_row = state.get("in_a_row", 0)
        self.seen = 0  # the last step observed
        self.reason = ""  # why the run must stop, once it must

    def state(self) -> dict[str, int]:
        """What a checkpoint keeps, so that a resumed run counts on where it stopped."""
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def observe(self, step: int, finite: bool) -> None:
        """Records whether `step` was finite (steps seen before, and steps after a stop, are ignored)."""
        if step <= self.seen or self.reason:
            return
        self.seen = step
        if finite:
            self.in_a_row = 0
            return
        if self.policy == "stop":
            self.reason = (f"the loss or gradients are not finite at step {step} (config.train.nonfinite='stop'); "
                           "lower config.optim.lr, or set --config.train.nonfinite=skip to skip such steps")
            return
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row > self.max_skips:
            self.reason = (f"the loss or gradients are not finite at {self.in_a_row} steps in a row (steps "
                           f"{step - self.in_a_row + 1}-{step}), more than config.train.max_skips={self.max_skips}; "
                           "lower config.optim.lr")

    def check(self) -> None:
        """Raises NonFinite if a step observed so far stops the run."""
        if self.reason:
            raise NonFinite(self.reason)

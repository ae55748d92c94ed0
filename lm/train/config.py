"""The sections of the run config that the training loop reads: `config.train` (the run's length, batch and
step), `config.eval` (downstream tasks scored while training) and `config.checkpoint`, each key with its default
and meaning, and their checks."""

import dataclasses

from lm.section import key, positive, require
from lm.train.nonfinite import POLICIES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The run's length, batch, logging and evaluation cadence, and what its step adds to the loss."""

    batch_size: int = key(12, "rows of max_len tokens per step, over all devices and processes")
    steps: int = key(2000, "optimizer steps in the run")
    log_every: int = key(100, "steps between console lines and metrics records")
    eval_every: int = key(500, "steps between evaluations on the validation split (and one at the end)")
    eval_batches: int = key(0, "batches of the validation split per evaluation (0: all of it)")
    microbatches: int = key(1, "> 1: accumulate gradients over that many slices of each batch (of every device's "
                               "rows)")
    z_loss: float = key(0.0, "weight of log(Z)^2 of the softmax normalizer")
    nonfinite: str = key("stop", "a step with a NaN or infinite loss or gradient: stop the run | skip its update")
    max_skips: int = key(10, "with nonfinite='skip': stop after this many such steps in a row")
    nan_steps: tuple = key((), "steps fed a corrupted batch on purpose (a token id past the vocabulary), to try the "
                               "policy")

    def __post_init__(self) -> None:
        positive(self, "train", "batch_size", "steps", "log_every", "eval_every")
        require(self.eval_batches >= 0, f"config.train.eval_batches must be >= 0 (0: all), got {self.eval_batches}")
        b, mb = self.batch_size, self.microbatches
        require(mb >= 1 and b % mb == 0, f"config.train.microbatches={mb} must divide config.train.batch_size={b}")
        require(self.z_loss >= 0, f"config.train.z_loss must be >= 0, got {self.z_loss}")
        require(self.nonfinite in POLICIES,
                f"config.train.nonfinite must be one of {POLICIES}, got {self.nonfinite!r}")
        require(self.max_skips >= 1, f"config.train.max_skips must be >= 1, got {self.max_skips}")
        require(all(isinstance(s, int) and s > 0 for s in self.nan_steps),
                f"config.train.nan_steps must be a tuple of positive steps, e.g. '(5, 6)', got {self.nan_steps!r}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Downstream tasks scored while training, logged with the validation evaluation."""

    tasks: str = key("", "downstream tasks scored in training: JSONL files, folders or globs, as lm.evaluate --tasks "
                         "takes")
    every: int = key(0, "steps between task evaluations (0: with each validation evaluation); always at the last "
                        "step")
    examples: int = key(0, "examples of each task scored (0: all of them)")

    def __post_init__(self) -> None:
        require(self.every >= 0, f"config.eval.every must be >= 0 (0: with each validation evaluation), got "
                                 f"{self.every}")
        require(self.examples >= 0, f"config.eval.examples must be >= 0 (0: all), got {self.examples}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When a run saves its state, and how many saves it keeps."""

    every: int = key(250, "steps between checkpoints (and one after the first step, and one at the end)")
    keep: int = key(3, "the newest checkpoints kept")

    def __post_init__(self) -> None:
        positive(self, "checkpoint", "every", "keep")

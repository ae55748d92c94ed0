"""The work of `python -m lm.sweep` (its usage and flags: options.py)."""

from collections.abc import Sequence

from absl import flags

from lm.errors import UserError
from lm.sweep import experiment, slurm


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise UserError("usage: python -m lm.sweep experiments/NAME.py [--root runs] [--dry_run] "
                        "[--launcher slurm [--collect] [--wait]]")
    f = flags.FLAGS
    given = {k: f[k].value for k in slurm.RESOURCES if f[k].present}
    if f.launcher != "slurm" and (given or f.collect or f.wait):
        raise UserError(f"--{next(iter(given), 'collect' if f.collect else 'wait')} is for --launcher slurm; add "
                        "--launcher slurm")
    experiment.run(argv[1], f.root, f.dry_run, f.launcher, f.collect, f.wait, given)

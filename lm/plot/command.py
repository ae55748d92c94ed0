"""The work of `python -m lm.plot` (its usage and flags: options.py)."""

from collections.abc import Sequence

from absl import flags

from lm.errors import UserError
from lm.plot import figure


def main(argv: Sequence[str]) -> None:
    workdirs = argv[1:]
    if not workdirs:
        raise UserError("no workdir given; usage: python -m lm.plot WORKDIR... [--x steps|tokens|flops]")
    figure.plot(workdirs, flags.FLAGS.out, flags.FLAGS.x)
    print(f"wrote {flags.FLAGS.out}: loss against {figure.AXES[flags.FLAGS.x][1]} of {len(workdirs)} run(s)")

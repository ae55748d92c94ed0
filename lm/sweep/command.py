"""`python -m lm.sweep experiments/NAME.py [--root runs] [--dry_run]`: the runs of an experiment, one after
another (experiment.py)."""

from collections.abc import Sequence

from absl import flags

from lm.errors import UserError
from lm.sweep import experiment

flags.DEFINE_string("root", "runs", "Where the experiment's folder of runs goes.")
flags.DEFINE_bool("dry_run", False, "Print one `python -m lm.train` command per run instead of running them.")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise UserError("usage: python -m lm.sweep experiments/NAME.py [--root runs] [--dry_run]")
    experiment.run(argv[1], flags.FLAGS.root, flags.FLAGS.dry_run)

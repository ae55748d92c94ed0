"""`python -m lm.train`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.train import options

runner.run(options, "lm.train.command")

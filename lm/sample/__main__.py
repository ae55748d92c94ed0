"""`python -m lm.sample`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.sample import options

runner.run(options, "lm.sample.command")

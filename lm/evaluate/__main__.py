"""`python -m lm.evaluate`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.evaluate import options

runner.run(options, "lm.evaluate.command")

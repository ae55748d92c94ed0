"""`python -m lm.bench`: see options.py, or run it with --help."""

from lm.bench import options
from lm.cli import runner

runner.run(options, "lm.bench.command")

"""`python -m lm.plot`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.plot import options

runner.run(options, "lm.plot.command", huge_page_memory=False, uses_jax=False)

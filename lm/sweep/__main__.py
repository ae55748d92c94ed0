"""`python -m lm.sweep`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.sweep import options

runner.run(options, "lm.sweep.command", huge_page_memory=False, uses_jax=False)

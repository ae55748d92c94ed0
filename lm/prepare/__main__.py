"""`python -m lm.prepare`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.prepare import options

runner.run(options, "lm.prepare.command", huge_page_memory=False)

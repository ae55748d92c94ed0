"""`python -m lm.convert`: see options.py, or run it with --help."""

from lm.cli import runner
from lm.convert import options

runner.run(options, "lm.convert.command", huge_page_memory=False)

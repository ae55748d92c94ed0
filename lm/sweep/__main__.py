"""`python -m lm.sweep experiments/NAME.py`: the runs of an experiment, then their table and plot."""

from lm.cli import process

process.start(huge_page_memory=False)

from lm.cli import runner  # noqa: E402  (imported after the process is set up, as in every command)
from lm.sweep import command  # noqa: E402

runner.run(command.main)

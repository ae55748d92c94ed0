"""`python -m lm.prepare --config configs/NAME.py [--config.KEY=VALUE ...] [--out DIR]`: prepares the corpus."""

from lm.cli import process

process.start(huge_page_memory=False)

from lm.cli import runner  # noqa: E402  (imported after the process is set up, as in every command)
from lm.prepare import command  # noqa: E402

runner.run(command.main)

"""`python -m lm.plot WORKDIR...`: the loss curves of runs in one PNG."""

from lm.cli import process

process.start(huge_page_memory=False)

from lm.cli import runner  # noqa: E402  (imported after the process is set up, as in every command)
from lm.plot import command  # noqa: E402

runner.run(command.main)

"""`python -m lm.train --config configs/NAME.py --workdir DIR`: train, evaluate and checkpoint; rerun to resume."""

from lm.cli import process

process.start()

from lm.cli import runner  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.train import command  # noqa: E402

runner.run(command.main)

"""`python -m lm.evaluate --workdir DIR`: loss, perplexity and bits per byte of a checkpoint on a split."""

from lm.cli import process

process.start()

from lm.cli import runner  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.evaluate import command  # noqa: E402

runner.run(command.main)

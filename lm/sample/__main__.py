"""`python -m lm.sample --workdir DIR --prompt "ROMEO:"`: text from a checkpoint, with a KV cache."""

from lm.cli import process

process.start()

from lm.cli import runner  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.sample import command  # noqa: E402

runner.run(command.main)

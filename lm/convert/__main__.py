"""`python -m lm.convert`: Hugging Face models in and out of `lm` workdirs (command.py)."""

from lm.cli import process

process.start(huge_page_memory=False)

from lm.cli import runner  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.convert import command  # noqa: E402

runner.run(command.main)

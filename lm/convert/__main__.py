"""`python -m lm.convert`: GPT-2 checkpoints in Hugging Face format <-> `lm` workdirs, with no network."""

from lm.cli import process

process.start(huge_page_memory=False)

from lm.cli import runner  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.convert import command  # noqa: E402

runner.run(command.main)

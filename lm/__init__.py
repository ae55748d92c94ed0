"""lm: pretraining of decoder-only Transformers in JAX/Flax, from one CPU to a device mesh."""

from lm import huge_pages, interrupt

__version__ = "0.1.0"

huge_pages.reexec_with_huge_pages()  # only when this process is `python -m lm.<command>` starting up
interrupt.stop_at_once_for_commands()  # likewise

"""What a command sets up in its own process before it imports JAX: the malloc tunable, Ctrl-C and SIGTERM."""

import signal

from lm.cli import huge_pages, interrupt


def start(huge_page_memory: bool = True) -> None:
    """Called first by every `python -m lm.<command>` (never on import): with `huge_page_memory`, re-executes the
    process once with glibc's huge-page tunable (lm/cli/huge_pages.py); makes Ctrl-C and SIGTERM stop at once with
    one line (a SLURM log then says why the job ended) until the command installs handlers of its own (training's
    clean stop). Python runs such a handler between bytecodes: a signal that lands in a long call into XLA is
    said when the call returns."""
    if huge_page_memory:
        huge_pages.reexec()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt.stop_at_once)

"""What a command sets up in its own process before it imports JAX: the malloc tunable and Ctrl-C."""

import signal

from lm.cli import huge_pages, interrupt


def start(huge_page_memory: bool = True) -> None:
    """Called first by every `python -m lm.<command>` (never on import): with `huge_page_memory`, re-executes the
    process once with glibc's huge-page tunable (lm/cli/huge_pages.py); makes Ctrl-C stop at once with one line
    until the command installs a handler of its own (training's clean stop)."""
    if huge_page_memory:
        huge_pages.reexec()
    signal.signal(signal.SIGINT, interrupt.stop_at_once)

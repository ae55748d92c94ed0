"""Moments inside a process that the tests act at, as events rather than times: a folder about to be renamed into
place (orbax commits checkpoint STEP by renaming STEP.orbax-checkpoint-tmp, written whole, to STEP; lm.prepare
records a finished task by renaming TASK.json.tmp to TASK.json) and a signal received. Used by sitecustomize.py
(runs started for a test by another program, e.g. SLURM) and by ../signal_at.py (a command the test starts)."""

import os
import signal
import threading
from collections.abc import Callable

_received: dict[int, threading.Event] = {}


def before_rename(act: Callable[[str], None]) -> None:
    """Calls `act(absolute destination)` in the renaming thread before every os.rename and os.replace."""

    def wrap(rename):
        def renaming(src, dst, *args, **kwargs):
            act(os.path.abspath(os.fspath(dst)))
            return rename(src, dst, *args, **kwargs)

        return renaming

    os.rename, os.replace = wrap(os.rename), wrap(os.replace)


def received(signum: int) -> threading.Event:
    """An event set once the process has received `signum` (through a handler the program installs)."""
    if not _received:  # first use: every handler installed from now on notes its signal
        install = signal.signal

        def installing(sig, handler):
            if callable(handler):
                def noted(s, frame, handler=handler):
                    _received.setdefault(s, threading.Event()).set()
                    return handler(s, frame)

                return install(sig, noted)
            return install(sig, handler)

        signal.signal = installing
    return _received.setdefault(signum, threading.Event())

"""Ctrl-C where a command cannot stop cleanly (start-up, a save in flight, a second Ctrl-C): it stops at once,
with one line and exit status 130, never a traceback. A training loop asks for a clean stop instead
(lm/train/preemption.py); once that stop has been said, another Ctrl-C only hurries the exit."""

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

EXIT_SIGINT = 130  # 128 + SIGINT
MESSAGE = ("stopped at once by SIGINT (a checkpoint being written is dropped); rerun the same command to resume "
           "from the last checkpoint")


def stop_at_once(signum: int = signal.SIGINT, frame: FrameType | None = None) -> NoReturn:
    """Ends the process now: not after the threads of a save in flight, whose files never become a checkpoint."""
    _flush_stdout()
    os.write(2, (MESSAGE + "\n").encode())
    os._exit(EXIT_SIGINT)


def say_stopped(message: str, status: int) -> None:
    """Says that a clean stop happened (its checkpoint committed); from then on Ctrl-C ends the process at once
    with `status` and no second line, as nothing is left to drop. A Ctrl-C that lands while the line is being said
    ends the process once it is said."""
    saying, hurried = True, False

    def hurry(signum: int, frame: FrameType | None) -> None:
        nonlocal hurried
        if saying:
            hurried = True
            return
        _exit(status)

    signal.signal(signal.SIGINT, hurry)
    print(message, file=sys.stderr, flush=True)
    saying = False
    if hurried:
        _exit(status)


def _exit(status: int) -> NoReturn:
    _flush_stdout()
    os._exit(status)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # closed, or its reader gone
        pass

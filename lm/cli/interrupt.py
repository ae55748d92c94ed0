"""Ctrl-C or SIGTERM where a command cannot stop cleanly (start-up, a save in flight, a second Ctrl-C): it stops
at once, with one line and exit status 128 + the signal's number (130, 143), never a traceback or silence. A
training loop asks for a clean stop instead (lm/train/preemption.py); once that stop has been said, another
Ctrl-C only hurries the exit."""

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn, TypeVar

T = TypeVar("T")
SLICE_S = 0.05  # how long a signal may wait for its handler while the main thread waits for another thread

def stop_at_once(signum: int = signal.SIGINT, frame: FrameType | None = None) -> NoReturn:
    """Ends the process now, status 128 + `signum`: not after the threads of a save in flight, whose files never
    become a checkpoint."""
    _flush_stdout()
    os.write(2, (f"stopped at once by {signal.Signals(signum).name} (a checkpoint being written is dropped); "
                 "rerun the same command to resume from the last checkpoint\n").encode())
    os._exit(128 + signum)


def waiting(wait: Callable[[], T]) -> T:
    """`wait()`, a call that blocks on other threads (a save's commit), made in a thread of its own while the main
    thread waits for it in short slices: a signal's handler runs in the main thread between two of them. (A lock
    wait that a signal lands just before is not interrupted, and the handler would wait as long as the save.)"""
    if threading.current_thread() is not threading.main_thread():
        return wait()
    result: list = []

    def run() -> None:
        try:
            result.append((True, wait()))
        except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
            result.append((False, e))

    waiter = threading.Thread(target=run, name="waiting", daemon=True)
    waiter.start()
    while waiter.is_alive():
        waiter.join(SLICE_S)
    ok, value = result[0]
    if not ok:
        raise value
    return value


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

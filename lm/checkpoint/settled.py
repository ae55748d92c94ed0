"""Orbax restores that leave nothing running when one of their reads fails.

Orbax runs a restore's array reads as asyncio tasks in an event loop of its own and stops at the first read that
fails (a checkpoint deleted by a trainer while a sampler reads it, a missing file). The other reads are left
behind: their errors are logged later as "Task exception was never retrieved", and their completions land on the
closed loop ("Event loop is closed"), tracebacks a user should never see for a checkpoint that the reader skips.
Inside `settled_reads()`, a loop whose run fails first waits for every read it started and takes their errors,
then raises the first one as before.
"""

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any


class _SettlingLoop(asyncio.SelectorEventLoop):
    """An event loop that, when the coroutine it runs fails, awaits the tasks still running and consumes every
    task's error before it returns."""

    def __init__(self) -> None:
        super().__init__()
        self._started: list[asyncio.Task] = []
        self.set_task_factory(self._track)

    def _track(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self._started.append(task)
        return task

    def run_until_complete(self, future: Any) -> Any:
        try:
            return super().run_until_complete(future)
        except BaseException:
            started, self._started = self._started, []
            # return_exceptions: every task's error is retrieved; nothing is cancelled, so no read's completion
            # arrives after the loop has closed.
            super().run_until_complete(asyncio.gather(*started, return_exceptions=True))
            raise
        finally:
            self._started = []


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _SettlingLoop()


_lock = threading.RLock()


@contextlib.contextmanager
def settled_reads() -> Iterator[None]:
    """Event loops made inside this block (orbax makes one per restore) settle their tasks when they fail."""
    with _lock:
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_Policy())
        try:
            yield
        finally:
            asyncio.set_event_loop_policy(previous)

"""Preemption: SIGTERM or SIGINT asks a training run to stop. Every process stops after the same step, saves a
checkpoint there, waits for it to commit, and exits with status 128 + the signal's number (143 for SIGTERM,
130 for SIGINT); rerunning the command resumes. A second SIGINT stops at once (a checkpoint may be lost)."""

import signal
import threading
from types import FrameType, TracebackType

import jax
import numpy as np
from jax.experimental import multihost_utils

from lm.cli import interrupt

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Within its `with` block, SIGTERM and SIGINT are recorded instead of ending the process."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            interrupt.stop_at_once()  # asked twice: stop now
        self.signum = self.signum or signum

    def agreed(self) -> int:
        """The signal any process has received (0: none). Every process calls it after the same steps."""
        if jax.process_count() == 1:
            return self.signum
        return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))

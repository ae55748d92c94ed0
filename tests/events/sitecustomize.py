"""Holds a process at a checkpoint commit until it receives SIGTERM, so that a test can signal it at that point
whatever the speed of the machine. Python imports this module at start in processes whose PYTHONPATH begins with
this folder (tests/test_slurm.py gives it to the runs that SLURM starts); it does nothing unless LM_TEST_HOLD is set:

  LM_TEST_HOLD='{"FOLDER": "MARKER", ...}'  (JSON)

As a checkpoint is about to be committed as FOLDER (orbax renames STEP.orbax-checkpoint-tmp, written whole, to
STEP), the committing thread creates the file MARKER, then waits until the process has received SIGTERM, then
commits. Training saves asynchronously: its next save waits for this one, so the run cannot pass its next
checkpoint before the signal, and the test that waits for MARKER signals it there.
"""

import json
import os
import signal
import threading

_HOLDS = {os.path.abspath(k): v for k, v in json.loads(os.environ.get("LM_TEST_HOLD") or "{}").items()}
_sigterm = threading.Event()  # set once the process has received a SIGTERM


def _held(rename):
    def holding(src, dst, *a, **k):
        marker = _HOLDS.get(os.path.abspath(os.fspath(dst)))
        if marker is not None:
            with open(marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            _sigterm.wait()
        return rename(src, dst, *a, **k)

    return holding


def _noting_sigterm(install):
    def installing(sig, handler):
        if sig == signal.SIGTERM and callable(handler):
            def noted(s, frame, handler=handler):
                _sigterm.set()
                return handler(s, frame)

            return install(sig, noted)
        return install(sig, handler)

    return installing


if _HOLDS:
    os.rename, os.replace = _held(os.rename), _held(os.replace)
    signal.signal = _noting_sigterm(signal.signal)

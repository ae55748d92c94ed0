"""Holds a process at a checkpoint commit until it receives SIGTERM, so that a test can signal it at that point
whatever the speed of the machine. Python imports this module at start in processes whose PYTHONPATH begins with
this folder (tests/test_slurm.py gives it to the runs that SLURM starts); it does nothing unless LM_TEST_HOLD is set:

  LM_TEST_HOLD='{"FOLDER": "MARKER", ...}'  (JSON)

As a checkpoint is about to be committed as FOLDER, the committing thread creates the file MARKER, then waits until
the process has received SIGTERM, then commits. Training saves asynchronously: its next save waits for this one, so
the run cannot pass its next checkpoint before the signal, and the test that waits for MARKER signals it there.
"""

import json
import os
import signal

_HOLDS = {os.path.abspath(k): v for k, v in json.loads(os.environ.get("LM_TEST_HOLD") or "{}").items()}

if _HOLDS:
    import moments

    _sigterm = moments.received(signal.SIGTERM)

    def _hold(final: str) -> None:
        marker = _HOLDS.get(final)
        if marker is not None:
            with open(marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            _sigterm.wait()

    moments.before_rename(_hold)

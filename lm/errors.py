"""The errors a command turns into one line and an exit status (lm/cli/runner.py), raised anywhere in lm."""

import contextlib
import errno
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line (what is wrong and what to do), exit status 2."""


class DiskFull(UserError):
    """The disk filled up while lm wrote (a checkpoint, the metrics, prepared data); one line, exit status 2."""


@contextlib.contextmanager
def disk_full_is(message: str, kind: type[UserError] = UserError) -> Iterator[None]:
    """Within the block, an error of a full disk (or of a full quota) is `kind(message)`: DiskFull where writer
    threads may still be failing (the command then exits at once), else a UserError (it exits as usual, its worker
    processes and their semaphores cleaned up)."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise kind(message) from None


class Stopped(Exception):
    """The program stopped early on purpose (e.g. preempted after saving): its message and exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

"""The errors a command turns into one line and an exit status (lm/cli/runner.py), raised anywhere in lm."""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line (what is wrong and what to do), exit status 2."""


class DiskFull(UserError):
    """The disk filled up while a checkpoint or the metrics were being written; one line, exit status 2."""


class Stopped(Exception):
    """The program stopped early on purpose (e.g. preempted after saving): its message and exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

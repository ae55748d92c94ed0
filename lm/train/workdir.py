"""A training run's hold on its workdir: the folder made and checked writable, and a lock kept for the run's life.

The lock is an advisory `flock` on WORKDIR/lock, taken by process 0: the kernel releases it when the process
ends, however it ends, so a lock left by a killed run never blocks the next one. The file names its holder.
"""

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from typing import TextIO

import jax

from lm import folders
from lm.errors import UserError
from lm.parallel.processes import global_max
from lm.run_files import CHECKPOINTS, LOCK


def _take(workdir: str) -> TextIO:
    """The lock on `workdir` (made and checked writable first), as an open file to keep open; UserError if another
    trainer holds it."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a folder; pass a folder's path")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make --workdir {workdir} ({e.strerror}); use another path") from None
    folders.check_writable(workdir, "--workdir")
    if os.path.isdir(folders.not_a_link(os.path.join(workdir, CHECKPOINTS))):
        folders.check_writable(os.path.join(workdir, CHECKPOINTS), "--workdir")
    f = open(folders.open_lock(os.path.join(workdir, LOCK)), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = f.read().strip() or "holder unknown"
        f.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise UserError(f"{workdir} is in use by another trainer ({holder}); wait for it to end or stop it, or use "
                        "another --workdir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Within the block, this run alone trains in `workdir` (made if need be, and checked writable). Process 0
    takes the lock; every process stops with one line if it cannot."""
    lock, problem = contextlib.nullcontext(), None
    if jax.process_index() == 0:
        try:
            lock = _take(workdir)
        except UserError as e:
            problem = e
    if global_max(int(problem is not None)):
        raise problem or UserError(f"process 0 could not take --workdir {workdir}; see its error")
    with lock:
        yield

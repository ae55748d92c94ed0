"""`python tests/signal_at.py SIGNAL MOMENT MODULE [ARGS...]`: runs `python -m MODULE ARGS` and sends the process
SIGNAL (KILL, INT, TERM) itself at a moment named by an event in the process, never by the clock:

  commit:FOLDER        as a checkpoint is committed as FOLDER (orbax renames STEP.orbax-checkpoint-tmp, written
                       whole, to STEP), before the rename; the committing thread then waits forever, so the
                       checkpoint never commits unless the process goes on without it
  sigint-commit:DIR    the same, at the first commit into DIR after the process has received a SIGINT (a second
                       Ctrl-C that lands inside the save the first one asked for)
  import:NAME          as the module NAME starts to be imported
"""

import importlib.abc
import os
import runpy
import signal
import sys
import threading

name, moment, module, *args = sys.argv[1:]
signum = getattr(signal, f"SIG{name}")
kind, _, where = moment.partition(":")
sigints = threading.Event()  # set once the process has received a SIGINT


def _fire() -> None:
    os.kill(os.getpid(), signum)
    threading.Event().wait()  # (main thread: its handler runs first; another: it never goes on)


def _committing(dst) -> bool:
    dst = os.path.abspath(os.fspath(dst))
    if kind == "commit":
        return dst == os.path.abspath(where)
    return kind == "sigint-commit" and sigints.is_set() and os.path.dirname(dst) == os.path.abspath(where)


def _guard(rename):
    def guarded(src, dst, *a, **k):
        if _committing(dst):
            _fire()
        return rename(src, dst, *a, **k)

    return guarded


def _noting_sigints(install):
    def installing(sig, handler):
        if sig == signal.SIGINT and callable(handler):
            def noted(s, frame, handler=handler):
                sigints.set()
                return handler(s, frame)

            return install(sig, noted)
        return install(sig, handler)

    return installing


class _AtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == where:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signum)  # handled at the import's next bytecode
        return None


os.rename, os.replace = _guard(os.rename), _guard(os.replace)
signal.signal = _noting_sigints(signal.signal)
if kind == "import":
    sys.meta_path.insert(0, _AtImport())
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)

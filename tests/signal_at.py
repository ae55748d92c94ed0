"""`python tests/signal_at.py SIGNAL MOMENT MODULE [ARGS...]`: runs `python -m MODULE ARGS` and sends the process
SIGNAL (KILL, INT, TERM) itself at a moment named by an event in the process, never by the clock:

  commit:FOLDER        as FOLDER is about to be renamed into place (a checkpoint's commit, a prepared task's
                       record; events/moments.py); the renaming thread then waits forever, so the rename never
                       happens unless the process goes on without it
  sigint-commit:DIR    the same, at the first rename into DIR after the process has received a SIGINT (a second
                       Ctrl-C that lands inside the save the first one asked for)
  import:NAME          as the module NAME starts to be imported
"""

import importlib.abc
import os
import runpy
import signal
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "events"))
import moments  # noqa: E402

name, moment, module, *args = sys.argv[1:]
signum = getattr(signal, f"SIG{name}")
kind, _, where = moment.partition(":")
where = os.path.abspath(where) if kind != "import" else where
sigints = moments.received(signal.SIGINT)


def _at_rename(final: str) -> None:
    if final == where if kind == "commit" else (kind == "sigint-commit" and sigints.is_set()
                                                 and os.path.dirname(final) == where):
        os.kill(os.getpid(), signum)
        threading.Event().wait()  # (main thread: its handler runs first; another: it never goes on)


class _AtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == where:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signum)  # handled at the import's next bytecode
        return None


moments.before_rename(_at_rename)
if kind == "import":
    sys.meta_path.insert(0, _AtImport())
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)

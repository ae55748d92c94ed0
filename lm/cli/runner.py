"""Runs a command: `--help` answered before anything is imported (usage.py), the process set up (process.py),
then the command's absl `main` with chatty libraries quietened, JAX's compilation cache on (compile_cache.py),
and every way it can end (a user error, a full disk, a stop on purpose, Ctrl-C) turned into one line and its
documented exit status."""

import atexit
import importlib
import logging as std_logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NoReturn

from absl import app, flags, logging

from lm.cli import compile_cache, interrupt, process, usage
from lm.cli.flags import die, parse
from lm.errors import EXIT_USER_ERROR, DiskFull, Stopped, UserError


def _not_handled(record: std_logging.LogRecord) -> bool:
    """False for log records of what the command handles itself: a full disk (orbax's and asyncio's records, with
    tracebacks; said in one line), and a checkpoint's metadata file that a trainer deleted while orbax read it (a
    reader then takes another step)."""
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    deleted = text.startswith("Failed to read Metadata file") and "No such file or directory" in text
    return "No space left on device" not in text and not deleted


def _without_closed_loop(hook: Callable) -> Callable:
    """sys.unraisablehook minus 'Event loop is closed': tensorstore's writer threads report that, with a
    traceback, when their orbax save has already failed (the failure is reported in one line) or ended."""

    def unraisablehook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    return unraisablehook


def run(options: ModuleType, command: str, huge_page_memory: bool = True, uses_jax: bool = True) -> None:
    """Runs the `main` of module `command`, whose flags module `options` defines: `--help` first; a UserError
    anywhere in it ends the program with one line and status 2, an interrupt (Ctrl-C) with one line and status
    130. `huge_page_memory`: see process.start; `uses_jax`: whether the command compiles (the cache is set up)."""
    if usage.asked(sys.argv):
        usage.show(options)
        sys.exit(0)
    process.start(huge_page_memory)
    main: Callable[[Sequence[str]], None] = importlib.import_module(command).main  # JAX is imported from here on

    def guarded(argv: Sequence[str]) -> None:
        if not flags.FLAGS["verbosity"].present:  # orbax and TFDS are chatty; --verbosity=0 shows it all
            logging.set_verbosity(logging.ERROR)
            logging.get_absl_handler().addFilter(_not_handled)
            sys.unraisablehook = _without_closed_loop(sys.unraisablehook)
        if uses_jax:
            compile_cache.enable()
        try:
            main(argv)
        except DiskFull as e:  # exit at once: the failing writer threads would print tracebacks at shutdown
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_USER_ERROR)
        except UserError as e:
            die(str(e))
        except Stopped as e:
            interrupt.say_stopped(str(e), e.status)
            sys.exit(e.status)
        except KeyboardInterrupt:  # SIGINT in a process whose handler is Python's own
            interrupt.stop_at_once()

    try:
        app.run(guarded, flags_parser=parse)
    except SystemExit as e:
        leave(e.code)


def leave(code: Any) -> NoReturn:
    """Ends the process as `sys.exit(code)` would, in the interpreter's own order (its shutdown of threads: thread
    pools told to stop, threads that are not daemons joined; the exit handlers: JAX's, which also shuts a
    multi-process run's coordination down, and logging's; the standard streams flushed), but without the
    interpreter's teardown of every module and object, which is slow once JAX and XLA have been used and only frees
    memory the process gives back anyway."""
    threading._shutdown()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): the message, status 1
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)

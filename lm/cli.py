"""Command-line plumbing shared by every `python -m lm.<tool>`: flag parsing and one-line errors."""

import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from lm import interrupt


class UserError(Exception):
    """A problem the user can fix; printed as one line (what is wrong and what to do), exit status 2."""


EXIT_USER_ERROR = 2


class DiskFull(UserError):
    """The disk filled up while a checkpoint was being written; printed as one line, exit status 2."""


class Stopped(Exception):
    """The program stopped early on purpose (e.g. preempted after saving): its message and exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _flag_for(argv: Sequence[str], name: str) -> str:
    """The command-line flag (without its value) that mentions `name`, or `name` itself."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.lstrip("-").split(".")[-1] == name:
            return flag
    return name


def _config_path(argv: Sequence[str]) -> str:
    """The value of --config on the command line (without a `:argument` suffix)."""
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1].split(":")[0]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
    return "?"


def _parse(argv: Sequence[str]) -> list[str]:
    """absl flag parsing whose failures become one line instead of a traceback."""
    try:
        rest = flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: an override names a key the config does not have
        text = str(e)
        if "get_config" in text:
            _die(f"config file {_config_path(argv)} has no get_config() function; define one that returns the "
                 "run's ml_collections.ConfigDict (see configs/tiny.py)")
        name = re.search(r"'([^'\\]+)", text)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        flag = _flag_for(argv, name.group(1)) if name else "?"
        more = f" (did you mean '{hint.group(1)}'?)" if hint else ""
        _die(f"unknown config key in {flag}{more}; see the config file for the valid keys")
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:  # get_config() raised: its exception, last
            _die(f"cannot load config file {_config_path(argv)}: get_config() raised {lines[-1]}")
        _die(lines[0] if lines else type(e).__name__)
    except SyntaxError as e:  # in a config file
        _die(f"cannot load config file {e.filename}: {e.msg} at line {e.lineno}")
    config = flags.FLAGS["config"] if "config" in flags.FLAGS else None
    if config is not None and type(config.value).__name__ == "_ErrorConfig":  # ml_collections' failed load
        path = config.config_filename
        if not os.path.isfile(path):
            _die(f"config file {path} does not exist; pass --config configs/NAME.py")
        cause = str(object.__getattribute__(config.value, "_error")).strip().splitlines()[-1].strip()
        _die(f"cannot load config file {path}: {cause}")
    return rest


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


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


def run(main: Callable[[Sequence[str]], None]) -> None:
    """Runs an absl `main`; a UserError anywhere in it ends the program with one line and status 2, an
    interrupt (Ctrl-C) with one line and status 130."""

    def guarded(argv: Sequence[str]) -> None:
        if not flags.FLAGS["verbosity"].present:  # orbax and TFDS are chatty; --verbosity=0 shows it all
            logging.set_verbosity(logging.ERROR)
            logging.get_absl_handler().addFilter(_not_handled)
            sys.unraisablehook = _without_closed_loop(sys.unraisablehook)
        try:
            main(argv)
        except DiskFull as e:  # exit at once: the failing writer threads would print tracebacks at shutdown
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_USER_ERROR)
        except UserError as e:
            _die(str(e))
        except Stopped as e:
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(e.status)
        except KeyboardInterrupt:  # SIGINT in a process whose handler is Python's own
            interrupt.stop_at_once()

    app.run(guarded, flags_parser=_parse)

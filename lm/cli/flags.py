"""Flag parsing of every `python -m lm.<command>`, with its failures (a typo in a key, a bad value, a config file
that does not load) as one line and exit status 2 instead of absl's or ml_collections' tracebacks."""

import os
import re
import sys
from collections.abc import Sequence

from absl import flags

from lm.errors import EXIT_USER_ERROR


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


def parse(argv: Sequence[str]) -> list[str]:
    """absl flag parsing whose failures become one line instead of a traceback."""
    try:
        rest = flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: an override names a key the config does not have
        text = str(e)
        if "get_config" in text:
            die(f"config file {_config_path(argv)} has no get_config() function; define one that returns the "
                 "run's ml_collections.ConfigDict (see configs/tiny.py)")
        name = re.search(r"'([^'\\]+)", text)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        flag = _flag_for(argv, name.group(1)) if name else "?"
        more = f" (did you mean '{hint.group(1)}'?)" if hint else ""
        die(f"unknown config key in {flag}{more}; see the config file for the valid keys")
    except flags.Error as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        if "Error whilst parsing config file" in lines[0]:  # get_config() raised: its exception, last
            die(f"cannot load config file {_config_path(argv)}: get_config() raised {lines[-1]}")
        die(lines[0] if lines else type(e).__name__)
    except SyntaxError as e:  # in a config file
        die(f"cannot load config file {e.filename}: {e.msg} at line {e.lineno}")
    config = flags.FLAGS["config"] if "config" in flags.FLAGS else None
    if config is not None and type(config.value).__name__ == "_ErrorConfig":  # ml_collections' failed load
        path = config.config_filename
        if not os.path.isfile(path):
            die(f"config file {path} does not exist; pass --config configs/NAME.py")
        cause = str(object.__getattribute__(config.value, "_error")).strip().splitlines()[-1].strip()
        die(f"cannot load config file {path}: {cause}")
    return rest


def die(message: str) -> None:
    """Ends the program with `error: message` on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)



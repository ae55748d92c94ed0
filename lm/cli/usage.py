"""`--help` and `-h` of every `python -m lm.<command>`: what the command does (its options module's docstring)
and each of its own flags with its meaning and default, printed before the command imports JAX; exit status 0.
absl's `--helpfull` still lists every flag of every library."""

import sys
from collections.abc import Sequence
from types import ModuleType

from absl import flags

ASKS = ("-h", "--help", "-help", "--helpshort", "-?")


def asked(argv: Sequence[str]) -> bool:
    """Whether the command line asks for help."""
    return any(arg in ASKS for arg in argv[1:])


def text(options: ModuleType) -> str:
    """The help of the command whose flags `options` defines."""
    lines = [(options.__doc__ or "").strip(), "", "flags:"]
    for flag in sorted(flags.FLAGS.get_flags_for_module(options), key=lambda f: f.name):
        default = "" if flag.default in (None, "") else f" (default: {flag.default_as_str.strip(chr(39))})"
        lines.append(f"  --{flag.name}: {flag.help}{default}")
    lines.append("  -h, --help: this text; --helpfull: every flag, the libraries' as well")
    return "\n".join(lines)


def show(options: ModuleType) -> None:
    print(text(options))
    sys.stdout.flush()

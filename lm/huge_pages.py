"""Transparent huge pages for the host memory of `python -m lm.<command>` on Linux with glibc.

XLA's CPU backend allocates a step's temporary buffer (2.7 GB for a GPT-2 124M step at batch 4 x 256) afresh
at every execution, and glibc maps an allocation that large with a new `mmap`: the step then faults it in,
4 KiB page by page, and that cost 14% of the step on the machine this was measured on. glibc backs such
mappings with 2 MiB pages when its `glibc.malloc.hugetlb` tunable is 1, but reads tunables only when a process
starts; so the command re-executes itself once, before it imports anything else, with the tunable set. A
GLIBC_TUNABLES that already names the tunable is left as it is (`glibc.malloc.hugetlb=0` turns this off).
"""

import os
import sys

COMMANDS = ("lm.train", "lm.sample", "lm.bench", "lm.evaluate")
TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def supported() -> bool:
    """Whether this host can back malloc's mappings with transparent huge pages (Linux, glibc >= 2.35)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        with open(THP_SETTING) as f:
            setting = f.read()
    except (ValueError, OSError, AttributeError):  # not glibc, or no THP in this kernel
        return False
    major, minor = (int(x) for x in version.split(".")[:2])
    return name == "glibc" and (major, minor) >= (2, 35) and "[never]" not in setting


def command(orig_argv: list[str]) -> str | None:
    """The lm command that `python [options] -m MODULE ...` runs, or None."""
    if "-m" not in orig_argv[1:-1]:
        return None
    module = orig_argv[orig_argv.index("-m", 1) + 1]
    return module if module in COMMANDS else None


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the tunable added to its GLIBC_TUNABLES, unless it names it already or the host can't."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not supported():
        return env
    return dict(env, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))


def reexec_with_huge_pages() -> None:
    """Re-executes this process with the tunable set, if it is an lm command being started (called on import of
    the `lm` package, while `python -m` is still locating the command: `sys.argv[0]` is then "-m")."""
    argv = getattr(sys, "orig_argv", [])
    if sys.argv[:1] != ["-m"] or command(argv) is None:
        return
    env = environment(dict(os.environ))
    if env != os.environ:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)

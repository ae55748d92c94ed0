"""Transparent huge pages for the host memory of a command, on Linux with glibc.

XLA's CPU backend allocates a step's temporary buffer afresh at every execution, and glibc maps an allocation
that large with a new `mmap`: the step then faults it in 4 KiB page by page. glibc backs such mappings with
2 MiB pages when its `glibc.malloc.hugetlb` tunable is 1, but reads tunables only when a process starts; so a
command re-executes itself once, before it imports JAX, with the tunable set (docs/performance.md has the
figures). A GLIBC_TUNABLES that already names the tunable is left as it is (`glibc.malloc.hugetlb=0` turns
this off).
"""

import os
import sys

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


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the tunable added to its GLIBC_TUNABLES, unless it names it already or the host can't."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not supported():
        return env
    return dict(env, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))


def reexec() -> None:
    """Re-executes this process (the same interpreter and arguments) with the tunable set, unless it is set."""
    env = environment(dict(os.environ))
    if env != os.environ:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

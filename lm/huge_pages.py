"""Huge pages, and freed memory kept for reuse, for the host memory of `python -m lm.<command>` on Linux with glibc.

XLA's CPU backend allocates a step's temporary buffer (2.7 GB for a GPT-2 124M step at batch 4 x 256) afresh
at every execution, and glibc maps an allocation that large with a new `mmap` and unmaps it when it is freed:
every step then faults it in anew, 4 KiB page by page, and that cost 14% of the step on the machine this was
first measured on. Two sets of glibc tunables fix it: `glibc.malloc.hugetlb=1` backs allocations with 2 MiB
pages, and one heap that never shrinks (`arena_max=1`, `mmap_max=0`, a `trim_threshold` of 64 GiB) keeps
freed memory in the process, so the next step reuses pages already faulted in. The second also removes a
pause penalty seen on a virtual machine whose host reclaims the memory its guest frees: after 8 s idle, a
GPT-2 124M step there took 6 s instead of 2.5 s, faulting its buffer in from the host again.
glibc reads tunables only when a process starts, so the command re-executes itself once, before it imports
anything else, with the tunables set. A GLIBC_TUNABLES that already names any of them is left as it is
(`glibc.malloc.hugetlb=0` turns all of this off).
"""

import os
import sys

COMMANDS = ("lm.train", "lm.sample", "lm.bench", "lm.evaluate")
TUNABLES = {"glibc.malloc.hugetlb": "1", "glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
            "glibc.malloc.trim_threshold": str(64 << 30)}
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
    """`env` with the tunables added to its GLIBC_TUNABLES, unless it names any of them or the host can't."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if any(name in tunables for name in TUNABLES) or not supported():
        return env
    ours = [f"{name}={value}" for name, value in TUNABLES.items()]
    return dict(env, GLIBC_TUNABLES=":".join(filter(None, [tunables, *ours])))


def reexec_with_huge_pages() -> None:
    """Re-executes this process with the tunables set, if it is an lm command being started (called on import of
    the `lm` package, while `python -m` is still locating the command: `sys.argv[0]` is then "-m")."""
    argv = getattr(sys, "orig_argv", [])
    if sys.argv[:1] != ["-m"] or command(argv) is None:
        return
    env = environment(dict(os.environ))
    if env != os.environ:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)

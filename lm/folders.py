"""The folders lm writes into, and how it writes there, so that a user's file is never written over or deleted and
a link planted in such a folder is never written through:

- a folder is lm's own (it holds lm's mark file) or empty, or lm refuses it in one line (`claim`);
- a file is written whole under a fresh name, made exclusively, then renamed over its own name (`write_atomic`,
  `replacing`: a link at that name is replaced, not followed);
- a file kept open (a lock) is opened without following a link (`open_lock`), and a folder lm names itself inside
  one of its own is refused if it is a link (`not_a_link`);
- only the names lm gives its own files are ever deleted, and never a link (`remove_own`).
"""

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from lm.errors import UserError


def claim(folder: str, mark: str, is_own: Callable[[str], bool], flag: str) -> None:
    """Makes `folder` (named by `flag` in messages) lm's own: made if need be and marked with the file `mark`, if it
    is empty or holds only names `is_own` accepts (a folder lm wrote before it marked its folders); one line if it
    is a file, cannot be written (also once marked), or holds anything else."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder} is a file, not a folder; pass a folder's path")
    try:
        os.makedirs(folder, exist_ok=True)
        names = os.listdir(folder)
    except OSError as e:
        raise UserError(f"cannot make {flag} {folder} ({e.strerror}); use another path") from None
    path = os.path.join(folder, mark)
    foreign = sorted(n for n in names if not is_own(n) or os.path.islink(os.path.join(folder, n)))
    if mark not in names and foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{flag} {folder} holds files lm did not write ({shown}); lm writes only into an empty "
                        "folder or one it made: pass a new or empty folder")
    check_writable(folder, flag)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    except FileExistsError:
        pass  # marked before, or by another process meanwhile; checked below
    if os.path.islink(path) or not os.path.isfile(path):
        raise UserError(f"{path} is not the file lm marks its folders with (a link or a folder); remove it")


def write_atomic(path: str, data: str | bytes) -> None:
    """`data` at `path`, whole: written to a fresh file beside it (made exclusively), then renamed over `path`."""
    with replacing(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json(path: str, value: Any, indent: int | None = None) -> None:
    """`value` as JSON at `path`, whole (`write_atomic`)."""
    write_atomic(path, json.dumps(value, indent=indent, sort_keys=indent is not None))


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A fresh empty file beside `path` (made exclusively) for the block to write whole; renamed over `path` when
    the block ends (with the mode the user's umask gives), deleted if it fails. A link at `path` is replaced, never
    written through."""
    folder, name = os.path.split(path)
    fd, tmp = _fresh(lambda p: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666),
                     folder or ".", name)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that replaced the fresh file (safetensors does) made it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def fresh_folder(folder: str, name: str) -> str:
    """A new empty folder inside `folder`, made exclusively, to fill and then rename to `name`."""
    return _fresh(lambda p: os.mkdir(p, 0o777), folder, name)[1]


def _fresh(make: Callable[[str], Any], folder: str, name: str) -> tuple[Any, str]:
    """(what `make` returns, the path) for a new name `.NAME.RANDOM.tmp` in `folder`, made exclusively with the
    permissions the user's umask gives (tempfile's would make it private)."""
    while True:
        path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return make(path), path
        except FileExistsError:
            continue


def check_writable(folder: str, flag: str) -> None:
    """One line now, not at the first file written, if files cannot be made in `folder` (named by `flag`)."""
    try:
        fd, probe = _fresh(lambda p: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666),
                           folder, "write-test")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        other = flag.removeprefix("the ")  # '--workdir', or 'the cache folder'
        raise UserError(f"cannot write in {folder} ({e.strerror}); make it writable or use another {other}") from None


def is_temporary(name: str) -> bool:
    """Whether `name` is one `write_atomic` or `fresh_folder` gives a file or folder it fills."""
    return name.startswith(".") and name.endswith(".tmp")


def not_a_link(path: str) -> str:
    """`path`, a file or folder lm names itself inside one of its folders; one line if a link was planted there
    (lm would write into whatever it points to)."""
    if os.path.islink(path):
        raise UserError(f"{path} is a link; lm does not write through links in its folders: remove it")
    return path


def open_lock(path: str) -> int:
    """A file descriptor of the lock file `path` (made if need be), opened without following a link there."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if os.path.islink(path):
            raise UserError(f"{path} is a link; lm does not write through links in its folders: remove it") from None
        raise


def remove_own(folder: str, is_own: Callable[[str], bool]) -> None:
    """Deletes what `folder` holds under the names `is_own` accepts, except links (left as they are)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if is_own(name) and not os.path.islink(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


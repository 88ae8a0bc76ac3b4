"""Output files: refused unless regular, and replaced atomically.

An output path that exists must be a regular file: a FIFO, a device or a socket
would be replaced by a regular file (or block forever), and the user told that
all went well. The new contents go to a temporary file beside the target and are
renamed over it in one step, so a kill mid-write leaves the previous file whole.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import ActstoreError


class OutputPathError(ActstoreError, ValueError):
    """An output path that is not a regular file (a FIFO, a device, a folder)."""


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, in a user's words."""
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")


def input_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a regular file (missing, unreadable, a FIFO...), or None."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not stat.S_ISREG(mode):
        return f"is {file_kind(mode)}, not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def check_output_path(path: str | Path, param: str = "out") -> Path:
    """``path`` if it does not exist or is a regular file (a symlink to one counts), else refuse."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise OutputPathError(f"{param}={str(path)!r}: cannot be checked ({err.strerror})", param=param) from None
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{param}={str(path)!r} is {file_kind(mode)}; give the path of a regular file to write",
                              param=param)
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, param: str = "out") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it replaces ``path`` in one
    rename (on failure it is removed and ``path`` is left as it was)."""
    path = check_output_path(path, param)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.resolve() if path.is_symlink() else path
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # on disk before the rename makes it the file
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_of(target))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _mode_of(target: Path) -> int:
    """The permissions the file had, or those a new file gets (the writer's may be private)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

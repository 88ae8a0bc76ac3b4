"""Chunk files opened for reading: regular files only (a FIFO in a chunk's place would block a
read for ever), and the buffers a pass that is done with each chunk before the next reads into;
the temporary files of a write killed before its rename, removed by the next writer."""

from __future__ import annotations

import os
import re
import stat

import numpy as np


def open_regular(path: str):
    """``path`` opened for reading if it is a regular file; anything else in a chunk's place (a FIFO
    would block the read for ever, a device or a folder) is refused as damage (ValueError). Opened
    without blocking, then checked, then read normally."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"chunk file {path} is not a regular file (a FIFO, a device or a folder)")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def refuse_irregular_files(array) -> None:
    """Refuse (ValueError, naming the file) anything but regular files and folders in a local array's
    chunk folder: zarr opens a FIFO there and blocks for ever. A walk of directory entries (no file is
    opened); arrays of other stores pass."""
    root = getattr(array.store, "root", None)
    if root is None:
        return
    stack = [os.path.join(root, *array.path.split("/"))]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                stack.append(entry.path)
            elif not entry.is_file():
                raise ValueError(f"chunk file {entry.path} is not a regular file (a FIFO, a device or a socket)")


class ChunkScratch:
    """Two byte buffers that chunk reads go into, grown as needed and reused: a pass that is
    done with each chunk before it reads the next (the statistics) then allocates nothing per
    chunk. A fresh multi-MB buffer per chunk costs its page faults on every read, and glibc
    keeps the freed ones in per-thread arenas, so peak memory grew with the chunks read."""

    def __init__(self):
        self._stored = np.empty(0, dtype=np.uint8)
        self._decoded = np.empty(0, dtype=np.uint8)

    def read(self, f) -> np.ndarray:
        """The whole of the open file ``f``, as a view of the stored-bytes buffer."""
        size = os.fstat(f.fileno()).st_size
        if self._stored.size < size:
            self._stored = np.empty(size, dtype=np.uint8)
        view = self._stored[:size]
        got = f.readinto(memoryview(view))
        return view[:got]

    def decoded(self, nbytes: int) -> np.ndarray:
        """A buffer of ``nbytes`` for a codec to decode into."""
        if self._decoded.size < nbytes:
            self._decoded = np.empty(nbytes, dtype=np.uint8)
        return self._decoded[:nbytes]


# zarr's LocalStore writes each file to "<name>.<32 hex>.partial" beside it, then renames it into place
_STRAY = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_stray_partials(folder: str | os.PathLike, names: tuple[str, ...], own: bool = True) -> int:
    """Remove the temporary files a write killed before its rename left in ``folder`` (its own
    ``zarr.<hex>.partial``) and in its arrays ``names`` (each chunk's ``<key>.<hex>.partial``): no
    reader ever looks at them, and nothing else would ever remove them. Only for a caller that holds
    the writer lock of everything under those names (no write of theirs is in flight), and of the
    folder's own metadata unless ``own`` is False. The count."""
    removed = 0
    tops = [os.path.join(folder, name) for name in names]
    for entry in _entries(folder) if own else ():
        if entry.is_file(follow_symlinks=False) and _STRAY.search(entry.name):
            removed += _unlink(entry.path)
    for top in tops:
        for base, _, files in os.walk(top):
            removed += sum(_unlink(os.path.join(base, name)) for name in files if _STRAY.search(name))
    return removed


def _entries(folder) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
    except OSError:
        return 0
    return 1

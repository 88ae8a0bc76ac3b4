"""One writer per store group at a time.

A capture holds an exclusive advisory lock (``fcntl.flock``) on a hidden file
beside the store, ``.<store name>.<group>.lock``, for as long as it writes.
The operating system releases it when the process ends, however it ends, so a
killed capture never leaves a stale lock. A second writer is refused at once
with a clear message instead of interleaving its rows with the first one's.
Readers take no lock: they see the committed prefix (see writer).

Object stores (URLs such as ``s3://bucket/acts.zarr``) have no locks: for
them the lock file lives in the local cache (``$ACTSTORE_CACHE/locks``, named
by a hash of the URL), which refuses a second writer on the same machine but
cannot see one on another machine. To write one store from several machines,
capture disjoint shards (``actstore capture --shard i/n``), which never write
each other's data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import StoreError
from .location import StoreLocation

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _same_file(path: Path, handle) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


class WriterLock:
    def __init__(self, store, group: str, busy: str | None = None):
        location = StoreLocation.parse(store)  # a path and its file:// URL: one store, one lock
        self.store = str(location)
        self.group = group
        # what a refused writer is told, with {holder}; default: a capture holds the group
        self.busy = busy
        self._handle = None
        self.path = None if fcntl is None else location.lock_file(group)

    def acquire(self, wait: float | None = 0) -> WriterLock:
        """Take the lock; if another process holds it, retry for ``wait`` seconds
        (``None``: as long as it takes), then refuse with the holder's pid."""
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file where a folder of the path should be, no permission
            why = "a part of it is a file, not a folder" if isinstance(err, FileExistsError | NotADirectoryError) \
                else err.strerror or str(err)
            raise StoreError(f"store {self.store!r}: cannot make its folder {str(self.path.parent)!r} ({why}); "
                             "choose a store path whose folders are folders you may write", param="store") from None
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                if deadline is None or time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise StoreError(
                    self.busy.format(holder=holder) if self.busy else
                    f"{self.store!r} group {self.group!r} is being written by {holder}; wait for that "
                    "capture to finish, or capture into another store or group (--name)"
                ) from None
            if _same_file(self.path, handle):
                break
            # The holder removed the file as we opened it: lock the one now at the path.
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._handle is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                fcntl.flock(self._handle, fcntl.LOCK_UN)
                self._handle.close()
                self._handle = None

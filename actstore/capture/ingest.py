"""Overlap the model with the store: windows are written on a thread of their own.

While the forward passes of window k+1 run, window k is compressed and written
(zarr encodes its chunks on its thread pool, so compression uses every core) and
committed. One writer thread, fed through a bounded queue, keeps the commit order
of the windows exactly; the queue's bound keeps memory at a few windows, whatever
the input's size. A crash or a kill loses at most the windows in flight (the one
being written and the ``depth`` waiting), never a committed one, and ``--resume``
continues from the last commit as before. An error on the writer thread is raised
on the caller's thread at its next :meth:`OrderedWriter.put` or at the end.

Where the model already keeps every core busy (on the CPU), a thread beside it only slows
it: there ``depth=0`` writes each window on the caller's thread, in the same order
(:func:`actstore.capture.run.writer_depth`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_DONE = object()


class OrderedWriter:
    """Run ``consume(item)`` for each :meth:`put` item, in order, on one background thread.

    Use as a context manager: leaving it waits until every item put has been consumed,
    also when the body raised (those items are complete windows: committing them
    keeps everything captured so far), then raises the writer's error, if any.
    ``depth`` items may wait while one is consumed; :meth:`put` blocks beyond that.
    ``depth=0``: no thread, :meth:`put` consumes the item on the caller's thread.
    """

    def __init__(self, consume: Callable[[Any], None], depth: int = 1):
        if depth < 0:
            raise ValueError(f"depth={depth}: expected >= 0")
        self._consume = consume
        self._error: BaseException | None = None
        self._raised = False  # the error stays set (the writer keeps draining) once it has been raised
        self._thread = None
        if depth:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="actstore-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain, so that put() never blocks on a dead writer
            try:
                self._consume(item)
            except BaseException as err:  # handed to the caller's thread
                self._error = err

    def put(self, item: Any) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the writer's error, if any."""
        self._raise_if_failed()
        if self._thread is None:
            self._consume(item)
            return
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every item put to be consumed; raise the writer's error, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def __enter__(self) -> OrderedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(BaseException):  # the body's exception is the one to raise
            self.close()

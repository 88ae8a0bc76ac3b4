"""Which dask scheduler runs a computation: one context manager for every streaming pass
(statistics, covariance, methods, cluster capture)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .errors import StatsError

SCHEDULER_HELP = (
    "Dask scheduler: 'threads' (default), 'processes', 'synchronous', 'local:N' (start a "
    "dask.distributed LocalCluster of N worker processes for this run), or the address of a "
    "running dask.distributed scheduler (tcp://host:8786)."
)


@contextlib.contextmanager
def scheduler_context(scheduler: str | None) -> Iterator[Any]:
    """Run the dask computations inside on ``scheduler`` (see :data:`SCHEDULER_HELP`).

    Yields the dask.distributed ``Client`` when there is one, else ``None``.
    """
    import dask

    if scheduler in (None, "", "threads", "processes", "synchronous", "sync"):
        with dask.config.set(scheduler=scheduler or "threads"):
            yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise StatsError(
            f"scheduler={scheduler!r} needs dask.distributed: pip install 'actstore[distributed]'", param="scheduler"
        ) from None
    if scheduler.startswith("local:"):
        workers = scheduler.partition(":")[2]
        if not workers.isdigit() or int(workers) < 1:
            raise StatsError(f"scheduler={scheduler!r}: expected local:N with N >= 1 workers, e.g. local:2",
                             param="scheduler")
        # One thread per worker process: the stats kernel releases the GIL, so
        # threads would do too, but processes also keep zarr decoding apart.
        with _environment_kept(), \
                LocalCluster(n_workers=int(workers), threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except OSError as err:
        raise StatsError(f"cannot connect to the dask scheduler at {scheduler!r}: {err}") from None
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """Put the caller's environment back after a LocalCluster: distributed's nannies set
    OMP_NUM_THREADS=1 (and MKL/OpenBLAS, MALLOC_TRIM_THRESHOLD_) in the process that starts them
    and leave them there, so every process the caller starts afterwards (a subprocess, a later
    capture's tokenizer pool) would run single-threaded, its float sums in another order."""
    import os

    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)

"""Capture on a dask.distributed cluster: one shard per task, each worker loading the model
(a :class:`~actstore.models.load.ModelSpec`) once; the shards merged when all are done."""

from __future__ import annotations

import functools
from pathlib import Path

from .._dask import scheduler_context
from ..errors import ActstoreError
from ..models.load import LoadedModel, ModelSpec
from ..stores.schema import GroupOptions
from ..stores.shards import merge_shards
from .options import CaptureOptions
from .run import CaptureReport, CaptureRequest, capture_request, run_capture


def capture_on_cluster(model: ModelSpec | str, data: str | Path, store, *, scheduler: str, shards: int | None = None,
                       options: CaptureOptions | None = None, group: GroupOptions | None = None,
                       **changes) -> list[CaptureReport]:
    """Capture ``data`` on a dask.distributed cluster, one shard per task.

    ``scheduler`` is ``local:N`` (a LocalCluster of N worker processes) or the
    address of a running scheduler; ``shards`` defaults to the number of
    workers. Each worker loads ``model`` once (a :class:`ModelSpec`; a model id is read as
    ``ModelSpec(model)``) and captures the shards it is given with :func:`capture_to_store`
    (``options``, ``group`` or their fields as keywords); the shards are merged when all are done. ``model``, ``data`` and
    ``store`` must mean the same thing on every worker: a shared file system or an
    object-store URL. Returns the shards' reports, in shard order. Everything is
    checked here, before the cluster starts.

    >>> reports = capture_on_cluster(model_dir, "pairs.json", "cluster.zarr", layers="1", scheduler="local:1",
    ...                              progress=False)
    >>> [report.n_samples_written for report in reports]
    [14]
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
    request = capture_request(spec, options, group, **changes)
    with scheduler_context(scheduler) as client:
        if client is None:
            raise ActstoreError(
                f"scheduler={scheduler!r}: a cluster capture needs dask.distributed (local:N or an address)",
                param="scheduler",
            )
        count = shards or len(client.scheduler_info()["workers"])
        if count < 1:
            raise ActstoreError(f"{count} shards: need at least one (does the cluster have workers?)")
        futures = [client.submit(_capture_shard, request, data, store, (i, count), pure=False)
                   for i in range(count)]
        reports = client.gather(futures)
    merged = merge_shards(store, reports[0].group, reports[0].run)
    for report in reports:
        report.merged_shards = merged
    return reports


@functools.lru_cache(maxsize=1)
def _worker_model(spec: ModelSpec) -> LoadedModel:
    # One load per worker process, reused by every shard it captures.
    return spec.load()


def _capture_shard(request: CaptureRequest, data, store, shard) -> CaptureReport:
    request = CaptureRequest(_worker_model(request.model), request.options.replace(progress=False), request.group)
    return run_capture(request, data, store, shard=shard, merge=False)

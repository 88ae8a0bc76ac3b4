"""Streaming per-class statistics (count, mean, unbiased variance) as Dask reductions.

Each block of activations is reduced to a partial state ``{"n", "mean", "m2"}``
in float64 (two-pass within the block), and states are merged pairwise by the
update of Chan, Golub & LeVeque (1983), "Algorithms for computing the sample
variance: analysis and recommendations", The American Statistician 37(3):

    n = na + nb;  d = mean_b - mean_a
    mean = mean_a + d * nb / n;  m2 = m2_a + m2_b + d**2 * na * nb / n

This is the same chunk / combine / aggregate structure as dask's own
``moment_chunk`` / ``moment_combine`` / ``moment_agg``, handed to
``dask.array.reduction`` so the tree of merges (and the scheduler: threads or a
dask.distributed cluster) is dask's. The array is never materialised.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StatsError, StoreError
from .stores.lock import WriterLock
from .stores.zarr_store import (
    as_str_array,
    commit_attrs,
    committed_moments,
    open_root,
    open_store,
    select_group,
)

STATS_GROUP = "stats"


def chan_merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge two partial states ``{"n", "mean", "m2"}`` (Chan et al. 1983).

    Works on numpy arrays and on torch tensors alike (the dask reduction and
    the on-device accumulation of ``capture --stats-only`` share it).
    """
    n = a["n"] + b["n"]
    safe_n = n + (n == 0)  # 1 where both are empty (then delta * 0 / 1 = 0)
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * (b["n"] / safe_n)
    m2 = a["m2"] + b["m2"] + delta * delta * (a["n"] * b["n"] / safe_n)
    return {"n": n, "mean": mean, "m2": m2}


@functools.cache
def _sums_kernel():
    """The compiled per-class sums kernel (numba; compiled once, cached on disk)."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def sums(x, codes, shift, s1, s2):
        rows, cols = x.shape
        for r in range(rows):
            c = codes[r]
            for j in range(cols):
                d = np.float64(x[r, j]) - shift[j]
                s1[c, j] += d
                s2[c, j] += d * d

    return sums


def _block_state(block: np.ndarray, codes: np.ndarray, shift: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class (n, mean, M2) of one block of samples, in float64.

    ``block: (b, ...)`` activations, ``codes: (b,)`` class index per sample,
    ``shift: (...)`` subtracted first. Returns ``(1, 3, n_classes, ...)``:
    n, mean (still shifted) and M2.

    One fused pass (numba, GIL released so dask's threads run in parallel)
    accumulates, per class, the sums S1 and S2 of the shifted values and of
    their squares in float64; then M2 = S2 - S1**2 / n. Because the data are
    centred on a sample of the same distribution, S2 and S1**2/n are of the
    order of n * var and the subtraction loses no more than a digit or two of
    float64's sixteen. (A numpy version of the same sums, which converts each
    slice to float64 and multiplies by a one-hot class matrix, ran 5.6x
    slower: benchmarks/RESULTS.md.)
    """
    trailing = block.shape[1:]
    size = block.shape[0]
    flat_block = block.reshape(size, -1)
    if flat_block.dtype not in (np.float32, np.float64):
        flat_block = flat_block.astype(np.float32)  # float16: numba has no CPU half arithmetic
    flat_shift = np.ascontiguousarray(shift, dtype=np.float64).reshape(-1)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    n = np.bincount(codes, minlength=n_classes).astype(np.float64)
    s1 = np.zeros((n_classes, flat_block.shape[1]))
    s2 = np.zeros_like(s1)
    _sums_kernel()(np.ascontiguousarray(flat_block), codes, flat_shift, s1, s2)
    safe_n = np.maximum(n, 1.0)[:, None]
    mean = s1 / safe_n
    m2 = np.maximum(s2 - s1 * mean, 0.0)
    out = np.empty((1, 3, n_classes, *trailing))
    out[0, 0] = n.reshape((n_classes,) + (1,) * len(trailing))
    out[0, 1] = mean.reshape((n_classes, *trailing))
    out[0, 2] = m2.reshape((n_classes, *trailing))
    return out


def tensor_class_moments(x, codes, n_classes: int, step_elements: int = 1 << 22) -> dict:
    """Per-class ``{"n", "mean", "m2"}`` of ``x: (rows, ...)`` torch tensor, in float64 on its device.

    ``codes: (rows,)`` class index of each row. Rows go in slices of about
    ``step_elements`` values (32 MiB in float64), each reduced in two passes (the
    mean, then squared deviations from it), and the slices are merged with
    :func:`chan_merge`.
    """
    step = max(1, step_elements // max(1, x[0].numel())) if x.shape[0] else 1
    state = None
    for start in range(0, max(x.shape[0], 1), step):
        part = _tensor_class_moments(x[start:start + step], codes[start:start + step], n_classes)
        state = part if state is None else chan_merge(state, part)
    return state


def _tensor_class_moments(x, codes, n_classes: int) -> dict:
    import torch

    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    codes = codes.to(device=x.device, dtype=torch.int64)
    n = torch.bincount(codes, minlength=n_classes).to(torch.float64)
    sums = torch.zeros((n_classes, flat.shape[1]), dtype=torch.float64, device=x.device)
    sums.index_add_(0, codes, flat)
    mean = sums / (n + (n == 0)).unsqueeze(1)
    centred = flat - mean[codes]
    m2 = torch.zeros_like(sums).index_add_(0, codes, centred * centred)
    shape = (n_classes, *x.shape[1:])
    return {"n": n.reshape((n_classes,) + (1,) * (x.dim() - 1)).expand(shape), "mean": mean.reshape(shape),
            "m2": m2.reshape(shape)}


def _moment_chunk(x: np.ndarray, axis, keepdims: bool = True, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return x
    # A block state (1, 3, ...) -> the {"n", "mean", "m2"} dict the merges work on.
    return {"n": x[:, 0], "mean": x[:, 1], "m2": x[:, 2]}


def _moment_combine(pairs, axis, keepdims: bool = True, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return pairs
    if isinstance(pairs, dict):
        return pairs
    state = None
    for pair in pairs:
        pair = _moment_combine(pair, axis, keepdims) if isinstance(pair, list) else pair
        state = pair if state is None else chan_merge(state, pair)
    return state


def _moment_agg(pairs, axis, keepdims: bool = False, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return pairs
    state = _moment_combine(pairs, axis, keepdims)
    # (count, mean, m2) stacked on a new leading axis: (3, n_classes, ...).
    return np.stack([state["n"][0], state["mean"][0], state["m2"][0]])


def class_moments(x, codes, n_classes: int, split_every: int | None = None):
    """Lazy ``(3, n_classes, ...)`` float64 dask array: count, mean and M2 per class.

    ``x: (sample, ...)`` (dask or numpy), ``codes: (sample,)`` integer class of
    each sample in ``[0, n_classes)``. One pass over ``x``: each block is
    reduced to per-class partial states (:func:`_block_state`), which
    ``dask.array.reduction`` merges in a tree (:func:`chan_merge`).

    The data are centred on their first sample before reducing, so activations
    with a large common offset keep their digits through the merges; the
    shift is added back to the final mean.
    """
    import dask.array as da

    x = x if isinstance(x, da.Array) else da.asarray(x)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (x.shape[0],):
        raise ValueError(f"codes must have shape ({x.shape[0]},), got {codes.shape}")
    if x.shape[0] == 0:
        raise StatsError("no samples to compute statistics of")
    trailing = "".join(chr(ord("a") + i) for i in range(x.ndim - 1))
    codes_da = da.from_array(codes, chunks=(x.chunks[0],))
    shift = x[0].astype(np.float64)
    states = da.blockwise(
        _block_state, "isk" + trailing,
        x, "i" + trailing,
        codes_da, "i",
        shift, trailing,
        new_axes={"s": 3, "k": n_classes},
        adjust_chunks={"i": 1},
        n_classes=n_classes,
        dtype=np.float64,
        meta=np.empty((0,) * (x.ndim + 2), dtype=np.float64),
    )
    state = da.reduction(
        states,
        _moment_chunk,
        _moment_agg,
        combine=_moment_combine,
        axis=0,
        keepdims=False,
        concatenate=False,
        dtype="f8",
        split_every=split_every,
        name="welford-chan-moments",
        meta=np.empty((0,) * (x.ndim + 1), dtype=np.float64),
    )
    return da.concatenate([state[0:1], state[1:2] + shift, state[2:3]], axis=0)


def moments(x, axis: int = 0, split_every: int | None = None):
    """Lazy ``(3, ...)`` float64 dask array: count, mean and M2 of ``x`` along ``axis``."""
    import dask.array as da

    x = x if isinstance(x, da.Array) else da.asarray(x)
    x = da.moveaxis(x, axis, 0)
    return class_moments(x, np.zeros(x.shape[0], dtype=np.int64), 1, split_every)[:, 0]


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
            f"--scheduler {scheduler!r} needs dask.distributed: pip install 'actstore[distributed]'"
        ) from None
    if scheduler.startswith("local:"):
        workers = scheduler.partition(":")[2]
        if not workers.isdigit() or int(workers) < 1:
            raise StatsError(f"--scheduler {scheduler!r}: expected local:N with N >= 1 workers, e.g. local:2")
        # One thread per worker process: the stats kernel releases the GIL, so
        # threads would do too, but processes also keep zarr decoding apart.
        with LocalCluster(n_workers=int(workers), threads_per_worker=1, dashboard_address=None) as cluster, \
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


def _stats_dataset(counts, means, variances, classes, layers, attrs):
    import xarray as xr

    return xr.Dataset(
        {
            "count": (("class", "layer"), np.asarray(counts, dtype=np.int64)),
            "mean": (("class", "layer", "hidden"), means),
            "var": (("class", "layer", "hidden"), variances),
        },
        coords={"class": list(classes), "layer": list(layers)},
        attrs=attrs,
    )


def compute_stats(
    path: str | Path,
    model: str | None = None,
    *,
    scheduler: str | None = None,
    force: bool = False,
    split_every: int | None = None,
    progress: bool = False,
):
    """Count, mean and unbiased variance (ddof=1) per (class, layer, hidden).

    Reuses the statistics cached in the store unless the data changed since
    (or ``force``); otherwise computes them in one streaming pass and caches
    them next to the data. Returns an :class:`xarray.Dataset` like
    :func:`open_stats`.
    """
    import dask

    only = _stats_only(path, model)
    if only is not None:
        return only
    if not force:
        cached = _read_cached(path, model)
        if cached is not None:
            return cached
    ds = open_store(path, model, coords=("class",))  # a snapshot: rows appended meanwhile are not in it
    if ds.sizes["sample"] == 0:
        raise StatsError(f"{str(path)!r} group {ds.attrs['group']!r} holds no samples yet")
    labels = ds["class"].values
    classes, codes = np.unique(labels, return_inverse=True)
    classes = [str(c) for c in classes]
    # A wide merge tree: the partial states are small and their merges cheap.
    lazy = class_moments(ds["acts"].data, codes.reshape(-1), len(classes), split_every=split_every or 16)
    progress_bar = contextlib.nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        progress_bar = ProgressBar()
    with scheduler_context(scheduler), progress_bar:
        count, means, m2 = dask.compute(lazy)[0]
    stats = stats_from_moments(classes, count, means, m2, ds["layer"].values, ds.attrs, ds.attrs["group"],
                               int(ds.sizes["sample"]))
    _write_cached(path, model, stats)
    return stats


def stats_from_moments(classes, count, mean, m2, layers, group_attrs, group_name: str, n_samples: int, **extra):
    """The statistics dataset (see :func:`open_stats`) from per-class moments
    ``count, mean, m2: (class, layer, hidden)``; classes come out sorted."""
    order = np.argsort(np.asarray(classes, dtype=str), kind="stable")
    count, mean, m2 = (np.asarray(a, dtype=np.float64)[order] for a in (count, mean, m2))
    with np.errstate(invalid="ignore", divide="ignore"):
        variances = m2 / (count - 1)
    attrs = {key: group_attrs[key] for key in ("model_id", "model_fingerprint", "data_version", "position")}
    attrs.update({"group": group_name, "n_samples": n_samples, "ddof": 1, **extra})
    return _stats_dataset(count[:, :, 0].astype(np.int64), mean, variances, [str(classes[i]) for i in order],
                          layers, attrs)


def cached_moments(path, model):
    """``(classes, count, mean, m2)`` of the up-to-date cached statistics, or None."""
    stats = _read_cached(path, model)
    if stats is None:
        return None
    mean = stats["mean"].values
    count = np.broadcast_to(stats["count"].values[:, :, None], mean.shape).astype(np.float64)
    m2 = np.nan_to_num(stats["var"].values * (count - 1))  # var is NaN for a single sample: M2 = 0
    return [str(c) for c in stats["class"].values], count, mean, m2


def cache_capture_moments(path, model, classes, count, mean, m2) -> bool:
    """Cache statistics accumulated during a capture for the group's current data.

    Written only if they cover exactly the committed rows (else nothing is
    written and the next :func:`compute_stats` makes its pass). Returns whether
    they were written.
    """
    group = select_group(open_root(path, mode="r"), model, path)
    attrs = dict(group.attrs)
    n_samples = int(attrs["n_samples"])
    if int(np.asarray(count)[:, 0, 0].sum()) != n_samples:
        return False
    stats = stats_from_moments(classes, count, mean, m2, attrs["layers"], attrs, group.basename, n_samples,
                               computed_by="capture")
    _write_cached(path, model, stats)
    return True


def _write_cached(path, model, stats) -> None:
    """Replace the group's cached statistics (one writer at a time: a process that finds
    another one writing leaves it to them, since theirs are as valid for their data)."""
    root = open_root(path, mode="a")
    group = select_group(root, model, path)
    lock = WriterLock(path, f"{group.basename}.stats-cache")
    try:
        lock.acquire(wait=_CACHE_LOCK_WAIT_S)
    except StoreError:
        return
    try:
        _replace_cache(group, stats)
    finally:
        lock.release()


_CACHE_LOCK_WAIT_S = 10.0


def _replace_cache(group, stats) -> None:
    if STATS_GROUP in dict(group.groups()):
        del group[STATS_GROUP]
    sg = group.create_group(STATS_GROUP)
    n_class, n_layer = stats["count"].shape
    for name, dims in (("count", ("class", "layer")), ("mean", ("class", "layer", "hidden")),
                       ("var", ("class", "layer", "hidden"))):
        values = stats[name].values
        array = sg.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=dims,
            chunks=values.shape if values.size else None,
        )
        if values.size:
            array[...] = values
    labels = sg.create_array("class", shape=(n_class,), dtype=str, dimension_names=("class",))
    if n_class:
        labels[:] = np.asarray(stats["class"].values, dtype=str)
    layers = sg.create_array("layer", shape=(n_layer,), dtype="int64", dimension_names=("layer",))
    layers[:] = stats["layer"].values
    # Written last: a cache whose data_version matches is complete.
    commit_attrs(sg, dict(stats.attrs))


def _read_cached(path, model):
    root = open_root(path, mode="r")
    group = select_group(root, model, path)
    try:
        sg = group[STATS_GROUP]
        attrs = dict(sg.attrs)
        if attrs.get("data_version") != group.attrs.get("data_version"):
            return None
        classes = as_str_array(sg["class"][:]).tolist()
        return _stats_dataset(sg["count"][...], sg["mean"][...], sg["var"][...], classes, sg["layer"][:], attrs)
    except (KeyError, FileNotFoundError):  # none, or another process is replacing it right now
        return None


def _stats_only(path, model):
    """The statistics of a group captured with ``--stats-only`` (None for other groups)."""
    group = select_group(open_root(path, mode="r"), model, path)
    attrs = dict(group.attrs)
    if not attrs.get("stats_only"):
        return None
    classes, moments = committed_moments(group)
    if moments is None:
        raise StatsError(f"{str(path)!r} group {group.basename!r} holds no samples yet")
    count, mean, m2 = moments
    return stats_from_moments(classes, count, mean, m2, attrs["layers"], attrs, group.basename,
                              int(count[:, 0, 0].sum()), stats_only=True)


def open_stats(path: str | Path, model: str | None = None):
    """Cached statistics: :class:`xarray.Dataset` with dims (class, layer, hidden)
    and variables ``count``, ``mean``, ``var`` (float64, ddof=1).

    Raises :class:`StatsError` when none are cached or the data changed since.
    """
    stats = _stats_only(path, model)
    if stats is not None:
        return stats
    stats = _read_cached(path, model)
    if stats is None:
        raise StatsError(
            f"no up-to-date statistics in {str(path)!r}; run 'actstore stats --store {path}'"
        )
    return stats

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
import itertools
import threading
from pathlib import Path

import numpy as np

from .._dask import scheduler_context
from ..errors import StatsError
from ..moments import Moments, _block_state, chan_merge, tensor_class_moments, window_moments
from ..stores.binding import manifest_of
from ..stores.chunks import ChunkScratch, LocalChunks, local_chunks
from ..stores.group import StoreGroup
from ..stores.integrity import damage_located, refuse_non_finite
from ..stores.moments import (
    committed_moments,
    group_stats,
    read_stats_cache,
    write_stats_cache,
)
from ..stores.reader import class_codes
from ..stores.roots import open_root
from ..stores.schema import ACTS, BFLOAT16, MOMENTS, bfloat16_values

__all__ = ["Moments", "chan_merge", "chunk_moments", "class_moments", "compute_stats", "group_statistics", "moments",
           "open_stats", "scheduler_context", "tensor_class_moments", "window_moments"]


TASKS = 32  # the fused pass makes at least this many tasks where the store has that many chunks


def _moment_chunk(x: np.ndarray, axis, keepdims: bool = True, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return x
    # A block state (1, 4, ...) -> the {"n", "mean", "m2", "shift"} dict the merges work on.
    return {"n": x[:, 0], "mean": x[:, 1], "m2": x[:, 2], "shift": x[:, 3]}


def _shifted_merge(a: dict, b: dict) -> dict:
    """:func:`chan_merge` of two states centred on different shifts, in ``a``'s frame: ``b``'s
    mean moves by the difference of the shifts (two samples of the same data, so the
    subtraction is exact, Sterbenz) and the merge then sees small centred means only."""
    moved = {"n": b["n"], "mean": b["mean"] + (b["shift"] - a["shift"]), "m2": b["m2"]}
    return {**chan_merge(a, moved), "shift": a["shift"]}


def _moment_combine(pairs, axis, keepdims: bool = True, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return pairs
    if isinstance(pairs, dict):
        return pairs
    state = None
    for pair in pairs:
        pair = _moment_combine(pair, axis, keepdims) if isinstance(pair, list) else pair
        state = pair if state is None else _shifted_merge(state, pair)
    return state


def _moment_agg(pairs, axis, keepdims: bool = False, computing_meta: bool = False, **kwargs):
    if computing_meta:
        return pairs
    state = _moment_combine(pairs, axis, keepdims)
    # (count, mean, m2) stacked on a new leading axis: (3, n_classes, ...); the shift added back once.
    return np.stack([state["n"][0], state["mean"][0] + state["shift"][0], state["m2"][0]])


def _block_moments(block: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """:func:`_block_state` of one block centred on the block's own first row:
    ``(1, 4, n_classes, ...)``: n, mean (centred), M2 and the centre (the same for every class).

    Centring on a sample of the block keeps the digits of activations with a large common
    offset in the sums, and needs nothing from any other block (no read of the data before the
    pass for a global centre); :func:`_shifted_merge` brings the centres together."""
    shift = np.asarray(block[0], dtype=np.float64) if block.shape[0] else np.zeros(block.shape[1:])
    state = _block_state(block, codes, shift, n_classes)
    return np.concatenate([state, np.broadcast_to(shift, state[:, :1].shape)], axis=1)


_SCRATCH = threading.local()


def _thread_scratch() -> ChunkScratch:
    """This thread's chunk read buffers (a dask worker thread reads one chunk at a time); kept
    for the thread's life, two chunks' worth (5 MiB each for 2048 x 640 float32)."""
    scratch = getattr(_SCRATCH, "buffers", None)
    if scratch is None:
        scratch = _SCRATCH.buffers = ChunkScratch()
    return scratch


def _chunks_moments(files: LocalChunks, index: tuple[slice, ...], codes: np.ndarray, n_classes: int,
                    bfloat16: bool) -> np.ndarray:
    """:func:`_block_moments` of the part ``index`` of the chunk files ``files``, every chunk in it
    read, verified, decoded and reduced in turn in this one task, so that no block travels
    between tasks and one chunk at a time is in memory: ``(1, 4, n_classes, ...)``."""
    shape = [s.stop - s.start for s in index[1:]]
    out = np.empty((1, 4, n_classes, *shape))
    spans = [[slice(lo, min(lo + c, s.stop)) for lo in range(s.start, s.stop, c)]
             for s, c in zip(index[1:], files.chunks[1:])]
    scratch = _thread_scratch()
    for part in itertools.product(*spans):
        block = files.read((index[0], *part), scratch)  # reduced before the next read reuses it
        if bfloat16:
            block = bfloat16_values(block)
        where = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, index[1:]))
        out[(slice(None), slice(None), slice(None), *where)] = _block_moments(block, codes, n_classes)
    return out


def _reduce_states(states, split_every: int | None):
    """Merge the block states ``(blocks, 4, n_classes, ...)`` along the first axis in dask's
    reduction tree: ``(3, n_classes, ...)``."""
    import dask.array as da

    return da.reduction(
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
        meta=np.empty((0,) * (states.ndim - 1), dtype=np.float64),
    )


def class_moments(x, codes, n_classes: int, split_every: int | None = None):
    """Lazy ``(3, n_classes, ...)`` float64 dask array: count, mean and M2 per class.

    ``x: (sample, ...)`` (dask or numpy), ``codes: (sample,)`` integer class of
    each sample in ``[0, n_classes)``. One pass over ``x``: each block is
    reduced to per-class partial states (:func:`_block_moments`), which
    ``dask.array.reduction`` merges in a tree (:func:`chan_merge`).
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
    states = da.blockwise(
        _block_moments, "isk" + trailing,
        x, "i" + trailing,
        codes_da, "i",
        new_axes={"s": 4, "k": n_classes},
        adjust_chunks={"i": 1},
        n_classes=n_classes,
        dtype=np.float64,
        meta=np.empty((0,) * (x.ndim + 2), dtype=np.float64),
    )
    return _reduce_states(states, split_every)


def chunk_moments(files: LocalChunks, n: int, codes, n_classes: int, bfloat16: bool = False,
                  split_every: int | None = None):
    """:func:`class_moments` of the first ``n`` rows of the chunk files ``files`` (a local store's
    ``acts``, :mod:`.stores.chunks`): each task reads, verifies, decodes and reduces chunk files in
    turn (``bfloat16``: the files hold bfloat16 bits), all of a chunk of rows where the store has
    :data:`TASKS` such chunks, else the layers split into groups. Against reading through a dask
    array and reducing in a second task, no block stays in memory between tasks and there are
    many fewer tasks to schedule (issue 21: dask's cost per task, not the bytes, set the speed)."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != (n,):
        raise ValueError(f"codes must have shape ({n},), got {codes.shape}")
    if n == 0:
        raise StatsError("no samples to compute statistics of")
    if files.ndim < 2:
        raise ValueError(f"chunk_moments reads (sample, layer, ...) chunk files, not shape {files.shape}")
    rows, layers, n_layers = files.chunks[0], files.chunks[1], files.shape[1]
    row_spans = [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]
    # All of a row block's chunks in one task where there are rows enough to keep every worker
    # busy (TASKS tasks at least); else its layer chunks split into that many groups.
    layer_chunks = -(-n_layers // layers)
    n_groups = min(layer_chunks, -(-TASKS // len(row_spans)))
    bounds = [min(n_layers, layers * (i * layer_chunks // n_groups)) for i in range(n_groups + 1)]
    rest = tuple(slice(0, size) for size in files.shape[2:])
    name = "welford-chan-states-" + tokenize(files, n, codes, n_classes, bfloat16)
    graph = {(name, i, 0, 0, j, *(0,) * len(rest)): (
        _chunks_moments, files, (slice(lo, hi), slice(a, b), *rest), codes[lo:hi], n_classes, bfloat16)
        for i, (lo, hi) in enumerate(row_spans) for j, (a, b) in enumerate(zip(bounds, bounds[1:]))}
    chunks = ((1,) * len(row_spans), (4,), (n_classes,), tuple(b - a for a, b in zip(bounds, bounds[1:])),
              *((size,) for size in files.shape[2:]))
    states = da.Array(HighLevelGraph.from_collections(name, graph, dependencies=()), name, chunks,
                      meta=np.empty((0,) * (files.ndim + 2), dtype=np.float64))
    return _reduce_states(states, split_every)


def moments(x, axis: int = 0, split_every: int | None = None):
    """Lazy ``(3, ...)`` float64 dask array: count, mean and M2 of ``x`` along ``axis``."""
    import dask.array as da

    x = x if isinstance(x, da.Array) else da.asarray(x)
    x = da.moveaxis(x, axis, 0)
    return class_moments(x, np.zeros(x.shape[0], dtype=np.int64), 1, split_every)[:, 0]


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
    :func:`open_stats`. ``model`` is the model group (or model id).

    >>> stats = compute_stats("acts.zarr")
    >>> stats["mean"].dims, stats["count"].sel(layer=2).values.tolist()
    (('class', 'layer', 'hidden'), [7, 7])
    """
    store = StoreGroup.open(path, model)  # opened once for every read below
    return group_statistics(store, scheduler=scheduler, force=force, split_every=split_every, progress=progress)


def group_statistics(store: StoreGroup, *, scheduler: str | None = None, force: bool = False,
                     split_every: int | None = None, progress: bool = False):
    """:func:`compute_stats` of an opened group."""
    group, path = store.group, store.location
    known = _stats_only(store) if store.spec.stats_only else None
    if known is None and not force:
        known = read_stats_cache(group, path)
    if known is not None:
        return known
    moments = group_moments(store, scheduler=scheduler, split_every=split_every, progress=progress)
    stats = group_stats(moments, dict(group.attrs), group.basename)
    cache_stats(path, group.basename, stats)
    return stats


def group_moments(store: StoreGroup, *, scheduler: str | None = None, split_every: int | None = None,
                  progress: bool = False) -> Moments:
    """Per-class moments of the rows of an opened group (one streaming Dask pass)."""
    import dask

    group, path = store.group, store.location
    n = int(group.attrs["n_samples"])  # a snapshot: rows appended meanwhile are not in it
    if n == 0:
        raise StatsError(f"{str(path)!r} group {group.basename!r} holds no samples yet")
    classes, codes = class_codes(group, path, n)
    # A wide merge tree: the partial states are small and their merges cheap.
    split_every = split_every or 16
    # each chunk checked against its place (.stores.binding), a damaged one named in the error
    files = local_chunks(group[ACTS], where=(str(path), group.basename), entries=manifest_of(group.attrs, ACTS))
    if files is not None:  # a local store: each task reads, checks and reduces chunk files itself
        lazy = chunk_moments(files, n, codes, len(classes), store.spec.dtype == BFLOAT16, split_every)
    else:
        lazy = class_moments(store.dataset(coords=()).acts.data, codes, len(classes), split_every)
    progress_bar = contextlib.nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        progress_bar = ProgressBar()
    with scheduler_context(scheduler), progress_bar, damage_located(group, path):
        (stacked,) = dask.compute(lazy)
    refuse_non_finite(group, path, stacked)  # a missing chunk reads as NaN
    return Moments.from_stacked([str(c) for c in classes], stacked)


def cache_stats(path, group_name: str, stats) -> bool:
    """Cache ``stats`` in group ``group_name`` of the store at ``path`` (opened for writing)."""
    return write_stats_cache(path, open_root(path, mode="a")[group_name], stats)


def _stats_only(store: StoreGroup):
    """The statistics of a group captured with ``stats_only`` (its committed moments)."""
    group, path = store.group, store.location
    with damage_located(group, path, MOMENTS):
        moments = committed_moments(group)
    if moments is not None:
        refuse_non_finite(group, path, moments.stacked(), MOMENTS)
    if moments is None:
        raise StatsError(f"{str(path)!r} group {group.basename!r} holds no samples yet")
    return group_stats(moments, dict(group.attrs), group.basename, stats_only=True)


def open_stats(path: str | Path, model: str | None = None):
    """Cached statistics: :class:`xarray.Dataset` with dims (class, layer, hidden)
    and variables ``count``, ``mean``, ``var`` (float64, ddof=1).

    Raises :class:`StatsError` when none are cached or the data changed since.

    >>> stats = open_stats("acts.zarr")
    >>> stats["class"].values.tolist(), stats["var"].sel(layer=1).shape
    (['neg', 'pos'], (2, 32))
    """
    store = StoreGroup.open(path, model)
    if store.spec.stats_only:
        return _stats_only(store)
    stats = read_stats_cache(store.group, path)
    if stats is None:
        raise StatsError(
            f"no up-to-date statistics in {str(path)!r}; run 'actstore stats --store {path}'"
        )
    return stats

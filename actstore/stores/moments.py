"""Moments kept in a group: the running moments of a stats-only group and the
statistics cache (``stats/``) of any group, read and written as
:class:`actstore.moments.Moments` and statistics datasets."""

from __future__ import annotations

import os
import uuid
import warnings

import numpy as np

from ..errors import DamagedStoreError, StoreError
from ..moments import Moments, stats_dataset
from .chunkfiles import remove_stray_partials
from .integrity import decode_problem
from .lock import WriterLock
from .reader import as_str_array
from .schema import MOMENTS, STATS_GROUP, CaptureSpec, child, commit_attrs, small_compressors

_CACHE_LOCK_WAIT_S = 10.0


def committed_moments(group) -> Moments | None:
    """A stats-only group's committed moments, from the buffer its attributes name;
    None before the first commit."""
    attrs = group.attrs
    classes = list(attrs.get("moments_classes", []))
    if not classes:
        return None
    name = MOMENTS[int(attrs["moments_buffer"])]
    array = child(group, name)
    if array is None:
        raise DamagedStoreError(f"group {group.basename!r}: its attributes name moments of classes {classes}, but "
                                f"array {name!r} is missing; the statistics-only group's moments are lost: capture "
                                "again (`actstore verify` checks a whole store)")
    return Moments.from_stacked(classes, array[...])


_STATS_READ_TRIES = 5


def read_stats_cache(group, path=None):
    """The group's cached statistics dataset if they are of its current data, else None.

    A cache replaced while it is read (:func:`write_stats_group`) is read again
    from the one now current; a damaged one (checksum, missing chunk, counts that are not
    the group's rows) is reported with a warning and treated as absent, so that
    :func:`actstore.compute_stats` recomputes and replaces it.
    """
    current = None
    for _ in range(_STATS_READ_TRIES):
        try:
            sg = group[STATS_GROUP]
        except KeyError:
            return None
        current = sg.attrs.get(STATS_CURRENT)
        try:
            cache = sg if current is None else sg[current]  # None: the first layout
            attrs = dict(cache.attrs)
            if attrs.get("data_version") != group.attrs.get("data_version"):
                return None
            stats, problem = _read_cache_arrays(cache, attrs, group)
        except (KeyError, FileNotFoundError):  # being replaced right now: read the new one
            continue
        if problem is None:
            return stats
        if _current_cache(group) != current:  # replaced while we read it: read the new one
            continue
        where = f" of store {str(path)!r}" if path is not None else ""
        warnings.warn(f"the cached statistics{where} group {group.basename!r} are damaged ({problem}); "
                      "recomputing them", stacklevel=3)
        return None
    return None


def _current_cache(group):
    try:
        return group[STATS_GROUP].attrs.get(STATS_CURRENT)
    except KeyError:
        return None


def _read_cache_arrays(cache, attrs: dict, group):
    """(statistics, None), or (None, what is damaged)."""
    values = {}
    for name in ("count", "mean", "var", "class", "layer"):
        array = cache[name]
        try:
            values[name] = array[...]
        except (KeyError, FileNotFoundError):
            raise
        except Exception as err:  # a codec's error: the chunk does not decode
            return None, f"array {name!r}: {decode_problem(err)}"
    count, mean, var = values["count"], values["mean"], values["var"]
    if count.ndim != 2 or mean.shape != var.shape or mean.shape[:2] != count.shape:
        return None, f"arrays of shapes {count.shape}, {mean.shape}, {var.shape} do not fit together"
    several = np.broadcast_to(count[..., None] >= 2, var.shape)
    # the variance of a class of one row is NaN (0/0), of every other class finite and >= 0
    if not (np.all(np.isfinite(mean)) and np.all(np.where(several, np.isfinite(var) & (var >= 0), True))):
        return None, "non-finite or negative means or variances: a missing or damaged chunk"
    rows = int(attrs.get("n_samples", -1))
    if not group.attrs.get("stats_only") and rows != int(group.attrs.get("n_samples", -2)):
        return None, f"they count {rows} rows, the group holds {group.attrs.get('n_samples')}"
    if np.any(count < 0) or np.any(count.sum(axis=0) != rows):
        return None, f"class counts {count.tolist()} do not add up to the {rows} rows"
    classes = as_str_array(values["class"]).tolist()
    if "" in classes:
        return None, "a class label is missing"
    return stats_dataset(count, mean, var, classes, values["layer"], attrs), None


def stats_cache_state(group) -> str:
    """``none``, ``stale`` (of older data), ``ok`` or ``damaged: <what>`` (for ``actstore verify``)."""
    try:
        sg = group[STATS_GROUP]
        current = sg.attrs.get(STATS_CURRENT)
        cache = sg if current is None else sg[current]
        attrs = dict(cache.attrs)
        if attrs.get("data_version") != group.attrs.get("data_version"):
            return "stale"
        _, problem = _read_cache_arrays(cache, attrs, group)
    except (KeyError, FileNotFoundError):
        return "none"
    return "ok" if problem is None else f"damaged: {problem}"


def write_stats_cache(path, group, stats) -> bool:
    """Replace ``group``'s cached statistics (``group`` opened for writing; ``path`` its store).

    One writer at a time: a process that finds another one writing leaves it to
    them, since theirs are as valid for their data. Returns whether it wrote.
    """
    lock = WriterLock(path, f"{group.basename}.stats-cache")
    try:
        lock.acquire(wait=_CACHE_LOCK_WAIT_S)
    except StoreError:
        return False
    try:
        _clear_cache_leftovers(group)
        write_stats_group(group, stats)
    finally:
        lock.release()
    return True


def _clear_cache_leftovers(group) -> None:
    """What a write of a local group's statistics cache killed before its rename left (the caller
    holds the cache's lock)."""
    root = getattr(group.store, "root", None)
    if root is not None:
        remove_stray_partials(os.path.join(str(root), *group.path.split("/")), (STATS_GROUP,), own=False)


def clear_cache_leftovers(path, group) -> None:
    """:func:`_clear_cache_leftovers` under the cache's lock, if no one else holds it (then they may
    be writing the cache, and their next write clears them)."""
    lock = WriterLock(path, f"{group.basename}.stats-cache")
    try:
        lock.acquire(wait=0)
    except StoreError:
        return
    try:
        _clear_cache_leftovers(group)
    finally:
        lock.release()


def group_stats(moments: Moments, group_attrs: dict, group_name: str, **extra):
    """The statistics dataset of ``moments`` with the provenance of its group."""
    spec = CaptureSpec.from_attrs(group_attrs)
    attrs = {"model_id": spec.model_id, "model_fingerprint": spec.model_fingerprint,
             "data_version": group_attrs["data_version"], "position": spec.position, "group": group_name,
             "n_samples": moments.total, "ddof": 1, "site": spec.site, **extra}
    return moments.to_dataset(spec.layers, attrs)


def counts_of(moments: Moments) -> dict[str, int]:
    """Rows per class."""
    return {c: int(np.asarray(moments.n)[i].reshape(-1)[0]) for i, c in enumerate(moments.classes)}


def cache_capture_moments(writer, moments: Moments) -> bool:
    """Cache statistics accumulated during a capture for the writer's group.

    Written only if they cover exactly the committed rows (else nothing is
    written and the next :func:`compute_stats` makes its pass). Returns whether
    they were written.
    """
    attrs = dict(writer.group.attrs)
    if moments.total != int(attrs["n_samples"]):
        return False
    stats = group_stats(moments, attrs, writer.group.basename, computed_by="capture")
    return write_stats_cache(writer.path, writer.group, stats)


def cached_moments(group) -> Moments | None:
    """The moments of ``group``'s up-to-date cached statistics, or None."""
    stats = read_stats_cache(group)
    return None if stats is None else Moments.from_dataset(stats)


def _create_arrays(group, arrays: dict[str, dict]) -> None:
    """Create the small arrays ``arrays`` (name -> ``create_array`` arguments) in ``group`` concurrently:
    one wait on zarr's event loop for all of them rather than one each (a statistics cache is
    five arrays; issue 21 measured the waits, not the bytes, as its cost)."""
    import asyncio

    from zarr.core.sync import sync

    async def create_all():
        await asyncio.gather(*(group._async_group.create_array(name, compressors=small_compressors(), **kwargs)
                               for name, kwargs in arrays.items()))

    sync(create_all())


STATS_CURRENT = "current"  # attribute of stats/ naming the subgroup that holds the cache


def write_stats_group(group, stats) -> str:
    """Write the statistics dataset ``stats`` beside ``group``'s cached ones and switch to it.

    The new cache goes to a new subgroup ``stats/<version>/`` (arrays, then its attrs in the
    same write that creates it), then ``stats/``'s attribute ``current`` switches to it: ONE
    metadata write, so a reader sees the old cache or the new one, never a mix, and a kill at
    any point leaves the previous cache in place. Caches older than the previous one are
    deleted afterwards (the previous one stays for readers still reading it). A cache of the
    first layout (arrays directly in ``stats/``, written before this switch) is replaced. Returns the subgroup's name.
    """
    try:
        sg = group[STATS_GROUP]
    except KeyError:
        sg = None
    if sg is not None and STATS_CURRENT not in sg.attrs:  # the first layout: replace it once
        del group[STATS_GROUP]
        sg = None
    if sg is None:
        sg = group.create_group(STATS_GROUP)
    previous = sg.attrs.get(STATS_CURRENT)
    name = f"v{uuid.uuid4().hex[:16]}"
    cache = sg.create_group(name, attributes=dict(stats.attrs))
    n_class, n_layer = stats["count"].shape
    arrays = {}  # name -> create_array arguments; each array is created with its values
    for array_name, dims in (("count", ("class", "layer")), ("mean", ("class", "layer", "hidden")),
                             ("var", ("class", "layer", "hidden"))):
        values = stats[array_name].values
        arrays[array_name] = dict(dimension_names=dims, chunks=values.shape if values.size else None,
                                  fill_value=np.nan if values.dtype.kind == "f" else -1,
                                  **({"data": values} if values.size else
                                     {"shape": values.shape, "dtype": values.dtype}))
    # zarr's variable-length string; numpy < 2 (the peers' venv) has no StringDType to pass the
    # labels as data, so there the array is created empty and written after
    string_dtype = getattr(np.dtypes, "StringDType", None)
    labels = np.asarray(stats["class"].values, dtype=string_dtype() if string_dtype else str)
    with_data = bool(n_class) and string_dtype is not None
    arrays["class"] = dict(dimension_names=("class",),
                           **({"data": labels} if with_data else {"shape": (n_class,), "dtype": str}))
    layers = np.asarray(stats["layer"].values, dtype="int64")
    arrays["layer"] = dict(dimension_names=("layer",), fill_value=-1,
                           **({"data": layers} if n_layer else {"shape": (0,), "dtype": "int64"}))
    _create_arrays(cache, arrays)
    if n_class and not with_data:
        cache["class"][:] = labels
    commit_attrs(sg, {STATS_CURRENT: name})
    for old, _ in list(sg.groups()):
        if old not in (name, previous):
            _delete_member(sg, old)
    return name


def _delete_member(group, name: str) -> None:
    """Delete ``group``'s member ``name``: the folder itself in a local store (zarr's delete lists
    and removes every key on its event loop, 50 ms for a statistics cache), else through zarr."""
    import shutil

    from zarr.storage import LocalStore

    if isinstance(group.store, LocalStore) and not group.store.read_only:
        shutil.rmtree(os.path.join(str(group.store.root), *group.path.split("/"), name))
    else:
        del group[name]

"""The lazy reader: a model group as a labeled, dask-backed xarray dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .binding import MANIFEST, manifest_of
from .chunks import dask_array, local_chunks, refuse_irregular_files
from .integrity import damage_located, refuse_fill_values
from .roots import open_root, select_group
from .schema import ACTS, BFLOAT16, LATER_COORDS, SAMPLE_COORDS, bfloat16_values


def as_str_array(values) -> np.ndarray:
    """Zarr returns numpy StringDType for string arrays; xarray wants fixed-width ``U``."""
    values = np.asarray(values)
    if values.dtype.kind == "T":  # a vectorised cast needs the width
        width = int(np.strings.str_len(values).max()) if values.size else 1
        return values.astype(f"<U{max(width, 1)}")
    return values.astype(str)


def read_coord(array, n: int, start: int = 0) -> np.ndarray:
    refuse_irregular_files(array)  # zarr would open a FIFO in a chunk's place and wait for ever
    values = array[start:n]
    if array.dtype.kind in {"T", "U", "O"}:
        return as_str_array(values)
    return np.asarray(values)


def sample_coord(group, path: str | Path, name: str, n: int, start: int = 0, files=None) -> np.ndarray:
    """Values ``start`` to ``n`` of the per-sample coordinate ``name``, refused (naming the store,
    group and array) where a chunk is damaged or missing; read from its chunk files ``files``
    (:func:`.chunks.local_chunks`) where given, else through zarr."""
    with damage_located(group, path, (name,)):
        values = read_coord(group[name], n, start) if files is None else files.read((slice(start, n),))
    refuse_fill_values(group, path, name, values)
    return values


def class_codes(group, path: str | Path, n: int, rows: int = 1 << 17) -> tuple[list[str], np.ndarray]:
    """The classes of the first ``n`` samples, sorted, and each sample's index into them (int64):
    ``np.unique(sample_coord(..., "class", n), return_inverse=True)``, read ``rows`` samples at a
    time so that the labels of a large store are never all in memory at once as strings. A local
    store's chunk files are read directly (checksum verified; :mod:`.chunks`) and factorized by
    hashing: zarr's own read, which turned each label into a numpy string to sort, took twice as
    long at 5 GB (issue 21)."""
    import pandas as pd

    files = local_chunks(group["class"], strings=True, where=(str(path), group.basename),
                         entries=manifest_of(group.attrs, "class"))
    codes = np.empty(n, dtype=np.int64)
    seen: dict[str, int] = {}  # class -> its code in order of first appearance
    for lo in range(0, n, rows):
        values = sample_coord(group, path, "class", min(n, lo + rows), lo, files)
        if files is None:
            names, inverse = np.unique(values, return_inverse=True)
        else:
            inverse, names = pd.factorize(values)
        lookup = np.array([seen.setdefault(str(c), len(seen)) for c in names], dtype=np.int64)
        codes[lo:lo + len(values)] = lookup[inverse.reshape(-1)]
    classes = sorted(seen)
    renumber = np.empty(len(seen), dtype=np.int64)
    renumber[[seen[c] for c in classes]] = np.arange(len(classes))
    return classes, renumber[codes]


def open_store(path: str | Path, model: str | None = None, coords: tuple[str, ...] | None = None):
    """The activations of one model as a lazy, dask-backed :class:`xarray.Dataset`.

    ``acts (sample, layer, hidden)`` reads nothing until computed; per-sample
    coordinates ``class``, ``pair_id``, ``text_hash``, ``text_index``,
    ``token_index``, ``question``, ``order`` (or only those named in ``coords``; a group
    captured before ``question``/``order`` existed has neither) and the ``layer``
    coordinate are loaded (they are small, about 1/1000 of ``acts``). The
    dataset is a snapshot: the first ``n_samples`` rows committed when it was
    opened, whatever a writer appends meanwhile.
    Example::

        ds = open_store("acts.zarr")
        ds.acts.sel(layer=6).where(ds["class"] == "pos", drop=True).mean("sample")

    >>> ds = open_store("acts.zarr")
    >>> ds["acts"].dims, ds["acts"].sel(layer=2).shape
    (('sample', 'layer', 'hidden'), (14, 32))
    >>> sorted(set(ds["class"].values.tolist()))
    ['neg', 'pos']
    """
    return group_dataset(select_group(open_root(path, mode="r"), model, path), path, coords)


def group_dataset(group, path: str | Path, coords: tuple[str, ...] | None = None):
    """:func:`open_store` of an opened group (``path``: its store, recorded in the attrs)."""
    import xarray as xr

    attrs = dict(group.attrs)
    n = int(attrs["n_samples"])
    acts_array = group[ACTS]
    # a local store's chunk files read directly (.chunks), each checked against its place (.binding);
    # a damaged or missing chunk is named wherever the array is computed
    acts = dask_array(acts_array, where=(str(path), group.basename), entries=manifest_of(attrs, ACTS))[:n]
    if attrs.get("dtype") == BFLOAT16:  # stored as its uint16 bits (zarr v3 has no bfloat16)
        acts = acts.map_blocks(bfloat16_values, dtype=np.float32)
    names = [n for n in SAMPLE_COORDS if n not in LATER_COORDS or n in group] if coords is None else coords
    unknown = sorted(set(names) - set(SAMPLE_COORDS))
    if unknown:
        raise StoreError(f"unknown coordinate(s) {unknown}; a store has {sorted(SAMPLE_COORDS)}")
    missing = [n for n in names if n in LATER_COORDS and n not in group]
    if missing:
        raise StoreError(f"store {str(path)!r} group {group.basename!r} has no coordinate(s) {missing}: it was "
                         "captured before actstore recorded them (every row is as written: question = pair_id, "
                         "order 0)")
    loaded: dict[str, Any] = {"layer": ("layer", np.asarray(group["layer"][:]))}
    for name in names:
        loaded[name] = ("sample", sample_coord(group, path, name, n))
    attrs.pop("runs", None)
    attrs.pop(MANIFEST, None)
    attrs["group"] = group.basename
    attrs["store"] = str(path)
    return xr.Dataset({ACTS: (("sample", "layer", "hidden"), acts)}, coords=loaded, attrs=attrs)

"""The activation store: schema, writer and lazy reader (Zarr v3).

Layout (one group per model, named by :func:`actstore.models.safe_group_name`)::

    store.zarr/                      attrs: actstore = {kind, schema_version}
      <model-group>/                 attrs: see GROUP_ATTRS below
        acts       (sample, layer, hidden) float32|float16, chunks (S, 1, hidden)
        layer      (layer,)  int64   real block numbers, e.g. [2, 6, 10]
        class      (sample,) string  class label ("pos", "neg", ...)
        pair_id    (sample,) int64   pairs a pos with its neg (unique across runs)
        text_hash  (sample,) string  16 hex digits of BLAKE2b of the text
        text_index (sample,) int64   index of the text in this group (0, 1, ...)
        token_index(sample,) int64   token position among real tokens (-1 for mean)
        stats/                       cached statistics (see actstore.stats)
        moments0, moments1 (moment, class, layer, hidden) float64   stats-only groups
                                     (``capture --stats-only``): running n, mean, M2 per class;
                                     attrs ``moments_buffer`` names the committed one
        shards/run<r>-<i>of<n>/      a shard still being captured (same arrays; merged, then deleted)

``acts`` chunks hold one layer of S consecutive samples, S the power of two that
gives 4-8 MiB raw (2048 samples at hidden 640, float32): zarr's per-chunk cost
dominates below a few MiB (benchmarks/RESULTS.md). Compressed with Blosc LZ4 +
byte shuffle, the fastest codec to decode.

Crash safety: rows are written first, then the group's ``n_samples`` and the
run's progress are advanced together in ONE metadata write (:func:`commit_attrs`;
zarr writes each file to a temporary name and renames it into place, so that
write is atomic). Readers only look at the first ``n_samples`` rows, so rows of
an interrupted write are invisible and are overwritten on ``--resume``.

Sharded capture (``--shard i/n``): the first shard to start registers one run
for the whole file (it fixes the run's text and pair-id offsets); each shard
then writes its contiguous range of texts into its own staging group, under its
own lock, never touching the others' data. A shard that finishes takes the
group lock and appends, in shard order, every finished shard that is next in
line (a short copy: reading and writing run at hundreds of MB/s, capturing at a
few MB/s). The group's rows are therefore exactly those of a single-process
capture, in the same order, and readers only ever see whole merged windows.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import SCHEMA_VERSION, __version__
from ..errors import StoreError, StoreNotFoundError
from .lock import WriterLock

ROOT_KIND = "actstore-activations"
ACTS = "acts"
SAMPLE_COORDS = {
    "class": str,
    "pair_id": "int64",
    "text_hash": str,
    "text_index": "int64",
    "token_index": "int64",
}
STORE_DTYPES = ("float32", "float16")
SHARDS = "shards"
MOMENTS = ("moments0", "moments1")  # stats-only groups: double-buffered running moments
_CHUNK_BYTES = 8 << 20
_COORD_CHUNK = 16384
_CHUNKS_PER_TASK = 4


def sample_chunk(hidden: int, itemsize: int, target_bytes: int = _CHUNK_BYTES) -> int:
    """Samples per ``acts`` chunk: the largest power of two within ``target_bytes`` (at least 16)."""
    samples = max(1, target_bytes // (hidden * itemsize))
    return int(max(16, 1 << (samples.bit_length() - 1)))


def shard_bounds(n_texts: int, index: int, count: int) -> tuple[int, int]:
    """Texts ``[lo, hi)`` of shard ``index`` of ``count``: contiguous, sizes differing by at most one."""
    if not (count >= 1 and 0 <= index < count):
        raise StoreError(f"shard {index}/{count}: expected 0 <= i < n, e.g. 0/4 .. 3/4")
    return n_texts * index // count, n_texts * (index + 1) // count


_GROUP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_group_name(name: str) -> str:
    """A group name given by the user (``--name``): letters, digits, ``._-``, not starting with a dot."""
    if not _GROUP_NAME.fullmatch(name) or name == SHARDS:
        raise StoreError(
            f"--name {name!r}: a group name is letters, digits, '.', '_' and '-', not starting with '.' "
            "(no '/', no '..'), e.g. --name gemma-refusal"
        )
    return name


def _staging_leaf(run: int, index: int, count: int) -> str:
    return f"run{run}-{index}of{count}"


def staging_group_name(group_name: str, run: int, index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` of run ``run`` stages its rows."""
    return f"{group_name}/{SHARDS}/{_staging_leaf(run, index, count)}"


def commit_attrs(node, values: dict[str, Any]) -> None:
    """Set several attributes of a zarr group or array in ONE metadata write.

    Not ``node.attrs.update(values)``: zarr's ``Attributes`` is a MutableMapping
    whose ``update`` sets key by key, one atomic file write each, so a kill between
    two of them leaves e.g. ``n_samples`` advanced and ``runs`` not (the crash test
    caught a resumed capture writing a window twice that way).
    """
    node.update_attributes(values)


def committed_moments(group) -> tuple[list[str], np.ndarray | None]:
    """A stats-only group's classes and committed moments ``(3, class, layer, hidden)``
    float64 (n, mean, M2), from the buffer its attributes name; ``([], None)`` before
    the first commit."""
    attrs = group.attrs
    classes = list(attrs.get("moments_classes", []))
    if not classes:
        return [], None
    return classes, np.asarray(group[MOMENTS[int(attrs["moments_buffer"])]][...])


def _child(group, name: str):
    try:
        return group[name]
    except KeyError:
        return None


CODECS = ("lz4", "zstd", "none")


def _compressors(codec: str) -> list | None:
    """``acts`` compressors: ``lz4`` (Blosc LZ4 + shuffle, the default: fastest to decode of those
    that compress), ``zstd`` (plain Zstd level 1: 1.3x smaller than LZ4 on A/B pairs captured with
    ``--position all``, 1.7x slower to read), ``none`` (fastest to read; float32 activations of
    distinct texts compress only 1.03-1.10x anyway). Figures: benchmarks/RESULTS.md."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if codec == "zstd":
        return [ZstdCodec(level=1)]
    if codec == "none":
        return None
    raise StoreError(f"codec {codec!r}: expected one of {', '.join(CODECS)}")


def _is_url(path: str) -> bool:
    return "://" in path


def open_root(path: str | Path, mode: str = "r"):
    """Open the root group of a store; ``mode`` 'r' (must exist) or 'a'."""
    import zarr

    path = str(path)
    local = None if _is_url(path) else Path(path)
    if local is not None and not (local / "zarr.json").is_file():
        if mode == "r":
            raise StoreNotFoundError(
                f"{path!r} is not an actstore store (no zarr.json); create one with 'actstore capture'"
            )
        if local.exists() and (not local.is_dir() or any(local.iterdir())):
            raise StoreNotFoundError(
                f"{path!r} exists and is not a Zarr store; choose a new path for --store"
            )
    try:
        root = zarr.open_group(path, mode=mode)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{path!r} is not a Zarr store") from None
    except Exception as err:  # zarr raises several types for "not a group" (metadata, JSON, node type)
        raise StoreNotFoundError(f"{path!r} is not a Zarr v3 group: {err}") from None
    meta = root.attrs.get("actstore")
    if meta is None:
        if mode == "r" or len(list(root.keys())) > 0:
            raise StoreNotFoundError(f"{path!r} is a Zarr group but not an actstore store")
        root.attrs["actstore"] = {"kind": ROOT_KIND, "schema_version": SCHEMA_VERSION}
        meta = root.attrs["actstore"]
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{path!r} has actstore schema version {meta.get('schema_version')!r}; this actstore "
            f"({__version__}) reads version {SCHEMA_VERSION}"
        )
    return root


def model_groups(root) -> list[str]:
    return sorted(name for name, _ in root.groups())


def select_group(root, model: str | None, path: str | Path = "store"):
    """The group of ``model`` (group name or original model id); the only one if None."""
    names = model_groups(root)
    if not names:
        raise StoreError(f"{str(path)!r} holds no captured model yet")
    if model is None:
        if len(names) > 1:
            raise StoreError(
                f"{str(path)!r} holds several models ({', '.join(names)}); choose one with --model"
            )
        return root[names[0]]
    for name in names:
        group = root[name]
        if model in (name, group.attrs.get("model_id")):
            return group
    raise StoreError(f"{str(path)!r} has no model {model!r}; it holds: {', '.join(names)}")


@dataclass
class CaptureSpec:
    """What a group holds; appending must match it exactly."""

    model_id: str
    model_fingerprint: str
    model_type: str | None
    hidden_size: int
    layers: list[int]
    position: str
    dtype: str = "float32"
    stats_only: bool = False
    codec: str = "lz4"  # for a new group only; appends keep the group's codec
    extra: dict[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "actstore_version": __version__,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "layers": list(self.layers),
            "position": self.position,
            "dtype": self.dtype,
            "stats_only": self.stats_only,
            **self.extra,
        }


_MUST_MATCH = ("model_id", "model_fingerprint", "hidden_size", "layers", "position", "dtype", "stats_only")
_MATCH_DEFAULTS = {"stats_only": False}  # groups written before the key existed


class ActivationWriter:
    """Append captured rows to one model group, committing after each write.

    Use :meth:`open` (creates or validates the group), then :meth:`begin_run`
    for a source file, then :meth:`append` for each window of rows.
    """

    def __init__(self, group, path: str, lock: WriterLock | None = None):
        self.group = group
        self.path = path
        self.lock = lock
        self.acts = group[ACTS]
        self.coords = {name: group[name] for name in SAMPLE_COORDS}
        self.run: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | Path, group_name: str, spec: CaptureSpec, wait: float | None = 0) -> ActivationWriter:
        """Create or validate the group and take its writer lock (waiting up to
        ``wait`` seconds for another writer, ``None`` without limit)."""
        if spec.dtype not in STORE_DTYPES:
            raise StoreError(f"store dtype {spec.dtype!r}: expected one of {STORE_DTYPES}")
        lock = WriterLock(path, group_name).acquire(wait)
        try:
            return cls._open_locked(path, group_name, spec, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, path, group_name: str, spec: CaptureSpec, lock: WriterLock) -> ActivationWriter:
        root = open_root(path, mode="a")
        group = _child(root, group_name)
        if group is not None:
            existing = dict(group.attrs)
            if existing.get("schema_version") != SCHEMA_VERSION:
                raise StoreError(
                    f"{str(path)!r} group {group_name!r} has schema version "
                    f"{existing.get('schema_version')!r}, expected {SCHEMA_VERSION}"
                )
            new = spec.attrs()
            for key in _MUST_MATCH:
                there = existing.get(key, _MATCH_DEFAULTS.get(key))
                if there != new[key]:
                    raise StoreError(
                        f"cannot append to {str(path)!r} group {group_name!r}: {key} is "
                        f"{there!r} there but {new[key]!r} now; capture into another "
                        "store or pass --name to use another group"
                    )
        else:
            group = root.create_group(group_name)
            itemsize = np.dtype(spec.dtype).itemsize
            chunk = sample_chunk(spec.hidden_size, itemsize)
            group.create_array(
                ACTS,
                shape=(0, len(spec.layers), spec.hidden_size),
                chunks=(chunk, 1, spec.hidden_size),
                dtype=spec.dtype,
                compressors=_compressors(spec.codec),
                dimension_names=("sample", "layer", "hidden"),
                fill_value=0,
            )
            layer = group.create_array(
                "layer", shape=(len(spec.layers),), dtype="int64", dimension_names=("layer",)
            )
            layer[:] = np.asarray(spec.layers, dtype=np.int64)
            for name, dtype in SAMPLE_COORDS.items():
                group.create_array(
                    name,
                    shape=(0,),
                    chunks=(_COORD_CHUNK,),
                    dtype=dtype,
                    dimension_names=("sample",),
                    fill_value="" if dtype is str else -1,
                )
            commit_attrs(group, {**spec.attrs(), "n_samples": 0, "n_texts": 0, "next_pair_id": 0,
                                 "runs": [], "data_version": uuid.uuid4().hex})
        return cls(group, str(path), lock)

    @classmethod
    def open_existing(cls, path: str | Path, group_name: str, wait: float | None = 0) -> ActivationWriter:
        """The writer of an existing group, without a capture spec (merging shards)."""
        lock = WriterLock(path, group_name).acquire(wait)
        try:
            group = _child(open_root(path, mode="a"), group_name)
            if group is None:
                raise StoreError(f"{str(path)!r} has no group {group_name!r}")
            return cls(group, str(path), lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        """Release the writer lock (also released by the OS if the process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_samples(self) -> int:
        return int(self.group.attrs["n_samples"])

    @property
    def window_hint(self) -> int:
        """Rows per ``acts`` chunk."""
        return int(self.acts.chunks[0])

    def begin_run(self, source: str, source_sha256: str, n_texts: int, resume: bool, settings: dict) -> int:
        """Register (or, with ``resume``, find) the run for a source file.

        Returns the index of the first text still to capture (0 for a new run,
        ``n_texts`` when it is already complete).
        """
        runs = list(self.group.attrs.get("runs", []))
        same = [r for r in runs if r["source_sha256"] == source_sha256 and r["settings"] == settings]
        if same and same[-1].get("shards") and not same[-1]["complete"]:
            raise StoreError(
                f"{self.path!r} group {self.group.basename!r} is capturing {source!r} in "
                f"{same[-1]['shards']} shards; run (or rerun) the unfinished shards with --shard i/n"
            )
        if resume and same:
            self.run = same[-1]
            self._truncate_uncommitted()
            return int(self.run["texts_done"])
        self._refuse_if_unfinished(runs)
        if same:
            raise self._already_complete(source)
        self._register(runs, source, source_sha256, settings, n_texts)
        self._truncate_uncommitted()
        return 0

    def _refuse_if_unfinished(self, runs: list[dict]) -> None:
        incomplete = [r for r in runs if not r["complete"]]
        if incomplete:
            r = incomplete[0]
            how = f"its {r['shards']} shards (--shard i/n)" if r.get("shards") else "that capture with --resume"
            raise StoreError(
                f"{self.path!r} group {self.group.basename!r} holds an interrupted capture of "
                f"{r['source']!r} ({r['texts_done']}/{r['n_texts']} texts); rerun {how} to finish it first"
            )

    def _already_complete(self, source: str) -> StoreError:
        return StoreError(
            f"{self.path!r} group {self.group.basename!r} already holds a complete capture of "
            f"{source!r} (same file contents and settings); nothing to do"
        )

    def _register(self, runs: list[dict], source: str, source_sha256: str, settings: dict, n_texts: int,
                  reserve_pair_ids: int = 0, **extra) -> dict[str, Any]:
        """Append a new run record (its text and pair-id offsets fixed now) and commit it."""
        attrs = self.group.attrs
        self.run = {
            "run": len(runs), "source": source, "source_sha256": source_sha256, "settings": settings,
            "n_texts": n_texts, "texts_done": 0, "complete": n_texts == 0,
            "text_index_offset": int(attrs["n_texts"]), "pair_id_offset": int(attrs["next_pair_id"]), **extra,
        }
        commit_attrs(self.group, {"runs": [*runs, self.run], "n_texts": int(attrs["n_texts"]) + n_texts,
                                  "next_pair_id": int(attrs["next_pair_id"]) + reserve_pair_ids})
        return self.run

    def begin_sharded_run(self, source: str, source_sha256: str, n_texts: int, settings: dict, count: int,
                          max_pair_id: int) -> dict[str, Any]:
        """Register the run of a file captured in ``count`` shards, or join it.

        The first shard registers it and reserves its text indices and pair ids
        (``max_pair_id``: the largest pair id in the file); the others find it.
        """
        runs = list(self.group.attrs.get("runs", []))
        same = [r for r in runs if r["source_sha256"] == source_sha256 and r["settings"] == settings]
        joined = [r for r in same if r.get("shards") == count]
        if joined:
            self.run = joined[-1]
            return self.run
        if any(r["complete"] for r in same):
            raise self._already_complete(source)
        self._refuse_if_unfinished(runs)
        self.group.require_group(SHARDS)
        return self._register(runs, source, source_sha256, settings, n_texts, reserve_pair_ids=max_pair_id + 1,
                              shards=count, merged=0)

    def merge_shards(self, run: int) -> int:
        """Append, in order, every finished shard of ``run`` that is next in line.

        Each shard is copied window by window (each window committed, so an
        interrupted merge resumes where it stopped), then its staging group is
        deleted. Returns the number of shards merged so far.
        """
        self.run = dict(self.group.attrs["runs"][run])
        count = int(self.run["shards"])
        self._truncate_uncommitted()
        shards = self.group.require_group(SHARDS)
        for index in range(count):  # leftovers of a merge interrupted before its clean-up
            name = _staging_leaf(run, index, count)
            if index < self.run["merged"] and _child(shards, name) is not None:
                del shards[name]
        while self.run["merged"] < count:
            index = int(self.run["merged"])
            name = _staging_leaf(run, index, count)
            staging = _child(shards, name)
            lo, hi = shard_bounds(int(self.run["n_texts"]), index, count)
            if hi > lo:
                staged_runs = staging.attrs.get("runs", []) if staging is not None else []
                if not staged_runs or not staged_runs[0]["complete"]:
                    break
                self._copy_rows(staging, hi)
            self.run = {**self.run, "merged": index + 1}
            self._commit(self.n_samples, hi, -1)
            if staging is not None:
                del shards[name]
        return int(self.run["merged"])

    def _copy_rows(self, staging, hi: int) -> None:
        n = int(staging.attrs["n_samples"])
        offset = int(self.run["text_index_offset"])
        text_index = np.asarray(staging["text_index"][:n])
        first = int(np.searchsorted(text_index, offset + int(self.run["texts_done"])))
        step = self.window_hint
        a = first
        while a < n:
            # Windows end on a text boundary (with --position all a text has several rows).
            b = int(np.searchsorted(text_index, text_index[min(a + step, n) - 1], side="right"))
            coords = {name: _read_coord(staging[name], b, a) for name in SAMPLE_COORDS}
            self.append(staging[ACTS][a:b], coords, int(text_index[b - 1]) - offset + 1,
                        int(coords["pair_id"].max()))
            a = b

    def _truncate_uncommitted(self) -> None:
        # Rows past n_samples come from a write that was interrupted before its
        # commit: drop them so they are written again, once.
        n = self.n_samples
        if self.acts.shape[0] != n:
            self.acts.resize((n, *self.acts.shape[1:]))
        for array in self.coords.values():
            if array.shape[0] != n:
                array.resize((n,))

    def append(self, acts: np.ndarray, coords: dict[str, np.ndarray], texts_done: int, max_pair_id: int) -> None:
        """Write rows ``acts: (rows, layer, hidden)`` with their per-sample coords, then commit.

        ``texts_done`` is the run's new count of finished texts; ``max_pair_id``
        the largest stored pair id so far (keeps pair ids unique across runs).
        """
        assert self.run is not None, "begin_run first"
        start = self.n_samples
        stop = start + acts.shape[0]
        if acts.shape[0]:
            if self.acts.dtype == np.float16 and np.abs(acts).max() > np.finfo(np.float16).max:
                raise StoreError(
                    "activations exceed the float16 range; capture with --store-dtype float32"
                )
            self.acts.resize((stop, *self.acts.shape[1:]))
            for array in self.coords.values():
                array.resize((stop,))
            self.acts[start:stop] = acts.astype(self.acts.dtype, copy=False)
            for name, array in self.coords.items():
                array[start:stop] = coords[name]
        self._commit(stop, texts_done, max_pair_id)

    def read_moments(self) -> tuple[list[str], np.ndarray | None]:
        """See :func:`committed_moments`."""
        return committed_moments(self.group)

    def write_moments(self, classes: list[str], moments: np.ndarray, texts_done: int) -> None:
        """Commit a stats-only group's running moments (see :meth:`read_moments`).

        They go to the buffer not in use (one chunk: one atomic object), then
        the group attributes switch to it with the run's progress: an
        interruption at any point leaves the previous commit intact.
        """
        current = self.group.attrs.get("moments_buffer")
        target = 1 if current == 0 else 0
        array = _child(self.group, MOMENTS[target])
        if array is None or array.shape != moments.shape:
            array = self.group.create_array(
                MOMENTS[target], shape=moments.shape, chunks=moments.shape, dtype="float64",
                dimension_names=("moment", "class", "layer", "hidden"), overwrite=True,
            )
        array[...] = moments
        self._commit(self.n_samples, texts_done, -1, {"moments_buffer": target, "moments_classes": list(classes)})

    def _commit(self, n_samples: int, texts_done: int, max_pair_id: int, extra: dict | None = None) -> None:
        runs = list(self.group.attrs["runs"])
        self.run = {**self.run, "texts_done": texts_done, "complete": texts_done >= self.run["n_texts"]}
        runs[self.run["run"]] = self.run
        next_pair = max(int(self.group.attrs["next_pair_id"]), max_pair_id + 1)
        commit_attrs(self.group, {"n_samples": n_samples, "runs": runs, "next_pair_id": next_pair,
                                  "data_version": uuid.uuid4().hex, **(extra or {})})


def as_str_array(values) -> np.ndarray:
    """Zarr returns numpy StringDType for string arrays; xarray wants fixed-width ``U``."""
    values = np.asarray(values)
    if values.dtype.kind == "T":  # a vectorised cast needs the width
        width = int(np.strings.str_len(values).max()) if values.size else 1
        return values.astype(f"<U{max(width, 1)}")
    return values.astype(str)


def _read_coord(array, n: int, start: int = 0) -> np.ndarray:
    values = array[start:n]
    if array.dtype.kind in {"T", "U", "O"}:
        return as_str_array(values)
    return np.asarray(values)


def open_store(path: str | Path, model: str | None = None, coords: tuple[str, ...] | None = None):
    """The activations of one model as a lazy, dask-backed :class:`xarray.Dataset`.

    ``acts (sample, layer, hidden)`` reads nothing until computed; per-sample
    coordinates ``class``, ``pair_id``, ``text_hash``, ``text_index``,
    ``token_index`` (or only those named in ``coords``) and the ``layer``
    coordinate are loaded (they are small, about 1/1000 of ``acts``). The
    dataset is a snapshot: the first ``n_samples`` rows committed when it was
    opened, whatever a writer appends meanwhile.
    Example::

        ds = open_store("acts.zarr")
        ds.acts.sel(layer=6).where(ds["class"] == "pos", drop=True).mean("sample")
    """
    import dask.array as da
    import xarray as xr

    root = open_root(path, mode="r")
    group = select_group(root, model, path)
    attrs = dict(group.attrs)
    n = int(attrs["n_samples"])
    acts_array = group[ACTS]
    # Several chunks per dask task: zarr decodes them concurrently, and fewer, larger tasks
    # read 1.2x faster here (benchmarks/RESULTS.md); memory stays a few tasks' worth.
    rows = acts_array.chunks[0] * _CHUNKS_PER_TASK
    acts = da.from_zarr(acts_array, chunks=(rows, *acts_array.chunks[1:]))[:n]
    names = SAMPLE_COORDS if coords is None else coords
    unknown = sorted(set(names) - set(SAMPLE_COORDS))
    if unknown:
        raise StoreError(f"unknown coordinate(s) {unknown}; a store has {sorted(SAMPLE_COORDS)}")
    loaded: dict[str, Any] = {"layer": ("layer", np.asarray(group["layer"][:]))}
    for name in names:
        loaded[name] = ("sample", _read_coord(group[name], n))
    attrs.pop("runs", None)
    attrs["group"] = group.basename
    attrs["store"] = str(path)
    return xr.Dataset({ACTS: (("sample", "layer", "hidden"), acts)}, coords=loaded, attrs=attrs)


def _du(path: str) -> int | None:
    """Bytes stored under ``path`` (a folder or an fsspec URL); None if unknown."""
    if not _is_url(path):
        local = Path(path)
        return sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) if local.is_dir() else None
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
        return int(fs.du(root))
    except (OSError, NotImplementedError, ValueError):
        return None


def store_info(path: str | Path) -> dict[str, Any]:
    """Summary of a store: per model its layers, classes with counts, dtype, size."""
    root = open_root(path, mode="r")
    models = []
    for name in model_groups(root):
        group = root[name]
        attrs = dict(group.attrs)
        n = int(attrs["n_samples"])
        labels, counts = np.unique(_read_coord(group["class"], n), return_counts=True)
        stats_only = bool(attrs.get("stats_only", False))
        moment_classes, moments = committed_moments(group) if stats_only else ([], None)
        if moments is not None:
            # No rows: the counts are in the moments (rows per class at the first layer).
            labels, counts = moment_classes, moments[0, :, 0, 0]
            n = int(np.sum(counts))
        runs = attrs.get("runs", [])
        models.append(
            {
                "group": name,
                "model_id": attrs["model_id"],
                "layers": attrs["layers"],
                "hidden_size": attrs["hidden_size"],
                "position": attrs["position"],
                "dtype": attrs["dtype"],
                "n_samples": n,
                "classes": {str(k): int(v) for k, v in zip(labels, counts)},
                "runs": [
                    {k: r[k] for k in ("source", "texts_done", "n_texts", "complete", "shards", "merged") if k in r}
                    for r in runs
                ],
                "bytes_on_disk": _du(f"{str(path).rstrip('/')}/{name}"),
                "has_stats": stats_only or "stats" in dict(group.groups()),
                "stats_only": stats_only,
            }
        )
    return {"store": str(path), "models": models}


def merge_shards(path: str | Path, group_name: str, run: int, wait: float | None = None) -> int:
    """Merge the finished shards of ``run`` into ``group_name`` (see :meth:`ActivationWriter.merge_shards`).

    Waits for the group's writer lock (``wait`` seconds, ``None``: no limit).
    Returns how many of the run's shards are merged now.
    """
    with ActivationWriter.open_existing(path, group_name, wait) as writer:
        return writer.merge_shards(run)

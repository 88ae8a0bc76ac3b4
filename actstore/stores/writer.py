"""The writer of one model group: locking, runs, appends and commits.

Crash safety: rows are written first, then the group's ``n_samples`` and the
run's progress are advanced together in ONE metadata write (:func:`commit_attrs`;
zarr writes each file to a temporary name and renames it into place, so that
write is atomic). Readers only look at the first ``n_samples`` rows, so rows of
an interrupted write are invisible and are overwritten on ``resume``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..moments import Moments
from .binding import MANIFEST, appended_entries, merged
from .chunkfiles import remove_stray_partials
from .chunks import local_chunks
from .integrity import check_group, is_half_created
from .lock import WriterLock
from .moments import clear_cache_leftovers, committed_moments
from .roots import open_root
from .runs import RunRecord, read_runs, runs_attr
from .schema import (
    ACTS,
    CHAT_COORDS,
    LATER_COORDS,
    MOMENTS,
    NO_CHAT,
    SAMPLE_COORDS,
    SHARDS,
    STORE_DTYPES,
    CaptureSpec,
    bfloat16_bits,
    check_appendable,
    child,
    commit_attrs,
    create_group,
    moments_array,
)


def _remove_stray_partials(group, path) -> None:
    """What a write killed before its rename left in a local group's folder and in the arrays its
    writer lock covers, and in its statistics cache if that one's lock is free (not ``shards``,
    whose staging groups have writers of their own): removed."""
    root = getattr(group.store, "root", None)
    if root is not None:
        folder = os.path.join(str(root), *group.path.split("/"))
        remove_stray_partials(folder, (ACTS, "layer", *SAMPLE_COORDS, *MOMENTS))
        clear_cache_leftovers(path, group)


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
        # A group made before LATER_COORDS existed has no such arrays: its rows go on without them.
        self.coords = {name: group[name] for name in SAMPLE_COORDS if name not in LATER_COORDS or name in group}
        self.run: RunRecord | None = None
        # manifest entries of rows written but not yet committed (.binding): {array: {key: entry or None}}
        self._pending: dict[str, dict] = {}

    @classmethod
    def open(cls, path: str | Path, group_name: str, spec: CaptureSpec, wait: float | None = 0) -> ActivationWriter:
        """Create or validate the group and take its writer lock (waiting up to
        ``wait`` seconds for another writer, ``None`` without limit)."""
        if spec.dtype not in STORE_DTYPES:
            raise StoreError(f"store dtype {spec.dtype!r}: expected one of {STORE_DTYPES}")
        lock = WriterLock(path, group_name).acquire(wait)
        try:
            root = open_root(path, mode="a")
            group = child(root, group_name)
            if group is not None and not is_half_created(group):
                check_group(group, path)  # first: a damaged group is named as damaged, not as another capture
                check_appendable(group, spec, str(path), group_name)
            else:  # new, or its creation was interrupted (no rows): create it (again)
                group = create_group(root, group_name, spec)
            _remove_stray_partials(group, path)
            return cls(group, str(path), lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_existing(cls, path: str | Path, group_name: str, wait: float | None = 0) -> ActivationWriter:
        """The writer of an existing group, without a capture spec (merging shards)."""
        lock = WriterLock(path, group_name).acquire(wait)
        try:
            group = child(open_root(path, mode="a"), group_name)
            if group is None or is_half_created(group):
                raise StoreError(f"{str(path)!r} has no group {group_name!r}")
            check_group(group, path)
            _remove_stray_partials(group, path)
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

    @property
    def moments_shape(self) -> tuple[int, int]:
        """(layer, hidden) of the group's moments."""
        return len(self.group.attrs["layers"]), int(self.group.attrs["hidden_size"])

    def begin_run(self, source: str, source_sha256: str, n_texts: int, resume: bool, settings: dict,
                  new_run: bool = False) -> int:
        """Register (or, with ``resume``, find) the run for a source file.

        Returns the index of the first text still to capture (0 for a new run,
        ``n_texts`` when it is already complete).
        """
        runs = read_runs(self.group)
        same = [r for r in runs if r.matches(source_sha256, settings)]
        if not new_run:
            self._refuse_changed_settings(runs, same, source, source_sha256, settings)
        if same and same[-1].shards and not same[-1].complete:
            raise StoreError(
                f"{self.path!r} group {self.group.basename!r} is capturing {source!r} in "
                f"{same[-1].shards} shards; run (or rerun) the unfinished shards with --shard i/n"
            )
        if resume and same:
            self.run = same[-1]
            self.truncate_uncommitted()
            return int(self.run.texts_done)
        self._refuse_if_unfinished(runs)
        if same:
            raise self._already_complete(source)
        self._register(runs, source, source_sha256, settings, n_texts)
        self.truncate_uncommitted()
        return 0

    def _refuse_changed_settings(self, runs: list[RunRecord], same: list[RunRecord], source: str, source_sha256: str,
                                 settings: dict) -> None:
        """The same file's contents with other settings would add its texts again (duplicated rows): refused,
        naming what changed. A run's identity is its file and its settings."""
        other = [r for r in runs if r.source_sha256 == source_sha256 and not same]
        if not other:
            return
        before = other[-1].settings
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
        raise StoreError(f"{self.path!r} group {self.group.basename!r} already holds {source!r} captured with other "
                         f"settings ({shown}); its texts would be added again. Pass new_run=True to capture them as a "
                         "run of their own, capture into another group (name=), or use the run's settings",
                         param="new_run")

    def _refuse_if_unfinished(self, runs: list[RunRecord]) -> None:
        incomplete = [r for r in runs if not r.complete]
        if incomplete:
            r = incomplete[0]
            raise StoreError(
                f"{self.path!r} group {self.group.basename!r} holds an interrupted capture of "
                f"{r.source!r} ({r.texts_done}/{r.n_texts} texts); rerun {r.to_resume()} to finish it first"
            )

    def _already_complete(self, source: str) -> StoreError:
        return StoreError(
            f"{self.path!r} group {self.group.basename!r} already holds a complete capture of "
            f"{source!r} (same file contents and settings); nothing to do"
        )

    def _register(self, runs: list[RunRecord], source: str, source_sha256: str, settings: dict, n_texts: int,
                  reserve_pair_ids: int = 0, **sharding) -> RunRecord:
        """Append a new run record (its text and pair-id offsets fixed now) and commit it."""
        attrs = self.group.attrs
        self.run = RunRecord(
            run=len(runs), source=source, source_sha256=source_sha256, settings=settings, n_texts=n_texts,
            complete=n_texts == 0, text_index_offset=int(attrs["n_texts"]),
            pair_id_offset=int(attrs["next_pair_id"]), **sharding,
        )
        commit_attrs(self.group, {"runs": runs_attr([*runs, self.run]), "n_texts": int(attrs["n_texts"]) + n_texts,
                                  "next_pair_id": int(attrs["next_pair_id"]) + reserve_pair_ids})
        return self.run

    def begin_sharded_run(self, source: str, source_sha256: str, n_texts: int, settings: dict, count: int,
                          max_pair_id: int, new_run: bool = False) -> RunRecord:
        """Register the run of a file captured in ``count`` shards, or join it.

        The first shard registers it and reserves its text indices and pair ids
        (``max_pair_id``: the largest pair id in the file); the others find it.
        """
        runs = read_runs(self.group)
        same = [r for r in runs if r.matches(source_sha256, settings)]
        if not new_run:
            self._refuse_changed_settings(runs, same, source, source_sha256, settings)
        joined = [r for r in same if r.shards == count]
        if joined:
            self.run = joined[-1]
            return self.run
        if any(r.complete for r in same):
            raise self._already_complete(source)
        self._refuse_if_unfinished(runs)
        self.group.require_group(SHARDS)
        return self._register(runs, source, source_sha256, settings, n_texts, reserve_pair_ids=max_pair_id + 1,
                              shards=count, merged=0)

    def truncate_uncommitted(self) -> None:
        # Rows past n_samples come from a write that was interrupted before its
        # commit: drop them so they are written again, once.
        n = self.n_samples
        self._pending = {}
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
        if self.run is None:
            raise RuntimeError("ActivationWriter.append before begin_run")
        start = self.n_samples
        self.write_rows(start, acts, coords)
        self.commit(start + acts.shape[0], texts_done, max_pair_id)

    def write_rows(self, start: int, acts: np.ndarray, coords: dict[str, np.ndarray]) -> None:
        """Write rows ``start ..`` (past the committed ones: invisible until a :meth:`commit`)."""
        stop = start + acts.shape[0]
        if not acts.shape[0]:
            return
        if self.acts.dtype == np.float16 and np.abs(acts).max() > np.finfo(np.float16).max:
            raise StoreError(
                "activations exceed the float16 range; capture with store_dtype='float32'", param="store_dtype"
            )
        if self.acts.shape[0] != stop:
            self.acts.resize((stop, *self.acts.shape[1:]))
            for array in self.coords.values():
                array.resize((stop,))
        if self.acts.dtype == np.uint16 and acts.dtype != np.uint16:  # a bfloat16 group (schema.py)
            acts = bfloat16_bits(acts)
        values = acts.astype(self.acts.dtype, copy=False)
        files = local_chunks(self.acts)  # a local store's files: written directly, as zarr would (chunks.py)
        if files is not None:
            self._bind(ACTS, files.write_rows(self.acts, start, values))
        else:
            self.acts[start:stop] = values
            self._bind(ACTS, (self.acts, start, values))
        if "order" not in self.coords and np.any(np.asarray(coords.get("order", 0)) != 0):
            raise StoreError(self.no_twins_message())
        # Rows given without question/order (a caller written before them) are as written; without roles, no exchange.
        coords = {"question": coords.get("pair_id"), "order": np.zeros(stop - start, np.int64),
                  **{name: np.full(stop - start, value) for name, value in NO_CHAT.items()}, **coords}
        for name, array in self.coords.items():
            array[start:stop] = coords[name]
            self._bind(name, (array, start, coords[name]))

    def _bind(self, name: str, written: dict | tuple) -> None:
        """Record the manifest entries (:mod:`.binding`) of array ``name``'s chunks just written, to be
        committed with the rows: given (a dict), or extended from the chunks' entries for rows written
        through zarr (``(array, start, values)``). A group made before the manifest stays without one."""
        manifest = self.group.attrs.get(MANIFEST)
        if not isinstance(manifest, dict):
            return
        if isinstance(written, tuple):
            array, start, values = written
            known = {**manifest.get(name, {}), **self._pending.get(name, {})}
            written = appended_entries(array, known, start, values)
        self._pending.setdefault(name, {}).update(written)

    @property
    def holds_twins(self) -> bool:
        """Whether the group can record option-swapped twins (its ``question``/``order`` arrays)."""
        return all(name in self.coords for name in LATER_COORDS) or bool(self.group.attrs.get("stats_only"))

    @property
    def holds_roles(self) -> bool:
        """Whether the group can record chat roles and responses (its ``role``, ``response_index``,
        ``response`` arrays; groups made before them lack them)."""
        return all(name in self.coords for name in CHAT_COORDS) or bool(self.group.attrs.get("stats_only"))

    def no_twins_message(self) -> str:
        return (f"{self.path!r} group {self.group.basename!r} was created before actstore recorded option-swapped "
                "twins (it has no 'question'/'order' arrays); capture into another group (name=...) or keep the "
                "texts as written with swap_options=False (--no-swap-options)")

    def read_moments(self) -> Moments | None:
        """See :func:`actstore.stores.moments.committed_moments`."""
        return committed_moments(self.group)

    def write_moments(self, moments: Moments, texts_done: int, **run_changes) -> None:
        """Commit a stats-only group's running moments (see :meth:`read_moments`).

        They go to the buffer not in use (one chunk: one atomic object), then
        the group attributes switch to it with the run's progress: an
        interruption at any point leaves the previous commit intact.
        """
        stacked = moments.stacked()
        current = self.group.attrs.get("moments_buffer")
        target = 1 if current == 0 else 0
        array = child(self.group, MOMENTS[target])
        if array is None or array.shape != stacked.shape:
            array = moments_array(self.group, target, stacked.shape)
        array[...] = stacked
        self.commit(self.n_samples, texts_done, -1,
                    {"moments_buffer": target, "moments_classes": list(moments.classes)}, **run_changes)

    def commit(self, n_samples: int, texts_done: int, max_pair_id: int, extra: dict | None = None,
               **run_changes) -> None:
        """Advance the group to ``n_samples`` rows and the run to ``texts_done`` texts, in one write."""
        runs = read_runs(self.group)
        self.run = self.run.advanced(texts_done, **run_changes)
        runs[self.run.run] = self.run
        next_pair = max(int(self.group.attrs["next_pair_id"]), max_pair_id + 1)
        if self._pending:  # the chunks' places, committed with the rows they hold (.binding)
            extra = {**(extra or {}), MANIFEST: merged(self.group.attrs.get(MANIFEST), self._pending)}
            self._pending = {}
        commit_attrs(self.group, {"n_samples": n_samples, "runs": runs_attr(runs), "next_pair_id": next_pair,
                                  "data_version": uuid.uuid4().hex, **(extra or {})})


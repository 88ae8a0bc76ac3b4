"""Capture a contrast set into a store: plan, then run window by window with a commit after each.

:func:`capture_to_store` is what ``actstore capture`` runs. It streams window by window (memory
does not grow with the number of texts), commits after each window, and with ``resume=True``
continues an interrupted run of the same file and settings exactly where its last commit ended.

``offset`` (with ``last``) captures the token that many before the last; left
unset, an A/B set (every text ends in ``(A)``, ``(B)``, ...) is read at its
answer letter, as CAA does (offset 1, when the tokenizer makes the letter the
token before the final ``)``; else the last token, with a warning saying why).
The store records the position as ``last-<offset>``. ``window`` is the number
of texts per commit (default: 512, or 64 for ``all``).

An A/B set is captured with each pair's option-swapped twin right after it
(:func:`actstore.inputs.datasets.with_twins`: the matching answer shown once under each
letter, so the letter cancels in a mean difference question by question); the rows'
``question`` coordinate is shared by a pair and its twin, ``order`` is 0 as written
and 1 swapped, and the run's settings record ``swap_options``. ``swap_options=False``
keeps the texts as written. A set whose options cannot be parsed is refused, naming
the item, before the model loads.

``shard=(i, n)`` captures only the i-th of n contiguous slices of the texts,
into a staging group of its own (several processes or GPUs of one machine capture
one file at once without touching each other's data). A shard that finishes appends
every finished shard next in line, so once all are done the group holds the rows of a
single-process capture in the same order (values bit-identical where shard boundaries
fall on window boundaries; elsewhere texts are batched with other neighbours, which
moves values by float rounding, ~1e-7). A rerun of a shard continues it (no ``resume``
needed). The merge lock is this machine's: across machines use
:func:`~actstore.capture.capture_on_cluster`, which merges once, at the end.

``stats_only`` stores no activations: each window's per-class count, mean
and M2 are reduced on the model's device (float64) and merged into the
group's running moments (Chan et al.), committed after every window. For
contrast sets whose activations would not fit on disk (``position='all'``
on every layer); :func:`actstore.compute_stats` then reads the moments. With
``shard`` (or on a cluster) each shard keeps its own moments, and the merge
adds them to the group's in shard order (Chan et al.).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import StoreError
from ..inputs.chat import ROLES
from ..inputs.datasets import ContrastSet, needs_tokenizer, read_data, with_twins
from ..inputs.sources import TextSource
from ..models.load import LoadedModel, ModelSpec
from ..moments import Moments, window_moments
from ..stores.moments import cache_capture_moments, cached_moments
from ..stores.runs import RunRecord, shard_bounds, staging_group_name
from ..stores.schema import GroupOptions
from ..stores.shards import merge_shards
from ..stores.writer import ActivationWriter
from .ingest import OrderedWriter
from .options import CaptureOptions
from .planning import Plan, plan_capture
from .windows import Window, WindowReader


@dataclass
class CaptureReport:
    store: str
    group: str
    n_texts: int
    n_texts_captured: int
    n_samples_written: int
    n_tokens: int
    seconds: float
    skipped: int
    run: int = 0
    merged_shards: int | None = None  # sharded capture: shards of the run merged so far
    position: str | None = None  # as the store records it: last, last-1, mean, all
    note: str | None = None  # a choice made for the user (the answer letter of an A/B set)
    twins: bool = False  # an A/B set captured with its option-swapped twins
    responses: str | None = None  # on-policy capture (capture_responses): the file of the model's responses
    kept: tuple[int, int] | None = None  # on-policy capture: questions kept, of those asked

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class CaptureRequest:
    """What :func:`capture_to_store` does, as one typed value: checked on the caller's side
    before any model loads or any cluster starts."""

    model: ModelSpec | LoadedModel
    options: CaptureOptions
    group: GroupOptions


_GROUP_FIELDS = frozenset(f.name for f in fields(GroupOptions))


def capture_request(model: str | ModelSpec | LoadedModel, options: CaptureOptions | None = None,
                    group: GroupOptions | None = None, **changes) -> CaptureRequest:
    """The records of a capture: ``options`` and ``group`` (their defaults when None) with
    ``changes`` applied, each keyword to the record that has a field of that name
    (``position="all"`` to :class:`CaptureOptions`, ``store_dtype="float16"`` to
    :class:`GroupOptions`); an unknown one is a TypeError here, not on a worker. How the model
    loads is its :class:`ModelSpec`: pass one (``ModelSpec(id, dtype="bfloat16")``)."""
    unknown = sorted(set(changes) - CaptureOptions.field_names() - _GROUP_FIELDS)
    if unknown:
        raise TypeError(f"capture_to_store() got an unexpected keyword argument {unknown[0]!r} (the fields of "
                        "CaptureOptions and GroupOptions are accepted; model loading options go in a ModelSpec)")
    options = replace(options or CaptureOptions(),
                      **{key: value for key, value in changes.items() if key not in _GROUP_FIELDS})
    group = replace(group or GroupOptions(), **{key: value for key, value in changes.items() if key in _GROUP_FIELDS})
    if not isinstance(model, ModelSpec | LoadedModel):
        model = ModelSpec(model)
    return CaptureRequest(model, options, group)


def capture_to_store(model: str | ModelSpec | LoadedModel, data: str | Path | ContrastSet | TextSource,
                     store, *, options: CaptureOptions | None = None, group: GroupOptions | None = None,
                     resume: bool = False, shard: tuple[int, int] | None = None, **changes) -> CaptureReport:
    """Capture activations of ``data`` into ``store``.

    ``model`` is a hub id, a local folder, a :class:`~actstore.models.load.ModelSpec` (how it
    loads: dtype, device, GGUF file, ...) or an already :func:`load_model`-ed model; ``data`` a
    contrast set in any format (JSON, JSONL, Parquet, Arrow, a ``save_to_disk`` folder: the same
    rows give the same store, see :mod:`actstore.inputs.datasets`; fields ``text_column``,
    ``label_column``; a plain labeled dataset is read window by window) or a plain-text corpus cut
    into windows of ``max_length`` tokens (see :mod:`actstore.inputs.sources`); ``store`` a path, a
    URL or a ``zarr.Store`` (:class:`~actstore.stores.location.StoreLocation`). How texts become
    rows is ``options`` (:class:`~actstore.capture.CaptureOptions`, ``layers`` among them), how
    they are stored ``group`` (:class:`~actstore.stores.GroupOptions`); ``changes`` are fields of
    either by name (``layers="2,4", position="all", store_dtype="float16", progress=False``).

    Offsets, twins, shards and stats-only captures: see the module docstring.

    >>> report = capture_to_store(model_dir, "pairs.json", "more.zarr", layers="1,2", progress=False)
    >>> report.n_texts, report.n_samples_written, report.position
    (14, 14, 'last')
    """
    return run_capture(capture_request(model, options, group, **changes), data, store, resume=resume, shard=shard)


def run_capture(request: CaptureRequest, data, store, *, resume: bool = False, shard: tuple[int, int] | None = None,
                merge: bool = True) -> CaptureReport:
    """Run a checked :class:`CaptureRequest` (``merge=False``: a cluster's shard, merged by the
    cluster at the end)."""
    if shard is not None:
        shard_bounds(0, *shard)  # validates i/n before any work
    loaded, contrast = _load(request, data)
    plan = plan_capture(loaded, contrast, request.options, request.group)
    if shard is None:
        with ActivationWriter.open(store, plan.group_name, plan.spec) as writer:
            _check_twins_fit(writer, plan)
            start = writer.begin_run(contrast.path, contrast.sha256, len(plan.rows.texts), resume, plan.settings,
                                     new_run=request.options.new_run)
            return _RangeCapture(loaded, writer, plan, writer.run, 0, len(plan.rows.texts)).run(start, True)
    return _capture_shard(loaded, store, contrast, plan, shard, merge)


def _load(request: CaptureRequest, data) -> tuple[LoadedModel, ContrastSet | TextSource]:
    """The model and the data; everything that can be read before the model loads is (a bad file
    fails fast), a corpus is cut by the model's tokenizer."""
    options = request.options
    read = functools.partial(read_data, data, options.separator, text_column=options.text_column,
                             label_column=options.label_column, max_length=options.max_length)
    contrast = data if isinstance(data, ContrastSet | TextSource) else None if needs_tokenizer(data) else read()
    if options.swap_options and isinstance(contrast, ContrastSet) and contrast.is_ab:
        contrast = with_twins(contrast)  # a set whose options cannot be parsed fails here, before the model loads
    loaded = request.model if isinstance(request.model, LoadedModel) else request.model.load()
    if contrast is None:
        contrast = read(tokenizer=loaded.tokenizer)
    return loaded, contrast


def _check_twins_fit(writer: ActivationWriter, plan: Plan) -> None:
    """Refuse, before a run is registered, twins (or roles, responses) for a group that cannot record them."""
    if plan.settings.get("swap_options") and not writer.holds_twins:
        raise StoreError(writer.no_twins_message())
    if (plan.rows.roles is not None or plan.rows.responses is not None) and not writer.holds_roles:
        raise StoreError(f"{writer.path!r} group {writer.group.basename!r} was created before actstore recorded chat "
                         "roles and responses (it has no 'role', 'response_index', 'response' arrays); capture into "
                         "another group (name=...)", param="name")


_REGISTER_WAIT_S = 60.0


def _capture_shard(loaded, store, contrast, plan: Plan, shard, merge: bool) -> CaptureReport:
    index, count = shard
    rows = plan.rows
    # Brief hold of the group lock (other shards may be registering or merging).
    with ActivationWriter.open(store, plan.group_name, plan.spec, wait=_REGISTER_WAIT_S) as writer:
        _check_twins_fit(writer, plan)
        run = writer.begin_sharded_run(contrast.path, contrast.sha256, len(rows.texts), plan.settings, count,
                                       rows.max_pair_id(), new_run=plan.options.new_run)
    lo, hi = shard_bounds(len(rows.texts), index, count)
    if run.merged > index or run.complete:
        report = _report(store, plan.group_name, run, 0, 0, 0, 0.0, skipped=hi - lo)
    else:
        staging = staging_group_name(plan.group_name, run.run, index, count)
        with ActivationWriter.open(store, staging, plan.spec) as writer:
            start = writer.begin_run(contrast.path, contrast.sha256, hi - lo, True, plan.settings)
            report = _RangeCapture(loaded, writer, plan, run, lo, hi).run(start, track_stats=False)
    if merge:
        report.merged_shards = merge_shards(store, plan.group_name, run.run)
    return report


class _RangeCapture:
    """Capture texts ``lo .. hi-1`` of a plan into ``writer`` (its run counts texts from ``lo``).

    Text indices and pair ids are those of ``run``, the run of the whole file (for a shard, the
    group's run; its staging writer has a run of its own)."""

    def __init__(self, loaded: LoadedModel, writer: ActivationWriter, plan: Plan, run: RunRecord, lo: int, hi: int):
        self.loaded, self.writer, self.plan, self.run_record, self.lo, self.hi = loaded, writer, plan, run, lo, hi
        self.tracker: _MomentsTracker | None = None

    def run(self, start: int, track_stats: bool) -> CaptureReport:
        """Capture from ``lo + start`` on, committing after every window; the report of the range."""
        plan, writer, lo, hi = self.plan, self.writer, self.lo, self.hi
        options = plan.options.replace(window=plan.options.window or plan.options.at.window(writer.window_hint))
        self.tracker = _MomentsTracker.start(writer, plan.rows.labels, plan.stats_only, track_stats and start == 0)
        reader = WindowReader(self.loaded.model, self.loaded.tokenizer, self.loaded.blocks, tuple(plan.spec.layers),
                              options)
        bar = _progress_bar(options.progress, hi - lo, start, writer)
        n_tokens = written = 0
        t0 = time.perf_counter()
        try:
            depth = writer_depth(reader.device)
            with OrderedWriter(self.commit, depth=depth) as overlapped:
                # Written in line (depth 0), each window is consumed before the next: one buffer serves them all.
                for captured in reader.windows(plan.rows.texts[lo:hi], where=plan.rows.where[lo:hi], start=start,
                                               add_special_tokens=plan.rows.add_special_tokens,
                                               on_batch=(lambda n, _: bar.update(n)) if bar is not None else None,
                                               as_tensors=plan.stats_only,
                                               roles=None if plan.rows.roles is None else plan.rows.roles[lo:hi],
                                               reuse=depth == 0):
                    n_tokens += captured.n_tokens
                    written += len(captured.row_example)
                    # The source is read on this thread only (a lazy source holds one block at a time).
                    per_row = plan.rows.window(lo + captured.start, lo + captured.stop,
                                               captured.row_example - captured.start)
                    overlapped.put((captured, per_row))
        finally:
            if bar is not None:
                bar.close()
        self._finish(start)
        report = _report(writer.path, writer.group.path, self.run_record, hi - lo - start, written, n_tokens,
                         time.perf_counter() - t0, skipped=start)
        return replace(report, position=plan.spec.position, note=plan.offset_note,
                       twins=bool(plan.settings.get("swap_options")))

    def commit(self, item) -> None:
        """Write one window (on the writer thread, actstore.capture.ingest, while the model goes on with the next; or
        in line, :func:`writer_depth`)."""
        captured, per_row = item
        writer, tracker, run = self.writer, self.tracker, self.run_record
        if self.plan.stats_only:
            tracker.add(captured.acts, per_row["class"])
            writer.write_moments(tracker.moments, captured.stop)
            return
        coords = {
            "class": per_row["class"],
            "pair_id": per_row["pair_id"] + run.pair_id_offset,
            "question": per_row["question"] + run.pair_id_offset,
            "order": per_row["order"],
            "text_hash": per_row["text_hash"],
            "text_index": captured.row_example + self.lo + run.text_index_offset,
            "token_index": captured.row_token,
            **_chat_coords(captured, per_row),
        }
        max_pair = int(coords["pair_id"].max()) if len(coords["pair_id"]) else -1
        writer.append(captured.acts, coords, captured.stop, max_pair)
        tracker.add(captured.acts, coords["class"])

    def _finish(self, start: int) -> None:
        if start >= self.hi - self.lo:  # nothing left: the commit that completes the run, unless it is complete
            if self.writer.run.complete:  # a resume of a finished capture writes nothing (its data_version stays)
                return
            shape = (0, len(self.plan.spec.layers), self.loaded.hidden_size)
            self.writer.append(np.zeros(shape, np.float32), {}, self.hi - self.lo, -1)
        elif self.tracker.moments is not None and not self.plan.stats_only:
            cache_capture_moments(self.writer, self.tracker.moments)


_ROLE_NAMES = np.asarray([*ROLES, ""])  # code -1 (a row that is no one token) reads as ""


def _chat_coords(captured: Window, per_row: dict) -> dict[str, np.ndarray]:
    """The rows' ``role`` and ``response_index`` (where token roles were read) and ``response``
    (chat exchanges); the writer fills what is not given (no exchange)."""
    coords = {}
    if captured.row_role is not None:
        coords["role"] = _ROLE_NAMES[captured.row_role]
        coords["response_index"] = captured.row_response
    if "response" in per_row:
        coords["response"] = per_row["response"]
    return coords


def writer_depth(device) -> int:
    """Windows that may wait for the writer thread (:class:`~actstore.capture.ingest.OrderedWriter`): 1 while the
    model runs elsewhere (a GPU: the CPU is free for the writes meanwhile) or leaves cores idle; 0 (the
    windows written on this thread, between forward passes) when the model runs on the CPU with torch's
    threads on every core. There nothing is idle for a writer thread: it takes a core from torch's
    OpenMP team, whose other members then wait for the descheduled one, spinning. Measured on 2 cores
    (issue 21, 256 texts, every layer and token, quiet machine): the overlapped write made the capture
    4.1 s (wall) and 8 s (CPU) longer than a stats-only one, for 2.4 s of CPU spent writing (perf, per
    thread); written in line, a window costs what its write costs."""
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if torch.get_num_threads() >= cores else 1


def _progress_bar(show: bool, total: int, initial: int, writer: ActivationWriter):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="text", desc=f"capture {writer.group.path}")


@dataclass
class _MomentsTracker:
    """The group's moments as a capture goes: a stats-only group's running moments, or, for a
    capture of a whole file that starts from up-to-date statistics (or none), the statistics
    kept up to date as it goes (cheap next to the forward passes; ``actstore stats`` then has
    nothing left to do). ``moments`` is None when nothing is tracked."""

    moments: Moments | None

    @classmethod
    def start(cls, writer: ActivationWriter, labels, stats_only: bool, track: bool) -> _MomentsTracker:
        empty = Moments.empty(writer.moments_shape)
        if stats_only:
            committed = writer.read_moments()
            base = committed if committed is not None else empty
            # A lazy source's classes are learnt window by window (merge adds them as they come).
            classes = sorted(set(labels.tolist())) if isinstance(labels, np.ndarray) else []
            return cls(base.merge(Moments.empty(writer.moments_shape, classes)))
        if not track:
            return cls(None)
        return cls(empty if writer.n_samples == 0 else cached_moments(writer.group))

    def add(self, acts, labels: np.ndarray) -> None:
        if self.moments is None:
            return
        if isinstance(acts, np.ndarray) or acts.device.type == "cpu":
            # The fused float64 kernel: one pass, where torch's reduction makes several.
            values = acts if isinstance(acts, np.ndarray) else acts.numpy()
            self.moments = self.moments.merge(window_moments(values, labels))
        else:  # reduced on the model's device; only the moments travel
            self.moments = self.moments.add(acts, labels)


def _report(store, group_name, run: RunRecord, captured, written, n_tokens, seconds, skipped) -> CaptureReport:
    group = group_name.split("/", 1)[0]
    return CaptureReport(store=str(store), group=group, n_texts=captured + skipped, n_texts_captured=captured,
                         n_samples_written=written, n_tokens=n_tokens, seconds=seconds, skipped=skipped,
                         run=int(run.run))

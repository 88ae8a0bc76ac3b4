"""Capture a contrast set into a store: datasets + models + capture + stores.

:func:`capture_to_store` is what ``actstore capture`` runs. It streams window
by window (memory does not grow with the number of texts), commits after each
window, and with ``resume=True`` continues an interrupted run of the same file
and settings exactly where its last commit ended.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .capture import CaptureOptions, answer_letter_reason, iter_windows
from .datasets import ContrastSet, Example, needs_tokenizer, read_data, text_hash, with_twins
from .errors import ActstoreError, StoreError
from .ingest import OrderedWriter
from .models import LoadedModel, ModelSpec, parse_layers, safe_group_name, text_config
from .moments import Moments
from .sources import Column, TextSource
from .stores.runs import RunRecord, shard_bounds, staging_group_name
from .stores.schema import CaptureSpec, GroupOptions
from .stores.shards import merge_shards
from .stores.writer import ActivationWriter


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

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def format_texts(examples: list[Example], tokenizer, chat_template: bool) -> tuple[list[str], bool]:
    """The strings to tokenize, and whether the tokenizer should add special tokens.

    Without ``chat_template`` an example's ``text`` is used as is. With it, an
    A/B item becomes a user turn (question) and an assistant turn (answer);
    any other text becomes a single user turn.
    """
    if not chat_template:
        return [e.text for e in examples], True
    if getattr(tokenizer, "chat_template", None) is None:
        raise ActstoreError("chat_template: this tokenizer has no chat template", param="chat_template")
    texts = []
    for e in examples:
        if e.prompt is not None:
            messages = [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}]
        else:
            messages = [{"role": "user", "content": e.text}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    # The template already holds BOS and friends.
    return texts, False


_MODEL_FIELDS = {"gguf_file": "gguf_file", "revision": "revision", "model_dtype": "dtype", "device": "device",
                 "blocks": "blocks", "trust_remote_code": "trust_remote_code"}
_GROUP_FIELDS = ("store_dtype", "codec", "name", "stats_only")


@dataclass(frozen=True)
class CaptureRequest:
    """What :func:`capture_to_store` does, as one typed value: checked on the caller's side
    before any model loads or any cluster starts."""

    model: ModelSpec | LoadedModel
    options: CaptureOptions
    group: GroupOptions


def capture_request(model: str | ModelSpec | LoadedModel, options: CaptureOptions | None = None,
                    group: GroupOptions | None = None, **values) -> CaptureRequest:
    """The records of a capture from flat keyword arguments (``position=``, ``store_dtype=``,
    ``model_dtype=``, ...): each goes to the record that has it; an unknown one is a TypeError
    here, not on a worker."""
    routed: dict[str, dict] = {"model": {}, "options": {}, "group": {}}
    for key, value in values.items():
        if key in _MODEL_FIELDS:
            routed["model"][_MODEL_FIELDS[key]] = value
        elif key in CaptureOptions.field_names():
            routed["options"][key] = value
        elif key in _GROUP_FIELDS:
            routed["group"][key] = value
        else:
            raise TypeError(f"capture_to_store() got an unexpected keyword argument {key!r}")
    options = replace(options or CaptureOptions(), **routed["options"])
    group = replace(group or GroupOptions(), **routed["group"])
    if isinstance(model, LoadedModel):
        if routed["model"]:
            warnings.warn(f"model loading options {sorted(routed['model'])} are ignored: the model is already "
                          "loaded (the store records the dtype it is in)", stacklevel=3)
    else:
        spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
        model = replace(spec, **routed["model"])
    return CaptureRequest(model, options, group)


def capture_to_store(
    model: str | ModelSpec | LoadedModel,
    data: str | Path | ContrastSet | TextSource,
    store: str | Path,
    layers: str | list[int] = "all",
    *,
    options: CaptureOptions | None = None,
    group: GroupOptions | None = None,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    merge: bool = True,
    progress: bool = True,
    **values,
) -> CaptureReport:
    """Capture activations of ``data`` at ``layers`` of ``model`` into ``store``.

    ``model`` is a hub id, a local folder, a :class:`~actstore.models.ModelSpec` or
    an already :func:`load_model`-ed model; ``data`` a contrast-set file (see
    :mod:`actstore.datasets`), or a Hugging Face dataset on disk (Arrow, Parquet; columns
    ``text_column``, ``label_column``) or a plain-text corpus cut into windows of ``max_length``
    tokens, both read window by window (see :mod:`actstore.sources`). How texts become rows is ``options``
    (:class:`~actstore.capture.CaptureOptions`), how they are stored ``group``
    (:class:`~actstore.stores.GroupOptions`); their fields, and the model's loading
    options (``model_dtype``, ``device``, ``gguf_file``, ``blocks``, ...), may also be
    given as keywords (``position="all", store_dtype="float16"``).

    ``offset`` (with ``last``) captures the token that many before the last; left
    unset, an A/B set (every text ends in ``(A)``, ``(B)``, ...) is read at its
    answer letter, as CAA does (offset 1, when the tokenizer makes the letter the
    token before the final ``)``; else the last token, with a warning saying why).
    The store records the position as ``last-<offset>``. ``window`` is the number
    of texts per commit (default: 512, or 64 for ``all``).

    An A/B set is captured with each pair's option-swapped twin right after it
    (:func:`actstore.datasets.with_twins`: the matching answer shown once under each
    letter, so the letter cancels in a mean difference question by question); the rows'
    ``question`` coordinate is shared by a pair and its twin, ``order`` is 0 as written
    and 1 swapped, and the run's settings record ``swap_options``. ``swap_options=False``
    keeps the texts as written. A set whose options cannot be parsed is refused, naming
    the item, before the model loads.

    ``shard=(i, n)`` captures only the i-th of n contiguous slices of the texts,
    into a staging group of its own (several processes or GPUs of one machine capture
    one file at once without touching each other's data). With ``merge`` (the
    default) a shard that finishes appends every finished shard next in line, so
    once all are done the group holds the rows of a single-process capture in
    the same order (values bit-identical where shard boundaries fall on window
    boundaries; elsewhere texts are batched with other neighbours, which moves
    values by float rounding, ~1e-7). A rerun of a shard continues it (no
    ``resume`` needed). The merge lock is this machine's: across machines use
    :func:`capture_on_cluster`, which merges once, at the end.

    ``stats_only`` stores no activations: each window's per-class count, mean
    and M2 are reduced on the model's device (float64) and merged into the
    group's running moments (Chan et al.), committed after every window. For
    contrast sets whose activations would not fit on disk (``position='all'``
    on every layer); :func:`actstore.compute_stats` then reads the moments. With
    ``shard`` (or on a cluster) each shard keeps its own moments, and the merge
    adds them to the group's in shard order (Chan et al.).
    """
    request = capture_request(model, options, group, **values)
    if shard is not None:
        shard_bounds(0, *shard)  # validates i/n before any work
    options = request.options
    read = functools.partial(read_data, data, options.separator, text_column=options.text_column,
                             label_column=options.label_column, max_length=options.max_length)
    # Everything that can be read before the model loads is (a bad file fails fast); a corpus is cut by its tokenizer.
    contrast = data if isinstance(data, ContrastSet | TextSource) else None if needs_tokenizer(data) else read()
    if options.swap_options and isinstance(contrast, ContrastSet) and contrast.is_ab:
        contrast = with_twins(contrast)  # a set whose options cannot be parsed fails here, before the model loads
    loaded = request.model if isinstance(request.model, LoadedModel) else request.model.load()
    if contrast is None:
        contrast = read(tokenizer=loaded.tokenizer)
    plan = _plan(loaded, contrast, layers, request)
    if shard is None:
        with ActivationWriter.open(store, plan.group_name, plan.spec) as writer:
            _check_twins_fit(writer, plan)
            start = writer.begin_run(contrast.path, contrast.sha256, len(plan.rows.texts), resume, plan.settings)
            return _capture_range(loaded, writer, plan, writer.run, 0, len(plan.rows.texts), start,
                                  progress=progress, track_stats=True)
    return _capture_shard_range(loaded, store, contrast, plan, shard, merge, progress)



@dataclass(frozen=True)
class _Plan:
    """A capture resolved against its model and data: the rows, the group and its spec."""

    options: CaptureOptions
    group_name: str
    spec: CaptureSpec
    settings: dict
    rows: _Rows
    stats_only: bool
    offset_note: str | None


def _plan(loaded: LoadedModel, contrast: ContrastSet | TextSource, layers, request: CaptureRequest) -> _Plan:
    options, group = request.options, request.group
    layer_list = parse_layers(layers, loaded.num_layers)
    if options.max_length is None:
        options = options.replace(max_length=_context_length(loaded))
    if isinstance(contrast, TextSource):
        if options.chat_template:
            raise ActstoreError(f"{contrast.path!r}: --chat-template is for contrast-set files, not datasets or "
                                "corpora", param="chat_template")
        rows = _source_rows(contrast)
        texts, add_special = rows.texts, True
    else:
        texts, add_special = format_texts(contrast.examples, loaded.tokenizer, options.chat_template)
    offset_note = None
    if options.offset is None:
        offset, offset_note = _default_offset(options, contrast, loaded.tokenizer, texts, add_special)
        options = options.replace(offset=offset)
    extra = {"model_dtype": loaded.dtype, "num_model_layers": loaded.num_layers}
    if loaded.source_id is not None:
        extra["model_source"] = loaded.source_id
    spec = CaptureSpec(
        model_id=loaded.model_id,
        model_fingerprint=loaded.fingerprint,
        model_type=getattr(loaded.model.config, "model_type", None),
        hidden_size=loaded.hidden_size,
        layers=layer_list,
        position=options.position_name,
        dtype=group.store_dtype,
        stats_only=group.stats_only,
        codec=group.codec,
        site=options.site,
        extra=extra,
    )
    if not isinstance(contrast, TextSource):
        examples = contrast.examples
        rows = _Rows(
            texts=texts,
            labels=np.asarray([e.label for e in examples], dtype=str),
            pair_ids=np.asarray([e.pair_id for e in examples], dtype=np.int64),
            hashes=np.asarray([text_hash(t) for t in texts], dtype=str),
            where=[f"{contrast.path!r} {e.where}" + (" (its option-swapped twin)" if e.order else "")
                   for e in examples],
            add_special_tokens=add_special,
            questions=np.asarray([e.question_id for e in examples], dtype=np.int64),
            orders=np.asarray([e.order for e in examples], dtype=np.int64),
        )
    settings = {"separator": options.separator, "chat_template": options.chat_template,
                "max_length": options.max_length}
    # Recorded only when given, so that runs of contrast-set files made before these existed still match.
    settings.update({name: getattr(options, name) for name in ("text_column", "label_column")
                     if getattr(options, name) is not None})
    if isinstance(contrast, ContrastSet) and contrast.swapped:
        settings["swap_options"] = True
    group_name = group.name if group.name is not None else safe_group_name(loaded.model_id)
    return _Plan(options, group_name, spec, settings, rows, group.stats_only, offset_note)


def _check_twins_fit(writer: ActivationWriter, plan: _Plan) -> None:
    """Refuse, before a run is registered, twins for a group that cannot record them."""
    if plan.settings.get("swap_options") and not writer.holds_twins:
        raise StoreError(writer.no_twins_message())


def _default_offset(options: CaptureOptions, contrast: ContrastSet, tokenizer, texts,
                    add_special: bool) -> tuple[int, str | None]:
    """Offset 1 (the answer letter) for an A/B set captured at ``last``, if its tokens allow; else 0."""
    if options.position != "last" or not contrast.is_ab:
        return 0, None
    reason = answer_letter_reason(tokenizer, texts, add_special)
    if reason is None:
        return 1, "A/B set: capturing the answer letter (offset 1), as CAA does; offset=0 captures the final ')'"
    warnings.warn(f"{contrast.path!r} is an A/B set, but it is captured at its last token, not the answer letter: "
                  f"{reason}", stacklevel=4)
    return 0, None


def _capture_shard_range(loaded, store, contrast, plan: _Plan, shard, merge: bool, progress: bool) -> CaptureReport:
    index, count = shard
    rows = plan.rows
    # Brief hold of the group lock (other shards may be registering or merging).
    with ActivationWriter.open(store, plan.group_name, plan.spec, wait=_REGISTER_WAIT_S) as writer:
        _check_twins_fit(writer, plan)
        run = writer.begin_sharded_run(contrast.path, contrast.sha256, len(rows.texts), plan.settings, count,
                                       rows.max_pair_id())
    lo, hi = shard_bounds(len(rows.texts), index, count)
    if run.merged > index or run.complete:
        report = _capture_report(store, plan.group_name, run, 0, 0, 0, 0.0, skipped=hi - lo)
    else:
        staging = staging_group_name(plan.group_name, run.run, index, count)
        with ActivationWriter.open(store, staging, plan.spec) as writer:
            start = writer.begin_run(contrast.path, contrast.sha256, hi - lo, True, plan.settings)
            report = _capture_range(loaded, writer, plan, run, lo, hi, start, progress=progress, track_stats=False)
    if merge:
        report.merged_shards = merge_shards(store, plan.group_name, run.run)
    return report


_REGISTER_WAIT_S = 60.0


@dataclass
class _Rows:
    """Everything per text that a capture writes beside the activations."""

    texts: list[str]
    labels: np.ndarray
    pair_ids: np.ndarray
    hashes: np.ndarray
    where: list[str]
    add_special_tokens: bool = True
    questions: np.ndarray | Column | None = None  # None: the pair ids (no twins)
    orders: np.ndarray | Column | None = None  # None: all 0 (as written)

    def max_pair_id(self) -> int:
        if not len(self.texts):
            return -1
        if isinstance(self.pair_ids, Column):  # a source: pair id = row
            return len(self.pair_ids) - 1
        return int(self.pair_ids.max())

    def window(self, start: int, stop: int, local: np.ndarray) -> dict[str, np.ndarray]:
        """``class``, ``pair_id``, ``text_hash``, ``question`` and ``order`` of rows whose texts are
        ``local`` (0-based within texts ``start .. stop-1``): one slice of each column per window, also
        for a lazy source."""
        out = {}
        for name, column in (("class", self.labels), ("pair_id", self.pair_ids), ("text_hash", self.hashes),
                             ("question", self.pair_ids if self.questions is None else self.questions)):
            part = column[start:stop]
            out[name] = (part.to_numpy() if isinstance(part, Column) else np.asarray(part))[local]
        orders = np.zeros(stop - start, np.int64) if self.orders is None else np.asarray(self.orders[start:stop])
        out["order"] = orders[local]
        return out


def _source_rows(source: TextSource) -> _Rows:
    """The rows of a lazily read source: every column is read a window at a time."""
    texts = source.texts
    hashes = Column(len(texts), lambda a, b: np.asarray([text_hash(t) for t in texts[a:b]], dtype=str))
    return _Rows(texts=texts, labels=source.labels, pair_ids=source.pair_ids, hashes=hashes, where=source.where)


def _capture_range(loaded: LoadedModel, writer: ActivationWriter, plan: _Plan, run: RunRecord,
                   lo: int, hi: int, start: int, *, progress: bool, track_stats: bool) -> CaptureReport:
    """Capture texts ``lo + start .. hi-1`` into ``writer`` (its run counts texts from ``lo``).

    Text indices and pair ids are those of ``run``, the run of the whole file
    (for a shard, the group's run; its staging writer has a run of its own).
    """
    rows, options = plan.rows, plan.options
    options = options.replace(window=options.window or _window_size(writer, options.position))
    tracker = _MomentsTracker.start(writer, rows.labels, plan.stats_only, track_stats and start == 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=hi - lo, initial=start, unit="text", desc=f"capture {writer.group.path}")
    n_tokens = 0
    written = 0
    t0 = time.perf_counter()

    def commit(item) -> None:
        # On the writer thread (actstore.ingest): the model goes on with the next window meanwhile.
        captured, per_row = item
        if plan.stats_only:
            tracker.add(captured.acts, per_row["class"])
            writer.write_moments(tracker.moments, captured.stop)
            return
        coords = {
            "class": per_row["class"],
            "pair_id": per_row["pair_id"] + run.pair_id_offset,
            "question": per_row["question"] + run.pair_id_offset,
            "order": per_row["order"],
            "text_hash": per_row["text_hash"],
            "text_index": captured.row_example + lo + run.text_index_offset,
            "token_index": captured.row_token,
        }
        max_pair = int(coords["pair_id"].max()) if len(coords["pair_id"]) else -1
        writer.append(captured.acts, coords, captured.stop, max_pair)
        tracker.add(captured.acts, coords["class"])

    try:
        with OrderedWriter(commit) as overlapped:
            for captured in iter_windows(
                loaded.model, loaded.tokenizer, loaded.blocks, rows.texts[lo:hi], plan.spec.layers, options,
                where=rows.where[lo:hi], start=start, add_special_tokens=rows.add_special_tokens,
                on_batch=(lambda n_texts, n_tok: bar.update(n_texts)) if bar is not None else None,
                as_tensors=plan.stats_only,
            ):
                n_tokens += captured.n_tokens
                written += len(captured.row_example)
                # The source is read on this thread only (a lazy source holds one block at a time).
                per_row = rows.window(lo + captured.start, lo + captured.stop,
                                      captured.row_example - captured.start)
                overlapped.put((captured, per_row))
    finally:
        if bar is not None:
            bar.close()
    if start >= hi - lo:
        writer.append(np.zeros((0, len(plan.spec.layers), loaded.hidden_size), np.float32), {}, hi - lo, -1)
    elif tracker.moments is not None and not plan.stats_only:
        from .stats import cache_capture_moments

        cache_capture_moments(writer, tracker.moments)
    report = _capture_report(writer.path, writer.group.path, run, hi - lo - start, written, n_tokens,
                             time.perf_counter() - t0, skipped=start)
    report.position = plan.spec.position
    report.note = plan.offset_note
    report.twins = bool(plan.settings.get("swap_options"))
    return report


@dataclass
class _MomentsTracker:
    """The group's moments as a capture goes: a stats-only group's running moments, or, for a
    capture of a whole file that starts from up-to-date statistics (or none), the statistics
    kept up to date as it goes (cheap next to the forward passes; ``actstore stats`` then has
    nothing left to do). ``moments`` is None when nothing is tracked."""

    moments: Moments | None

    @classmethod
    def start(cls, writer: ActivationWriter, labels, stats_only: bool, track: bool) -> _MomentsTracker:
        from .stats import cached_moments

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
            from .stats import window_moments

            # The fused float64 kernel: one pass, where torch's reduction makes several.
            values = acts if isinstance(acts, np.ndarray) else acts.numpy()
            self.moments = self.moments.merge(window_moments(values, labels))
        else:  # reduced on the model's device; only the moments travel
            self.moments = self.moments.add(acts, labels)


def _capture_report(store, group_name, run: RunRecord, captured, written, n_tokens, seconds, skipped):
    group = group_name.split("/", 1)[0]
    return CaptureReport(
        store=str(store), group=group, n_texts=captured + skipped, n_texts_captured=captured,
        n_samples_written=written, n_tokens=n_tokens, seconds=seconds, skipped=skipped, run=int(run.run),
    )


def _window_size(writer: ActivationWriter, position: str) -> int:
    # Texts per commit: small enough that an interruption loses seconds of work,
    # large enough that the commit (a rewrite of one partly filled chunk) is cheap.
    if position == "all":
        return 64
    return min(writer.window_hint, 512)


def _context_length(loaded: LoadedModel) -> int | None:
    config = text_config(loaded.model.config)
    limits = [getattr(config, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None


def capture_on_cluster(
    model: str | ModelSpec,
    data: str | Path,
    store: str | Path,
    layers: str | list[int] = "all",
    *,
    scheduler: str,
    shards: int | None = None,
    model_options: dict | None = None,
    options: CaptureOptions | None = None,
    group: GroupOptions | None = None,
    **values,
) -> list[CaptureReport]:
    """Capture ``data`` on a dask.distributed cluster, one shard per task.

    ``scheduler`` is ``local:N`` (a LocalCluster of N worker processes) or the
    address of a running scheduler; ``shards`` defaults to the number of
    workers. Each worker loads the model once (a :class:`ModelSpec`, or a model id
    with ``model_options`` for :func:`load_model`) and captures the shards it is
    given with :func:`capture_to_store` (``options``, ``group`` or their fields as
    keywords); the shards are merged when all are done. ``model``, ``data`` and
    ``store`` must mean the same thing on every worker: a shared file system or an
    object-store URL. Returns the shards' reports, in shard order. Everything is
    checked here, before the cluster starts.
    """
    from .stats import scheduler_context

    spec = model if isinstance(model, ModelSpec) else ModelSpec(model, **(model_options or {}))
    request = capture_request(spec, options, group, **values)
    with scheduler_context(scheduler) as client:
        if client is None:
            raise ActstoreError(
                f"scheduler={scheduler!r}: a cluster capture needs dask.distributed (local:N or an address)",
                param="scheduler",
            )
        count = shards or len(client.scheduler_info()["workers"])
        if count < 1:
            raise ActstoreError(f"{count} shards: need at least one (does the cluster have workers?)")
        futures = [client.submit(_capture_shard, request, data, store, layers, (i, count), pure=False)
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


def _capture_shard(request: CaptureRequest, data, store, layers, shard) -> CaptureReport:
    return capture_to_store(_worker_model(request.model), data, store, layers, options=request.options,
                            group=request.group, shard=shard, merge=False, progress=False)

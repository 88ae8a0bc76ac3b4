"""Capture a contrast set into a store: datasets + models + capture + stores.

:func:`capture_to_store` is what ``actstore capture`` runs. It streams window
by window (memory does not grow with the number of texts), commits after each
window, and with ``resume=True`` continues an interrupted run of the same file
and settings exactly where its last commit ended.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .capture import POSITIONS, iter_windows
from .datasets import ContrastSet, Example, read_contrast_set, text_hash
from .errors import ActstoreError
from .models import LoadedModel, load_model, parse_layers, safe_group_name, text_config
from .stores.zarr_store import (
    ActivationWriter,
    CaptureSpec,
    check_group_name,
    merge_shards,
    shard_bounds,
    staging_group_name,
)


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
        raise ActstoreError("--chat-template: this tokenizer has no chat template")
    texts = []
    for e in examples:
        if e.prompt is not None:
            messages = [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}]
        else:
            messages = [{"role": "user", "content": e.text}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    # The template already holds BOS and friends.
    return texts, False


def capture_to_store(
    model: str | LoadedModel,
    data: str | Path | ContrastSet,
    store: str | Path,
    layers: str | list[int] = "all",
    *,
    position: str = "last",
    offset: int = 0,
    batch_size: int = 8,
    store_dtype: str = "float32",
    model_dtype: str = "float32",
    device: str = "cpu",
    gguf_file: str | None = None,
    blocks: str | None = None,
    name: str | None = None,
    resume: bool = False,
    separator: str = "\n",
    chat_template: bool = False,
    max_length: int | None = None,
    stop_early: bool = True,
    window: int | None = None,
    shard: tuple[int, int] | None = None,
    merge: bool = True,
    stats_only: bool = False,
    codec: str = "lz4",
    progress: bool = True,
) -> CaptureReport:
    """Capture activations of ``data`` at ``layers`` of ``model`` into ``store``.

    ``model`` is a hub id, a local folder or an already :func:`load_model`-ed
    model; ``data`` a contrast-set file (see :mod:`actstore.datasets`).
    ``offset`` (with ``last``) captures the token that many before the last
    (1 for the answer letter of texts ending in ``(A)``, as CAA does); the
    store records the position as ``last-<offset>``. ``window`` is the number of
    texts per commit (default: 512, or 64 for ``all``).

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
    on every layer); :func:`actstore.compute_stats` then reads the moments.
    """
    if position not in POSITIONS:
        raise ActstoreError(f"--position {position!r}: expected one of {', '.join(POSITIONS)}")
    if offset < 0 or (offset and position != "last"):
        raise ActstoreError(f"--offset {offset}: must be >= 0 and is only for --position last")
    if name is not None:
        check_group_name(name)
    if shard is not None:
        shard_bounds(0, *shard)  # validates i/n before any work
        if stats_only:
            raise ActstoreError("--stats-only cannot be combined with --shard yet: capture the shards with "
                                "activations, or the whole file with --stats-only")
    contrast = data if isinstance(data, ContrastSet) else read_contrast_set(data, separator)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, gguf_file=gguf_file, dtype=model_dtype, device=device, blocks=blocks
    )
    layer_list = parse_layers(layers, loaded.num_layers)
    group_name = name if name is not None else safe_group_name(loaded.model_id)
    if max_length is None:
        max_length = _context_length(loaded)
    spec = CaptureSpec(
        model_id=loaded.model_id,
        model_fingerprint=loaded.fingerprint,
        model_type=getattr(loaded.model.config, "model_type", None),
        hidden_size=loaded.hidden_size,
        layers=layer_list,
        position=position if not offset else f"last-{offset}",
        dtype=store_dtype,
        stats_only=stats_only,
        codec=codec,
        extra={"model_dtype": model_dtype, "num_model_layers": loaded.num_layers},
    )
    settings = {"separator": separator, "chat_template": chat_template, "max_length": max_length}
    examples = contrast.examples
    texts, add_special = format_texts(examples, loaded.tokenizer, chat_template)
    rows = _Rows(
        texts=texts,
        labels=np.asarray([e.label for e in examples], dtype=str),
        pair_ids=np.asarray([e.pair_id for e in examples], dtype=np.int64),
        hashes=np.asarray([text_hash(t) for t in texts], dtype=str),
        where=[f"{contrast.path!r} {e.where}" for e in examples],
    )
    options = {"position": position, "batch_size": batch_size, "max_length": max_length,
               "add_special_tokens": add_special, "stop_early": stop_early, "last_offset": offset,
               "window": window, "progress": progress, "stats_only": stats_only, "track_stats": shard is None}

    if shard is None:
        with ActivationWriter.open(store, group_name, spec) as writer:
            start = writer.begin_run(contrast.path, contrast.sha256, len(examples), resume, settings)
            report = _capture_range(loaded, writer, rows, layer_list, writer.run, 0, len(texts), start, options)
        return report

    index, count = shard
    # Brief hold of the group lock (other shards may be registering or merging).
    with ActivationWriter.open(store, group_name, spec, wait=_REGISTER_WAIT_S) as writer:
        run = writer.begin_sharded_run(contrast.path, contrast.sha256, len(examples), settings, count,
                                       int(rows.pair_ids.max()) if len(examples) else -1)
    lo, hi = shard_bounds(len(examples), index, count)
    if run["merged"] > index or run["complete"]:
        report = _capture_report(loaded, store, group_name, run, 0, 0, 0, 0.0, skipped=hi - lo)
    else:
        staging = staging_group_name(group_name, run["run"], index, count)
        with ActivationWriter.open(store, staging, spec) as writer:
            start = writer.begin_run(contrast.path, contrast.sha256, hi - lo, True, settings)
            report = _capture_range(loaded, writer, rows, layer_list, run, lo, hi, start, options)
    if merge:
        report.merged_shards = merge_shards(store, group_name, run["run"])
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


def _capture_range(loaded: LoadedModel, writer: ActivationWriter, rows: _Rows, layers: list[int], run: dict,
                   lo: int, hi: int, start: int, options: dict) -> CaptureReport:
    """Capture texts ``lo + start .. hi-1`` into ``writer`` (its run counts texts from ``lo``).

    Text indices and pair ids are those of ``run``, the run of the whole file
    (for a shard, the group's run; its staging writer has a run of its own).
    """
    options = dict(options)
    progress = options.pop("progress")
    stats_only = options.pop("stats_only")
    window = options.pop("window") or _window_size(writer, options["position"])
    track_stats = options.pop("track_stats")
    moments = _RunningMoments(writer, rows.labels) if stats_only else None
    group_name = writer.group.path
    # A capture of a whole file that starts from up-to-date statistics (or none) keeps
    # them up to date as it goes: cheap next to the forward passes, and `actstore stats`
    # then has nothing left to do.
    before = _moments_before(writer) if track_stats and not stats_only and start == 0 else None
    during = _ClassMoments(before.shape) if before is not None else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=hi - lo, initial=start, unit="text", desc=f"capture {group_name}")
    n_tokens = 0
    written = 0
    pair_ids = rows.pair_ids + run["pair_id_offset"]
    t0 = time.perf_counter()
    try:
        for captured in iter_windows(
            loaded.model, loaded.tokenizer, loaded.blocks, rows.texts[lo:hi], layers,
            where=rows.where[lo:hi], window=window, start=start,
            on_batch=(lambda n_texts, n_tok: bar.update(n_texts)) if bar is not None else None,
            as_tensors=stats_only, **options,
        ):
            index = captured.row_example + lo
            if moments is not None:
                moments.add(captured.acts, rows.labels[index], captured.stop)
                n_tokens += captured.n_tokens
                written += len(index)
                continue
            coords = {
                "class": rows.labels[index],
                "pair_id": pair_ids[index],
                "text_hash": rows.hashes[index],
                "text_index": index + run["text_index_offset"],
                "token_index": captured.row_token,
            }
            max_pair = int(coords["pair_id"].max()) if len(index) else -1
            writer.append(captured.acts, coords, captured.stop, max_pair)
            if during is not None:
                during.add(captured.acts, coords["class"])
            n_tokens += captured.n_tokens
            written += len(index)
    finally:
        if bar is not None:
            bar.close()
    if start >= hi - lo:
        writer.append(np.zeros((0, len(layers), loaded.hidden_size), np.float32), {}, hi - lo, -1)
    elif during is not None:
        from .stats import cache_capture_moments

        total = before.merged(during)
        cache_capture_moments(writer.path, writer.group.path, total.classes, *total.stacked())
    return _capture_report(loaded, writer.path, group_name, run, hi - lo - start, written, n_tokens,
                           time.perf_counter() - t0, skipped=start)


class _ClassMoments:
    """Per-class (n, mean, M2) of the rows seen so far, ``(class, layer, hidden)`` float64 each.

    Each window is reduced where its activations are (the model's device,
    :func:`actstore.stats.tensor_class_moments`) and merged here (Chan et al.).
    """

    def __init__(self, shape: tuple[int, int], classes=(), count=None, mean=None, m2=None):
        self.shape = shape
        self.classes = list(classes)
        empty = np.zeros((len(self.classes), *shape))
        self.state = {"n": empty if count is None else np.asarray(count, np.float64),
                      "mean": empty if mean is None else np.asarray(mean, np.float64),
                      "m2": empty if m2 is None else np.asarray(m2, np.float64)}

    def extend(self, labels) -> None:
        new = sorted(set(map(str, labels)) - set(self.classes))
        if new:  # new classes start with no rows
            self.classes += new
            pad = np.zeros((len(new), *self.shape))
            self.state = {k: np.concatenate([v, pad]) for k, v in self.state.items()}

    def add(self, acts, labels: np.ndarray) -> None:
        import torch

        from .stats import chan_merge, tensor_class_moments

        self.extend(labels)
        tensor = acts if isinstance(acts, torch.Tensor) else torch.from_numpy(acts)
        code = {c: i for i, c in enumerate(self.classes)}
        codes = torch.as_tensor([code[c] for c in labels.tolist()], device=tensor.device)
        window = tensor_class_moments(tensor, codes, len(self.classes))
        self.state = chan_merge(self.state, {k: v.cpu().numpy() for k, v in window.items()})

    def merged(self, other: _ClassMoments) -> _ClassMoments:
        from .stats import chan_merge

        out = _ClassMoments(self.shape, self.classes, *self.stacked())
        out.extend(other.classes)
        aligned = {key: np.zeros_like(value) for key, value in out.state.items()}
        for i, label in enumerate(other.classes):
            j = out.classes.index(label)
            for key in aligned:
                aligned[key][j] = other.state[key][i]
        out.state = chan_merge(out.state, aligned)
        return out

    def stacked(self) -> np.ndarray:
        return np.stack([self.state["n"], self.state["mean"], self.state["m2"]])


class _RunningMoments:
    """The moments of a stats-only capture, committed to the group after every window."""

    def __init__(self, writer: ActivationWriter, labels: np.ndarray):
        self.writer = writer
        classes, state = writer.read_moments()
        self.moments = _ClassMoments(_moments_shape(writer), classes,
                                     *(state if state is not None else (None, None, None)))
        self.moments.extend(labels)

    def add(self, acts, labels: np.ndarray, texts_done: int) -> None:
        self.moments.add(acts, labels)
        self.writer.write_moments(self.moments.classes, self.moments.stacked(), texts_done)


def _moments_before(writer: ActivationWriter) -> _ClassMoments | None:
    """The group's moments before a capture starts: empty for a new group, the cached
    statistics if they are up to date, else None (then nothing is accumulated)."""
    from .stats import cached_moments

    if writer.n_samples == 0:
        return _ClassMoments(_moments_shape(writer))
    cached = cached_moments(writer.path, writer.group.path)
    return None if cached is None else _ClassMoments(_moments_shape(writer), *cached)


def _moments_shape(writer: ActivationWriter) -> tuple[int, int]:
    """(layer, hidden) of the group's moments."""
    return len(writer.group.attrs["layers"]), int(writer.group.attrs["hidden_size"])


def _capture_report(loaded, store, group_name, run, captured, written, n_tokens, seconds, skipped):
    group = group_name.split("/", 1)[0]
    return CaptureReport(
        store=str(store), group=group, n_texts=captured + skipped, n_texts_captured=captured,
        n_samples_written=written, n_tokens=n_tokens, seconds=seconds, skipped=skipped, run=int(run["run"]),
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
    model: str,
    data: str | Path,
    store: str | Path,
    layers: str | list[int] = "all",
    *,
    scheduler: str,
    shards: int | None = None,
    model_options: dict | None = None,
    **capture_options,
) -> list[CaptureReport]:
    """Capture ``data`` on a dask.distributed cluster, one shard per task.

    ``scheduler`` is ``local:N`` (a LocalCluster of N worker processes) or the
    address of a running scheduler; ``shards`` defaults to the number of
    workers. Each worker loads the model once (``model_options`` go to
    :func:`load_model`) and captures the shards it is given with
    :func:`capture_to_store` (``capture_options``); the shards are merged when
    all are done. ``model``, ``data`` and ``store`` must mean the same thing on
    every worker: a shared file system or an object-store URL. Returns the
    shards' reports, in shard order.
    """
    from .stats import scheduler_context

    with scheduler_context(scheduler) as client:
        if client is None:
            raise ActstoreError(
                f"--scheduler {scheduler!r}: a cluster capture needs dask.distributed (local:N or an address)"
            )
        count = shards or len(client.scheduler_info()["workers"])
        if count < 1:
            raise ActstoreError(f"{count} shards: need at least one (does the cluster have workers?)")
        futures = [
            client.submit(_capture_shard, model, model_options or {}, data, store, layers, (i, count),
                          capture_options, pure=False)
            for i in range(count)
        ]
        reports = client.gather(futures)
    merged = merge_shards(store, reports[0].group, reports[0].run)
    for report in reports:
        report.merged_shards = merged
    return reports


@functools.lru_cache(maxsize=1)
def _worker_model(model: str, options: tuple) -> LoadedModel:
    # One load per worker process, reused by every shard it captures.
    return load_model(model, **dict(options))


def _capture_shard(model, model_options, data, store, layers, shard, capture_options) -> CaptureReport:
    loaded = _worker_model(model, tuple(sorted(model_options.items())))
    return capture_to_store(loaded, data, store, layers, shard=shard, merge=False, progress=False,
                            **capture_options)

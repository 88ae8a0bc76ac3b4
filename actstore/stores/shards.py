"""Merging the shards of a run into their group.

The first shard to start registers one run for the whole file (it fixes the
run's text and pair-id offsets); each shard then writes its contiguous range of
texts into its own staging group, under its own lock, never touching the
others' data. A shard that finishes takes the group lock and appends, in shard
order, every finished shard that is next in line (a short copy: reading and
writing run at hundreds of MB/s, capturing at a few MB/s). The group's rows are
therefore exactly those of a single-process capture, in the same order, and
readers only ever see whole merged windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .moments import committed_moments
from .reader import read_coord
from .runs import RunRecord, shard_bounds, staging_leaf
from .schema import ACTS, SAMPLE_COORDS, SHARDS, child
from .writer import ActivationWriter


def merge_shards(path: str | Path, group_name: str, run: int, wait: float | None = None) -> int:
    """Merge the finished shards of ``run`` into ``group_name`` (see :func:`merge_into`).

    Waits for the group's writer lock (``wait`` seconds, ``None``: no limit).
    Returns how many of the run's shards are merged now.
    """
    with ActivationWriter.open_existing(path, group_name, wait) as writer:
        return merge_into(writer, run)


def merge_into(writer: ActivationWriter, run: int) -> int:
    """Append, in order, every finished shard of ``run`` that is next in line.

    Each shard is copied window by window (each window committed, so an
    interrupted merge resumes where it stopped), then its staging group is
    deleted. Returns the number of shards merged so far.
    """
    writer.run = RunRecord.from_attrs(writer.group.attrs["runs"][run])
    count = int(writer.run.shards)
    writer.truncate_uncommitted()
    shards = writer.group.require_group(SHARDS)
    for index in range(count):  # leftovers of a merge interrupted before its clean-up
        name = staging_leaf(run, index, count)
        if index < writer.run.merged and child(shards, name) is not None:
            del shards[name]
    while writer.run.merged < count:
        index = int(writer.run.merged)
        name = staging_leaf(run, index, count)
        staging = child(shards, name)
        lo, hi = shard_bounds(int(writer.run.n_texts), index, count)
        if hi > lo:
            staged_runs = staging.attrs.get("runs", []) if staging is not None else []
            if not staged_runs or not staged_runs[0]["complete"]:
                break
            if writer.group.attrs.get("stats_only"):
                # A stats-only shard holds moments, not rows: merged (Chan) and committed with the
                # run's progress in one write; an interruption leaves the previous commit intact.
                _merge_moments(writer, staging, hi, index + 1)
                del shards[name]
                continue
            _copy_rows(writer, staging)
        writer.commit(writer.n_samples, hi, -1, merged=index + 1)
        if staging is not None:
            del shards[name]
    return int(writer.run.merged)


def _merge_moments(writer: ActivationWriter, staging, texts_done: int, merged: int) -> None:
    staged = committed_moments(staging)
    if staged is None:  # a shard without a text (more shards than texts)
        writer.commit(writer.n_samples, texts_done, -1, merged=merged)
        return
    have = writer.read_moments()
    writer.write_moments(staged if have is None else have.merge(staged), texts_done, merged=merged)


def _copy_rows(writer: ActivationWriter, staging) -> None:
    n = int(staging.attrs["n_samples"])
    offset = int(writer.run.text_index_offset)
    text_index = np.asarray(staging["text_index"][:n])
    first = int(np.searchsorted(text_index, offset + int(writer.run.texts_done)))
    step = writer.window_hint
    a = first
    while a < n:
        # Windows end on a text boundary (with position all a text has several rows).
        b = int(np.searchsorted(text_index, text_index[min(a + step, n) - 1], side="right"))
        coords = {name: read_coord(staging[name], b, a) for name in SAMPLE_COORDS}
        writer.append(staging[ACTS][a:b], coords, int(text_index[b - 1]) - offset + 1, int(coords["pair_id"].max()))
        a = b

"""Moments kept in a group: the running moments of a stats-only group and the
statistics cache (``stats/``) of any group, read and written as
:class:`actstore.moments.Moments` and statistics datasets."""

from __future__ import annotations

import numpy as np

from ..errors import StoreError
from ..moments import Moments, stats_dataset
from .lock import WriterLock
from .reader import as_str_array
from .schema import MOMENTS, STATS_GROUP, write_stats_group

_CACHE_LOCK_WAIT_S = 10.0


def committed_moments(group) -> Moments | None:
    """A stats-only group's committed moments, from the buffer its attributes name;
    None before the first commit."""
    attrs = group.attrs
    classes = list(attrs.get("moments_classes", []))
    if not classes:
        return None
    return Moments.from_stacked(classes, group[MOMENTS[int(attrs["moments_buffer"])]][...])


def read_stats_cache(group):
    """The group's cached statistics dataset if they are of its current data, else None."""
    try:
        sg = group[STATS_GROUP]
        attrs = dict(sg.attrs)
        if attrs.get("data_version") != group.attrs.get("data_version"):
            return None
        classes = as_str_array(sg["class"][:]).tolist()
        return stats_dataset(sg["count"][...], sg["mean"][...], sg["var"][...], classes, sg["layer"][:], attrs)
    except (KeyError, FileNotFoundError):  # none, or another process is replacing it right now
        return None


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
        write_stats_group(group, stats)
    finally:
        lock.release()
    return True


def group_stats(moments: Moments, group_attrs: dict, group_name: str, **extra):
    """The statistics dataset of ``moments`` with the provenance of its group."""
    attrs = {key: group_attrs[key] for key in ("model_id", "model_fingerprint", "data_version", "position")}
    attrs.update({"group": group_name, "n_samples": moments.total, "ddof": 1,
                  "site": group_attrs.get("site", "resid"), **extra})
    return moments.to_dataset(group_attrs["layers"], attrs)


def counts_of(moments: Moments) -> dict[str, int]:
    """Rows per class."""
    return {c: int(np.asarray(moments.n)[i].reshape(-1)[0]) for i, c in enumerate(moments.classes)}

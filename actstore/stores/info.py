"""``actstore info``: what a store holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .integrity import check_group, damage_located, is_half_created
from .location import StoreLocation
from .moments import committed_moments, counts_of
from .reader import read_coord
from .roots import model_groups, open_root
from .runs import read_runs
from .schema import STATS_GROUP, CaptureSpec


def store_info(path: str | Path) -> dict[str, Any]:
    """Summary of a store: per model its layers, classes with counts, dtype, size.

    A group that cannot be read (half-created, damaged) is listed with its ``problem``
    instead of its summary: one bad group never hides the others.

    >>> (group,) = store_info("acts.zarr")["models"]
    >>> group["group"], group["layers"], group["classes"], group["n_samples"]
    ('tiny-llama', [1, 2], {'neg': 7, 'pos': 7}, 14)
    """
    root = open_root(path, mode="r")
    models = []
    for name in model_groups(root, include_half_created=True):
        group = root[name]
        try:
            if is_half_created(group):
                raise StoreError("its creation was interrupted; it holds no rows and the next capture into it "
                                 "replaces it")
            check_group(group, path)
            with damage_located(group, path, None):
                models.append(_group_info(group, name, path))
        except StoreError as err:
            models.append({"group": name, "problem": str(err)})
    return {"store": str(path), "models": models}


def _group_info(group, name: str, path) -> dict[str, Any]:
    attrs = dict(group.attrs)
    spec = CaptureSpec.from_attrs(attrs)
    stats_only = spec.stats_only
    moments = committed_moments(group) if stats_only else None
    if moments is not None:  # no rows: the counts are in the moments
        classes = counts_of(moments)
        n = moments.total
    else:
        n = int(attrs["n_samples"])
        labels, counts = np.unique(read_coord(group["class"], n), return_counts=True)
        classes = {str(k): int(v) for k, v in zip(labels, counts)}
    runs = [{k: v for k, v in r.to_attrs().items()
             if k in ("source", "texts_done", "n_texts", "complete", "shards", "merged")}
            | {"state": r.state, "swap_options": bool(r.settings.get("swap_options", False))}
            for r in read_runs(group)]
    return {
        "group": name,
        "model_id": spec.model_id,
        "model_source": spec.extra.get("model_source"),
        "layers": spec.layers,
        "hidden_size": spec.hidden_size,
        "position": spec.position,
        "site": spec.site,
        "dtype": spec.dtype,
        "n_samples": n,
        "classes": classes,
        "runs": runs,
        "bytes_on_disk": StoreLocation.parse(path).disk_usage(name),
        "has_stats": stats_only or STATS_GROUP in dict(group.groups()),
        "problem": None,
        "stats_only": stats_only,
    }

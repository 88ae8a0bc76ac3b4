"""Earlier home of the whole store; kept so that imports of it keep working.

The store now lives in one module per job: :mod:`.schema` (layout, codecs, the
arrays of a new group), :mod:`.roots` (opening local and fsspec stores, picking a
group), :mod:`.runs` (run records, shard bounds), :mod:`.writer`, :mod:`.shards`
(merging), :mod:`.moments` (running moments and the statistics cache),
:mod:`.reader` and :mod:`.info`.
"""

from __future__ import annotations

from .info import store_info
from .moments import committed_moments
from .reader import as_str_array, open_store
from .roots import model_groups, open_root, select_group
from .runs import RunRecord, shard_bounds, staging_group_name
from .schema import (
    ACTS,
    CODECS,
    MOMENTS,
    ROOT_KIND,
    SAMPLE_COORDS,
    SHARDS,
    STORE_DTYPES,
    CaptureSpec,
    GroupOptions,
    check_group_name,
    commit_attrs,
    sample_chunk,
)
from .shards import merge_shards
from .writer import ActivationWriter

__all__ = [
    "ACTS",
    "CODECS",
    "MOMENTS",
    "ROOT_KIND",
    "SAMPLE_COORDS",
    "SHARDS",
    "STORE_DTYPES",
    "ActivationWriter",
    "CaptureSpec",
    "GroupOptions",
    "RunRecord",
    "as_str_array",
    "check_group_name",
    "commit_attrs",
    "committed_moments",
    "merge_shards",
    "model_groups",
    "open_root",
    "open_store",
    "sample_chunk",
    "select_group",
    "shard_bounds",
    "staging_group_name",
    "store_info",
]

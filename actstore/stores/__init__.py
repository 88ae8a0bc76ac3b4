"""Where activations live: Zarr v3 stores, local folders or fsspec URLs.

One module per job: schema, roots (opening; URLs), group (one handle per model group), runs, writer, shards,
moments (running moments, statistics cache), reader, info, integrity (damage detection). Exported here: what
users call.
"""

from .group import StoreGroup
from .info import store_info
from .reader import open_store
from .roots import check_store_model, model_groups, open_root, select_group
from .schema import CaptureSpec, GroupOptions
from .verify import verify_store
from .writer import ActivationWriter

__all__ = [
    "ActivationWriter",
    "CaptureSpec",
    "GroupOptions",
    "StoreGroup",
    "check_store_model",
    "model_groups",
    "open_root",
    "open_store",
    "select_group",
    "store_info",
    "verify_store",
]

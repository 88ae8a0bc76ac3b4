"""Where activations live. Today: Zarr v3 (local folders; other fsspec URLs through zarr)."""

from .zarr_store import (
    ActivationWriter,
    CaptureSpec,
    model_groups,
    open_root,
    open_store,
    select_group,
    store_info,
)

__all__ = [
    "ActivationWriter",
    "CaptureSpec",
    "model_groups",
    "open_root",
    "open_store",
    "select_group",
    "store_info",
]

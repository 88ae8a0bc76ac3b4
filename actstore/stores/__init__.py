"""Where activations live: Zarr v3 stores, local folders or fsspec URLs.

One module per job, in the order a store is met:

* :mod:`.location`: where a store is (:class:`~.location.StoreLocation`: a folder, a URL, a ``zarr.Store``);
* :mod:`.schema`: the one schema writer and reader share (array names, attributes, codecs, :class:`GroupOptions`);
* :mod:`.roots`: a store's root opened once at the edge, and its model groups;
* :mod:`.group`: :class:`StoreGroup`, the one handle on a model's group (layers, dataset, model check);
* :mod:`.lock`: the writer lock (one writer per group, released by the OS when a process dies);
* :mod:`.runs`: the captures a group holds (run records, resume, shards' staging groups);
* :mod:`.writer`: :class:`ActivationWriter`, rows appended and committed with one metadata write;
* :mod:`.chunks`: chunk files read and written directly on a local store (CRC32C-checked);
  :mod:`.chunkfiles`: opening them (regular files only), read buffers, a killed write's leftovers;
  :mod:`.binding`: each chunk bound to its place (a manifest of checksums committed with the rows);
  :mod:`.guard`: reads through zarr that name a damaged chunk as the direct reader does;
* :mod:`.shards`: shards of a capture merged in order;
* :mod:`.moments`: running moments of stats-only captures and the statistics cache;
* :mod:`.reader`: :func:`open_store` (an xarray Dataset, lazy) and the class labels;
* :mod:`.info`: :func:`store_info`; :mod:`.integrity`: damage detection; :mod:`.verify`: :func:`verify_store`.

Exported here: what users call.
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

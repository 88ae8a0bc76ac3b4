"""StoreLocation: a path, a URL or a zarr.Store object, parsed once; open, lock, disk usage
and display belong to it."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.errors import StoreError
from actstore.stores import ActivationWriter, CaptureSpec, StoreGroup
from actstore.stores.location import StoreLocation
from actstore.stores.lock import WriterLock


def test_a_path_and_its_file_url_are_one_store_with_one_lock(tmp_path):
    path = StoreLocation.parse(tmp_path / "a.zarr")
    url = StoreLocation.parse(f"file://{tmp_path}/a.zarr")
    assert path.spelling == url.spelling == str(tmp_path / "a.zarr") and path.local_path == url.local_path
    assert path.lock_file("g") == url.lock_file("g") == tmp_path / ".a.zarr.g.lock"
    assert str(url) == f"file://{tmp_path}/a.zarr"  # shown as given
    with pytest.raises(StoreError, match="file:// URL names a local path"):
        StoreLocation.parse("file://host/a.zarr")


def test_a_url_is_locked_in_the_cache_and_measured_by_fsspec(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))
    memory = StoreLocation.in_memory("test")
    assert memory.is_url and memory.local_path is None and str(memory).startswith("memory://test/")
    assert memory.lock_file("g").parent == tmp_path / "cache" / "locks"
    assert StoreLocation.in_memory().spelling != StoreLocation.in_memory().spelling


def test_a_zarr_store_object_is_a_store_too():
    from zarr.storage import MemoryStore

    location = StoreLocation.parse(MemoryStore())
    assert location.lock_file("g") is None and location.disk_usage() is None and location.join("g") is None
    spec = CaptureSpec("m", "f", None, 4, [0, 2], "last")
    acts = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)
    with ActivationWriter.open(location, "m", spec) as writer:
        writer.begin_run("x.json", "f" * 64, 2, False, {})
        writer.append(acts, {"class": np.array(["pos", "neg"]), "pair_id": np.array([0, 0]),
                             "text_hash": np.array(["a" * 16, "b" * 16]), "text_index": np.array([0, 1]),
                             "token_index": np.array([3, 3])}, 2, 0)
    group = StoreGroup.open(location)
    assert group.spec.layers == [0, 2]
    np.testing.assert_array_equal(group.dataset()["acts"].values, acts)
    assert WriterLock(location, "m").acquire().path is None  # one process owns an object store

"""What a write killed before its rename leaves (zarr's ``<name>.<hex>.partial``) never stays for good,
and never makes a store unusable (issue 31)."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.errors import StoreNotFoundError
from actstore.stores import CaptureSpec, open_root
from actstore.stores.lock import WriterLock
from actstore.stores.writer import ActivationWriter

SPEC = CaptureSpec("m", "sha256:x", "llama", 8, [1, 2], "last")
HEX = "0123456789abcdef" * 2


def _store(tmp_path):
    store = tmp_path / "a.zarr"
    with ActivationWriter.open(store, "g", SPEC) as writer:
        writer.begin_run("f", "abc", 2, False, {})
        writer.append(np.ones((2, 2, 8), np.float32), {"class": np.array(["pos", "neg"]), "pair_id": np.arange(2),
                      "text_hash": np.array(["a", "b"]), "text_index": np.arange(2), "token_index": np.full(2, -1)},
                      2, 1)
    return store


def test_the_next_writer_removes_what_a_killed_write_left_in_its_group(tmp_path):
    store = _store(tmp_path)
    left = [store / "g" / f"zarr.{HEX}.partial", store / "g" / "acts" / "c" / "0" / "1" / f"0.{HEX}.partial",
            store / "g" / "class" / "c" / f"0.{HEX}.partial", store / "g" / "stats" / f"zarr.{HEX}.partial"]
    kept = [store / "g" / "shards" / "run0-0of2" / f"zarr.{HEX}.partial",  # another writer's (a shard's)
            store / "g" / "acts" / "notes.partial"]  # not zarr's spelling
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{")
    with ActivationWriter.open(store, "g", SPEC):
        pass
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_a_cache_being_written_by_another_process_keeps_its_temporary_file(tmp_path):
    store = _store(tmp_path)
    path = store / "g" / "stats" / f"zarr.{HEX}.partial"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{")
    lock = WriterLock(store, "g.stats-cache").acquire()
    try:
        with ActivationWriter.open(store, "g", SPEC):
            pass
    finally:
        lock.release()
    assert path.exists()


def test_a_store_holding_only_the_temporary_root_file_is_created_again(tmp_path):
    store = tmp_path / "b.zarr"
    store.mkdir()
    (store / f"zarr.{HEX}.partial").write_bytes(b'{"zarr_format": 3, "node_ty')
    with pytest.raises(StoreNotFoundError, match="creation was interrupted before anything was written"):
        open_root(store)
    open_root(store, mode="a")
    assert [p.name for p in store.iterdir()] == ["zarr.json"]
    with ActivationWriter.open(store, "g", SPEC):
        pass

"""Every read of activations names a damaged or missing chunk as ``stats`` does, wherever the array
is computed (``project``, ``extract``, ``eval``), through the direct reader or through zarr (issue 31)."""

from __future__ import annotations

import numpy as np
import pytest

import actstore
from actstore.errors import DamagedStoreError
from actstore.stores import CaptureSpec
from actstore.stores.chunks import ZARR_READS
from actstore.stores.writer import ActivationWriter


def _store(tmp_path):
    store = tmp_path / "a.zarr"
    with ActivationWriter.open(store, "g", CaptureSpec("m", "sha256:x", "llama", 8, [1, 2], "last")) as writer:
        writer.begin_run("f", "abc", 4, False, {})
        writer.append(np.random.default_rng(0).normal(size=(4, 2, 8)).astype(np.float32),
                      {"class": np.array(["pos", "neg"] * 2), "pair_id": np.arange(4), "text_hash": np.array(["h"] * 4),
                       "text_index": np.arange(4), "token_index": np.full(4, -1)}, 4, 3)
    return store


def _flip(path):
    data = bytearray(path.read_bytes())
    data[5] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {"deleted": (lambda p: p.unlink(), "chunk c/0/1/0: missing"),
          "flipped": (_flip, "chunk c/0/1/0: checksum mismatch")}


@pytest.mark.parametrize("zarr_reads", [False, True], ids=["direct", "through zarr"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_chunk_is_named_where_the_dataset_is_computed(tmp_path, monkeypatch, damage, zarr_reads):
    if zarr_reads:
        monkeypatch.setenv(ZARR_READS, "1")
    store = _store(tmp_path)
    change, message = DAMAGE[damage]
    change(store / "g" / "acts" / "c" / "0" / "1" / "0")
    ds = actstore.open_store(store)
    np.testing.assert_array_equal(np.isfinite(ds.acts.sel(layer=1).values), True)  # the other layer is whole
    with pytest.raises(DamagedStoreError) as err:
        ds.acts.sel(layer=2).mean("sample").values  # noqa: B018 (computed: the read under test)
    assert f"store {str(store)!r} group 'g' is damaged: array 'g/acts' {message}" in str(err.value)
    assert "actstore verify" in str(err.value)

"""Each chunk bound to its place (actstore.stores.binding, issue 31 #6): chunk files exchanged
between places pass their own CRC32C, and are caught by the manifest committed with the rows."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import DamagedStoreError
from actstore.stores import schema
from actstore.stores.binding import MANIFEST, appended_entries, misplaced, rows_crc
from actstore.stores.chunks import local_chunks
from actstore.stores.schema import CaptureSpec
from actstore.stores.verify import verify_store
from actstore.stores.writer import ActivationWriter

GROUP = "g"


def _exchange(a, b) -> None:
    tmp = f"{a}.swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


@pytest.mark.parametrize("codec", schema.CODECS)
def test_whole_chunks_are_bound_by_their_stored_checksum_and_exchanged_ones_refused(tmp_path, codec):
    root = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    arr = root.create_array("acts", shape=(40, 2, 8), chunks=(16, 1, 8), dtype="float32", fill_value=np.nan,
                            compressors=schema.compressors(codec))
    values = np.random.default_rng(0).standard_normal((40, 2, 8)).astype("float32")
    entries = local_chunks(arr).write_rows(arr, 0, values)
    # rows 0..31 fill two chunks of rows: bound by the CRC32C stored after them; rows 32..39 by their own bytes
    assert all(type(entries[f"c/{r}/{layer}/0"]) is int for r in (0, 1) for layer in (0, 1))
    assert entries["c/2/1/0"] == [8, rows_crc(values[32:40, 1:2])]
    files = local_chunks(arr, where=("a.zarr", GROUP), entries=entries)
    np.testing.assert_array_equal(files[0:40, 0:2], values)
    folder = tmp_path / "a.zarr" / "acts" / "c"
    for a, b in [("0/0/0", "0/1/0"), ("2/0/0", "2/1/0"), ("1/1/0", "2/1/0")]:
        _exchange(folder / a, folder / b)
        for key in (a, b):
            r, layer = int(key[0]), int(key[2])
            with pytest.raises(DamagedStoreError, match=f"'acts' chunk c/{key}: not the chunk recorded for this place"):
                files[r * 16:r * 16 + 1, layer:layer + 1]
        np.testing.assert_array_equal(local_chunks(arr)[0:40, 0:2].shape, values.shape)  # unbound: read as they lie
        _exchange(folder / a, folder / b)
    np.testing.assert_array_equal(files[0:40, 0:2], values)


def test_entries_extended_through_zarr_equal_the_whole_prefix_and_an_older_snapshot_still_matches(tmp_path):
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    labels = root.create_array("class", shape=(0,), chunks=(8,), dtype=str, fill_value="\x01")
    ids = root.create_array("pair_id", shape=(0,), chunks=(8,), dtype="int64", fill_value=-1)
    words = np.array(["pos", "neg", "é", "a longer one", "x"] * 4)[:19]
    table: dict = {"class": {}, "pair_id": {}}
    snapshots = []
    for start, stop in [(0, 3), (3, 11), (11, 19)]:
        for array, values in ((labels, words), (ids, np.arange(19) * 7)):
            array.resize((stop,))
            array[start:stop] = values[start:stop]
            table[array.basename].update(appended_entries(array, table[array.basename], start, values[start:stop]))
        snapshots.append({name: dict(entries) for name, entries in table.items()})
    assert table["class"]["c/2"] == [3, rows_crc(words[16:19])]
    assert table["pair_id"]["c/1"] == [8, rows_crc(np.arange(8, 16) * 7)]
    for snapshot in snapshots:  # a reader that opened after any commit reads what it was promised
        for name in ("class", "pair_id"):
            files = local_chunks(root[name], strings=name == "class", where=("c.zarr", GROUP), entries=snapshot[name])
            files[0:root[name].shape[0],]
    assert misplaced(table["pair_id"]["c/0"], np.arange(8, 16) * 7, None)


def _write(tmp_path, name="a.zarr", windows=2):
    spec = CaptureSpec("m", "sha256:x", "llama", 8, [1, 2], "last")
    rng = np.random.default_rng(1)
    with ActivationWriter.open(tmp_path / name, GROUP, spec) as writer:
        writer.begin_run("f", "abc", 5 * windows, False, {})
        for i in range(windows):
            n = 5
            coords = {"class": np.array(["pos", "neg", "pos", "neg", "pos"]), "pair_id": np.arange(n) + 5 * i,
                      "question": np.arange(n) * 3 + 100, "text_hash": np.array([f"h{j}" for j in range(n)]),
                      "text_index": np.arange(n) + 5 * i, "token_index": np.full(n, -1)}
            writer.append(rng.normal(size=(n, 2, 8)).astype(np.float32), coords, 5 * (i + 1),
                          int(coords["pair_id"].max()))
    return tmp_path / name


def test_a_captured_group_with_exchanged_chunks_is_named_by_verify_and_refused_where_read(tmp_path):
    store = _write(tmp_path)
    assert [(r.ok, r.bound) for r in verify_store(store)] == [(True, True)]
    good = actstore.open_store(store).acts.values
    _exchange(store / GROUP / "acts" / "c/0/0/0", store / GROUP / "acts" / "c/0/1/0")
    _exchange(store / GROUP / "pair_id" / "c/0", store / GROUP / "question" / "c/0")
    (report,) = verify_store(store)
    named = sorted((d.array, d.key) for d in report.damaged)
    assert named == [("g/acts", "c/0/0/0"), ("g/acts", "c/0/1/0"), ("g/pair_id", "c/0"), ("g/question", "c/0")]
    assert all("not the chunk recorded for this place" in d.problem for d in report.damaged)
    with pytest.raises(DamagedStoreError, match=r"store '.*a.zarr' group 'g' is damaged: array 'g/acts' chunk c/0/1/0"):
        actstore.open_store(store, coords=("class",)).acts.sel(layer=2).compute()
    with pytest.raises(DamagedStoreError, match="'g/acts' chunk c/0/"):
        actstore.compute_stats(store)
    _exchange(store / GROUP / "acts" / "c/0/0/0", store / GROUP / "acts" / "c/0/1/0")
    np.testing.assert_array_equal(actstore.open_store(store, coords=("class",)).acts.values, good)


def test_an_interrupted_write_leaves_the_committed_rows_bound(tmp_path):
    """Rows written past the commit (a kill before it) change the last chunk's bytes: its committed
    rows still match their entry, and a resumed run binds the chunk anew."""
    store = _write(tmp_path, windows=1)
    with ActivationWriter.open(store, GROUP, CaptureSpec("m", "sha256:x", "llama", 8, [1, 2], "last")) as writer:
        writer.write_rows(5, np.ones((3, 2, 8), np.float32), {"class": np.array(["pos"] * 3),
                          "pair_id": np.arange(3), "text_hash": np.array(["h"] * 3), "text_index": np.arange(3),
                          "token_index": np.full(3, -1)})  # never committed
    assert [r.ok for r in verify_store(store)] == [True]
    assert actstore.open_store(store).sizes["sample"] == 5
    actstore.compute_stats(store)


def test_a_group_made_before_the_manifest_still_reads_and_verify_says_what_it_cannot_check(tmp_path):
    store = _write(tmp_path)
    group = zarr.open_group(store / GROUP, mode="a")
    attrs = dict(group.attrs)
    del attrs[MANIFEST]
    group.attrs.put(attrs)
    _exchange(store / GROUP / "acts" / "c/0/0/0", store / GROUP / "acts" / "c/0/1/0")
    assert [(r.ok, r.bound) for r in verify_store(store)] == [(True, False)]
    assert actstore.open_store(store).acts.values.shape == (10, 2, 8)
    result = actstore.compute_stats(store)
    assert int(result["count"].sum()) == 20
    copy = shutil.copytree(store, tmp_path / "appended.zarr")  # appended to by this actstore: stays unbound
    with ActivationWriter.open(copy, GROUP, CaptureSpec("m", "sha256:x", "llama", 8, [1, 2], "last")) as writer:
        writer.begin_run("f2", "def", 1, False, {})
        writer.append(np.ones((1, 2, 8), np.float32), {"class": np.array(["pos"]), "pair_id": np.array([10]),
                      "text_hash": np.array(["h"]), "text_index": np.array([10]), "token_index": np.array([-1])}, 1, 10)
    assert MANIFEST not in zarr.open_group(copy / GROUP).attrs

"""The store contract: lazy xarray view, appends, refusals, interruption and resume, cached stats.

Tests that take ``store_at`` run on every backend (local files, fsspec memory://, an S3
server on loopback; see conftest.py); the others pin what only a local folder has
(lock files, what counts as a non-store folder, metadata writes)."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import StatsError, StoreError, StoreNotFoundError
from actstore.stores import ActivationWriter, store_info


def capture(loaded, data, store, layers="1,3", **kw):
    kw.setdefault("progress", False)
    return actstore.capture_to_store(loaded, data, store, layers=layers, **kw)


def test_open_store_is_lazy_labeled_and_selectable(tmp_path, store_at, llama, pairs_file):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    ds = actstore.open_store(store)
    assert isinstance(ds.acts.data, da.Array)
    assert ds.acts.dims == ("sample", "layer", "hidden")
    assert ds["layer"].values.tolist() == [1, 3]
    assert ds.sizes["sample"] == 14
    assert ds["class"].values.tolist() == ["pos", "neg"] * 7
    assert ds["pair_id"].values.tolist() == [i // 2 for i in range(14)]
    assert len(set(ds["text_hash"].values.tolist())) == 14
    lazy_mean = ds.acts.sel(layer=3).where(ds["class"] == "pos", drop=True).mean("sample")
    assert isinstance(lazy_mean.data, da.Array)
    values = ds.acts.values
    np.testing.assert_allclose(lazy_mean.values, values[0::2, 1].mean(0), rtol=1e-6)
    assert ds.attrs["model_id"] == str(llama.model_id) and ds.attrs["position"] == "last"


def test_stats_match_numpy_per_class_and_are_cached_until_data_changes(tmp_path, store_at, llama, pairs_file,
                                                                       shared_data):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    stats = actstore.compute_stats(store)
    values = actstore.open_store(store).acts.values.astype(np.float64)
    for label, rows in (("pos", values[0::2]), ("neg", values[1::2])):
        sel = stats.sel({"class": label})
        assert sel["count"].values.tolist() == [7, 7]
        np.testing.assert_allclose(sel["mean"].values, rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sel["var"].values, rows.var(0, ddof=1), rtol=1e-10, atol=1e-12)
    cached = actstore.open_stats(store)
    np.testing.assert_array_equal(cached["mean"].values, stats["mean"].values)
    assert cached.attrs["computed_by"] == "capture"  # the capture kept them up to date as it went
    # An append keeps up-to-date statistics up to date; they equal a fresh pass over the data.
    religion = shared_data / "bias-pairs" / "stereoset-religion" / "test.json"
    capture(llama, religion, store)
    cached = actstore.open_stats(store)
    assert cached["count"].sel({"class": "pos"}).values.tolist() == [7 + 13, 7 + 13]
    recomputed = actstore.compute_stats(store, force=True)
    assert "computed_by" not in recomputed.attrs
    for name in ("mean", "var"):
        np.testing.assert_allclose(cached[name].values, recomputed[name].values, rtol=1e-12, atol=1e-15)
    # Statistics that were stale before an append stay stale after it: the next pass recomputes.
    zarr.open_group(store, mode="a")["tiny-llama"].attrs["data_version"] = "changed-behind-its-back"
    capture(llama, shared_data / "bias-pairs" / "stereoset-race" / "test.json", store)
    with pytest.raises(StatsError, match="no up-to-date statistics"):
        actstore.open_stats(store)
    assert actstore.compute_stats(store)["count"].sel({"class": "pos"}).values.tolist()[0] > 20


def test_appending_a_second_file_keeps_pair_ids_unique(tmp_path, store_at, llama, pairs_file, shared_data):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    capture(llama, shared_data / "bias-pairs" / "stereoset-religion" / "test.json", store)
    ds = actstore.open_store(store)
    assert ds.sizes["sample"] == 14 + 26
    assert ds["pair_id"].values.tolist() == [i // 2 for i in range(40)]
    assert ds["text_index"].values.tolist() == list(range(40))
    info = store_info(store)["models"][0]
    assert info["classes"] == {"neg": 20, "pos": 20} and len(info["runs"]) == 2


def test_a_second_model_gets_its_own_group(tmp_path, store_at, llama, tiny_model_dirs, pairs_file):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    capture(str(tiny_model_dirs["gpt2"]), pairs_file, store, "0")
    with pytest.raises(StoreError, match="holds several models"):
        actstore.open_store(store)
    assert actstore.open_store(store, model="tiny-gpt2")["layer"].values.tolist() == [0]
    assert actstore.open_store(store, model=str(tiny_model_dirs["gpt2"])).sizes["sample"] == 14


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position": "mean"}, "position is 'last' there but 'mean' now"),
        ({"layers": "0,1"}, "layers is [1, 3] there but [0, 1] now"),
        ({"store_dtype": "float16"}, "dtype is 'float32' there but 'float16' now"),
    ],
)
def test_appending_something_that_does_not_fit_is_refused(tmp_path, store_at, llama, pairs_file, change, message):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    kw = dict(change)
    layers = kw.pop("layers", "1,3")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"positive": "x y", "negative": "y x"}]))
    with pytest.raises(StoreError) as err:
        capture(llama, other, store, layers, **kw)
    assert message in str(err.value)


def test_appending_another_model_to_a_group_is_refused(tmp_path, store_at, llama, tiny_model_dirs, pairs_file):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store, name="shared")
    with pytest.raises(StoreError, match="model_id is"):
        capture(str(tiny_model_dirs["gpt_neox"]), pairs_file, store, name="shared")


def test_recapturing_the_same_file_is_refused(tmp_path, store_at, llama, pairs_file):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    with pytest.raises(StoreError, match="already holds a complete capture"):
        capture(llama, pairs_file, store)
    version = actstore.open_store(store).attrs["data_version"]
    assert isinstance(version, str) and len(version) == 32
    report = capture(llama, pairs_file, store, resume=True)
    assert report.n_samples_written == 0 and actstore.open_store(store).sizes["sample"] == 14
    # Nothing written, nothing changed: a sweep ledger or statistics cache keyed on the version stays valid.
    assert actstore.open_store(store).attrs["data_version"] == version


@pytest.mark.parametrize("position", ["last", "all"])
def test_interrupted_capture_resumes_without_loss_or_duplicates(tmp_path, store_at, llama, pairs_file, monkeypatch,
                                                                position, interrupt_after):
    reference = store_at("ref.zarr")
    capture(llama, pairs_file, reference, position=position, window=3)
    store = store_at("a.zarr")
    def rows_without_their_commit(self, acts, *args):
        self.acts.resize((self.n_samples + len(acts), *self.acts.shape[1:]))
        self.acts[self.n_samples:] = 1e9

    original = interrupt_after(ActivationWriter, "append", 3, before=rows_without_their_commit)
    with pytest.raises(KeyboardInterrupt):
        capture(llama, pairs_file, store, position=position, window=3)
    monkeypatch.setattr(ActivationWriter, "append", original)
    # Readable right after the interruption, showing only committed rows.
    partial = actstore.open_store(store)
    assert 0 < partial.sizes["sample"] < actstore.open_store(reference).sizes["sample"]
    assert float(abs(partial.acts).max()) < 1e9
    with pytest.raises(StoreError, match="with --resume to finish it first"):
        capture(llama, pairs_file, store, position=position, window=3)
    report = capture(llama, pairs_file, store, position=position, window=3, resume=True)
    assert report.skipped == 6
    got, want = actstore.open_store(store), actstore.open_store(reference)
    np.testing.assert_array_equal(got.acts.values, want.acts.values)
    for name in ("class", "pair_id", "text_hash", "text_index", "token_index"):
        assert got[name].values.tolist() == want[name].values.tolist()


def test_paths_that_are_not_stores_are_refused(tmp_path):
    with pytest.raises(StoreNotFoundError, match="is not an actstore store"):
        actstore.open_store(tmp_path)
    plain = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    plain.create_group("x")
    with pytest.raises(StoreNotFoundError, match="not an actstore store"):
        actstore.open_store(tmp_path / "plain.zarr")


def test_a_store_of_another_schema_version_is_refused(tmp_path, store_at, llama, pairs_file):
    store = store_at("a.zarr")
    capture(llama, pairs_file, store)
    root = zarr.open_group(store, mode="a")
    root.attrs["actstore"] = {"kind": "actstore-activations", "schema_version": 99}
    with pytest.raises(StoreError, match="schema version 99"):
        actstore.open_store(store)


def test_a_non_empty_folder_is_not_turned_into_a_store(tmp_path, llama, pairs_file):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreNotFoundError, match="exists and is not a Zarr store"):
        capture(llama, pairs_file, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_another_file_cannot_start_while_a_capture_is_interrupted(tmp_path, store_at, llama, pairs_file, shared_data,
                                                                  monkeypatch):
    store = store_at("a.zarr")
    original = ActivationWriter.append

    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ActivationWriter, "append", interrupt)
    with pytest.raises(KeyboardInterrupt):
        capture(llama, pairs_file, store, window=4)
    monkeypatch.setattr(ActivationWriter, "append", original)
    other = shared_data / "bias-pairs" / "stereoset-religion" / "test.json"
    with pytest.raises(StoreError, match="holds an interrupted capture of"):
        capture(llama, other, store, resume=True)


def test_a_second_writer_to_the_same_group_is_refused(tmp_path, llama, pairs_file):
    from actstore.stores import CaptureSpec

    store = tmp_path / "a.zarr"
    spec = CaptureSpec(llama.model_id, llama.fingerprint, "llama", 32, [1, 3], "last")
    with ActivationWriter.open(store, "tiny-llama", spec):
        with pytest.raises(StoreError, match="is being written by pid"):
            capture(llama, pairs_file, store)
        # Another group of the same store is free.
        capture(llama, pairs_file, store, name="other")
    capture(llama, pairs_file, store)  # released on exit
    assert actstore.open_store(store, model="tiny-llama").sizes["sample"] == 14
    assert not list(tmp_path.glob(".*.lock"))


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_capture_codec_is_the_arrays_and_values_do_not_change(tmp_path, store_at, tiny_model_dirs, pairs_file, codec):
    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    default, other = store_at("none.zarr"), store_at(f"{codec}.zarr")
    actstore.capture_to_store(model, pairs_file, default, layers="1", progress=False)
    actstore.capture_to_store(model, pairs_file, other, layers="1", codec=codec, progress=False)
    compressors = zarr.open_group(other, mode="r")["tiny-gpt2"]["acts"].compressors
    # every array ends with a checksum (stores/integrity.py)
    assert [type(c).__name__ for c in compressors] == ({"zstd": ["ZstdCodec"], "lz4": ["BloscCodec"]}[codec]
                                                       + ["Crc32cCodec"])
    # the default (issue 21): no compression, the checksum only
    assert [type(c).__name__ for c in zarr.open_group(default, mode="r")["tiny-gpt2"]["acts"].compressors] == \
        ["Crc32cCodec"]
    np.testing.assert_array_equal(actstore.open_store(other).acts.values, actstore.open_store(default).acts.values)


def test_the_auto_codec_compresses_only_all_token_captures(store_at, tiny_model_dirs, pairs_file):
    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    last, every = store_at("last.zarr"), store_at("all.zarr")
    actstore.capture_to_store(model, pairs_file, last, layers="1", progress=False)
    actstore.capture_to_store(model, pairs_file, every, layers="1", position="all", progress=False)
    kinds = {path: [type(c).__name__ for c in zarr.open_group(path, mode="r")["tiny-gpt2"]["acts"].compressors]
             for path in (last, every)}
    assert kinds == {last: ["Crc32cCodec"], every: ["BloscCodec", "Crc32cCodec"]}


def test_a_commit_is_one_metadata_write(tmp_path, llama, pairs_file, monkeypatch):
    # zarr's attrs.update() writes key by key: a kill between two of those writes once left
    # n_samples advanced and the run's texts_done not, and a resumed capture wrote a window twice.
    from zarr.storage import LocalStore

    writes = []
    real_set = LocalStore.set

    async def counting_set(self, key, value, *args, **kwargs):
        writes.append(key)
        return await real_set(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", counting_set)
    capture(llama, pairs_file, tmp_path / "a.zarr")
    group_writes = [k for k in writes if k == "tiny-llama/zarr.json"]
    # the empty group, its attributes, the run's registration, one commit per window (one here)
    assert len(group_writes) == 4, writes


def test_stats_only_groups_equal_capture_then_stats(store_at, llama, pairs_file):
    full, only = store_at("full.zarr"), store_at("only.zarr")
    capture(llama, pairs_file, full, window=3)  # the same windows, so the same batches and activations
    capture(llama, pairs_file, only, stats_only=True, window=3)
    want, got = actstore.compute_stats(full), actstore.compute_stats(only)
    assert got.attrs["stats_only"] and got["count"].values.tolist() == want["count"].values.tolist()
    for name in ("mean", "var"):
        np.testing.assert_allclose(got[name].values, want[name].values, rtol=1e-9, atol=1e-12)
    assert store_info(only)["models"][0]["classes"] == {"pos": 7, "neg": 7}


def test_shards_captured_out_of_order_equal_one_capture(store_at, llama, pairs_file):
    whole, sharded = store_at("whole.zarr"), store_at("sharded.zarr")
    capture(llama, pairs_file, whole, window=4)
    first = capture(llama, pairs_file, sharded, window=4, shard=(1, 2))
    assert first.merged_shards == 0  # shard 0 is not there yet
    assert capture(llama, pairs_file, sharded, window=4, shard=(0, 2)).merged_shards == 2
    got, want = actstore.open_store(sharded), actstore.open_store(whole)
    np.testing.assert_allclose(got.acts.values, want.acts.values, rtol=1e-5, atol=1e-6)
    for name in ("class", "pair_id", "text_hash", "text_index", "token_index"):
        assert got[name].values.tolist() == want[name].values.tolist()
    (run,) = store_info(sharded)["models"][0]["runs"]
    assert run["state"] == "complete" and run["merged"] == 2

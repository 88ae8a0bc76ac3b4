"""Damage is detected where it is read: chunks deleted or flipped, attributes edited, a cache
damaged or replaced while it is read; one lock per store whatever its spelling."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import DamagedStoreError, StoreError
from actstore.stores.lock import WriterLock
from actstore.stores.moments import read_stats_cache, write_stats_cache

FIXTURES = Path(__file__).resolve().parents[1] / "contracts" / "fixtures"
GROUP = "tiny-llama"


@pytest.fixture(scope="module")
def clean_store(run, tmp_path_factory, tiny_model_dirs):
    tmp = tmp_path_factory.mktemp("integrity")
    data = tmp / "pairs.json"
    data.write_text(json.dumps([{"positive": f"I kept promise {i}.", "negative": f"I broke promise {i}."}
                                for i in range(8)]))
    store = tmp / "clean.zarr"
    assert run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1,2", "-s", store, "-q").exit_code == 0
    return store


@pytest.fixture
def store(clean_store, tmp_path):
    copy = tmp_path / "acts.zarr"
    shutil.copytree(clean_store, copy)
    return copy


def chunk(store, array: str, key: str = "c/0/0/0") -> Path:
    path = store / GROUP / array / key
    assert path.is_file(), sorted(p.name for p in path.parent.iterdir())
    return path


def flip(path: Path, at: int = -8) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def cache_chunk(store, array: str) -> Path:
    stats = store / GROUP / "stats"
    current = json.loads((stats / "zarr.json").read_text())["attributes"]["current"]
    return stats / current / array / "c/0/0/0" if array != "count" else stats / current / array / "c/0/0"


DAMAGE = {
    "acts chunk deleted": (lambda s: chunk(s, "acts", "c/0/1/0").unlink(), "'tiny-llama/acts' chunk c/0/1/0: missing"),
    "acts chunk flipped": (lambda s: flip(chunk(s, "acts")), "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch"),
    "acts chunk cut short": (lambda s: chunk(s, "acts").write_bytes(chunk(s, "acts").read_bytes()[:40]),
                             "'tiny-llama/acts' chunk c/0/0/0"),
    "class chunk deleted": (lambda s: chunk(s, "class", "c/0").unlink(), "'tiny-llama/class' chunk c/0: missing"),
    "class chunk flipped": (lambda s: flip(chunk(s, "class", "c/0"), 12), "'tiny-llama/class' chunk c/0: checksum"),
    "pair_id chunk flipped": (lambda s: flip(chunk(s, "pair_id", "c/0"), 12), "'tiny-llama/pair_id' chunk c/0"),
    # a FIFO in a chunk's place blocked every read for ever (issue 31 #11)
    "acts chunk a FIFO": (lambda s: fifo(chunk(s, "acts")), "'tiny-llama/acts' chunk c/0/0/0: not a regular file"),
    "class chunk a FIFO": (lambda s: fifo(chunk(s, "class", "c/0")), "'tiny-llama/class' chunk c/0: not a regular"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_chunk_is_refused_naming_store_array_and_chunk(run, store, case):
    damage, message = DAMAGE[case]
    damage(store)
    with pytest.raises(DamagedStoreError) as err:
        if case.startswith("acts"):  # the coordinates are checked on open, acts where computed on
            actstore.compute_stats(store, force=True)
        else:
            actstore.open_store(store)
    assert message in str(err.value), str(err.value)[:600]
    if case.startswith("class"):  # the statistics read the labels on their own (stores.reader.class_codes)
        with pytest.raises(DamagedStoreError, match=message):
            actstore.compute_stats(store, force=True)
    if not case.startswith("pair_id"):  # stats reads acts and class, nothing else
        result = run("stats", "-s", store, "--force", "-q")
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert "acts.zarr" in result.output and message in result.output, result.output
        assert "actstore verify" in result.output
    report = run("verify", store)
    assert report.exit_code == 1 and message in report.output, report.output
    assert "DAMAGED" in report.output


def test_chunk_files_of_two_layers_exchanged_are_named_by_verify_and_refused_by_stats_and_enr(run, store, tmp_path):
    """Issue 31 #6: each file passes its own CRC32C, so verify said "no damage found" and enr --layer 2
    built its vector from layer 1's activations."""
    a, b = chunk(store, "acts", "c/0/0/0"), chunk(store, "acts", "c/0/1/0")
    a.rename(tmp_path / "swap")
    b.rename(a)
    (tmp_path / "swap").rename(b)
    report = run("verify", store)
    assert report.exit_code == 1, report.output
    for key in ("c/0/0/0", "c/0/1/0"):
        assert f"'tiny-llama/acts' chunk {key}: not the chunk recorded for this place" in report.output, report.output
    shutil.rmtree(store / GROUP / "stats")  # the capture's cache, computed before the exchange, would be used
    for args in (["stats", "-s", store, "--force"], ["enr", "-s", store, "--layer", "2", "--k", "4",
                                                       "-o", tmp_path / "v.safetensors"]):
        result = run(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "acts.zarr' group 'tiny-llama' is damaged: array 'tiny-llama/acts' chunk c/0/" in result.output
        assert "not the chunk recorded for this place" in result.output and "actstore verify" in result.output
    assert not (tmp_path / "v.safetensors").exists()


def test_verify_says_a_clean_store_is_good_and_counts_its_chunks(run, store):
    result = run("verify", store)
    assert result.exit_code == 0, result.output
    assert "no damage found" in result.output
    assert "2 of 2 chunks" not in result.output  # acts has 2 chunks, the coordinates 10 more, the layer 1
    assert "13 of 13 chunks good" in result.output, result.output


def test_verify_lists_the_good_chunks_beside_the_damaged_one(run, store):
    chunk(store, "acts", "c/0/1/0").unlink()
    result = run("verify", store)
    assert result.exit_code == 1
    assert "12 of 13 chunks good" in result.output and "c/0/1/0: missing" in result.output, result.output


@pytest.mark.parametrize("edit, message", [
    ({"n_samples": 999}, "n_samples is 999 but array 'acts' has 16 rows"),
    ({"layers": [1, 3]}, "attribute layers is [1, 3] but array 'layer' holds [1, 2]"),
    ({"hidden_size": 64}, "hidden_size 64"),
    ({"n_samples": "16"}, "attribute 'n_samples' is '16', expected int"),
    ({"runs": None}, "attribute 'runs' is None"),
])
def test_attributes_that_do_not_describe_the_arrays_are_refused_on_open(run, store, tiny_model_dirs, edit, message):
    group = zarr.open_group(store / GROUP, mode="a")
    group.update_attributes(edit)
    for args in (["stats", "-s", store], ["enr", "-s", store, "--layer", "1", "--k", "4", "-o",
                                          store.parent / "v.safetensors"]):
        result = run(*args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    info = run("info", store)  # info lists the group as unreadable instead of crashing
    assert info.exit_code == 0 and "cannot be read" in info.output and message in info.output, info.output
    with pytest.raises(DamagedStoreError, match="edited or damaged"):
        actstore.open_store(store)


def test_an_edited_n_samples_is_never_filled_with_empty_class_rows_by_an_append(run, store, tiny_model_dirs, tmp_path):
    zarr.open_group(store / GROUP, mode="a").update_attributes({"n_samples": 20})
    more = tmp_path / "more.json"
    more.write_text(json.dumps([{"positive": "Yes indeed.", "negative": "No way."}]))
    result = run("capture", "-m", tiny_model_dirs["llama"], "-d", more, "-l", "1,2", "-s", store, "-q")
    assert result.exit_code == 1 and "n_samples is 20 but array 'acts' has 16 rows" in result.output, result.output
    assert zarr.open_group(store / GROUP)["acts"].shape[0] == 16  # nothing appended


@pytest.mark.parametrize("array, damage", [("var", "delete"), ("mean", "flip"), ("count", "delete"),
                                           ("var", "flip")])
def test_damaged_cached_statistics_are_recomputed_with_a_warning(run, store, array, damage):
    want = actstore.compute_stats(store, force=True)
    path = cache_chunk(store, array)
    path.unlink() if damage == "delete" else flip(path)
    with pytest.warns(UserWarning, match="cached statistics of store .*acts.zarr.* group 'tiny-llama' are damaged"):
        got = actstore.compute_stats(store)
    for name in ("count", "mean", "var"):
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert read_stats_cache(zarr.open_group(store / GROUP)) is not None  # replaced by a good one
    result = run("stats", "-s", store, "-q")
    assert result.exit_code == 0 and "Warning" not in result.output


def test_an_old_store_without_checksums_still_opens_and_verify_says_what_it_cannot_check(run, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(FIXTURES / "store-v1.zarr", old)
    result = run("verify", old)
    assert result.exit_code == 0 and "no checksums" in result.output, result.output
    assert "no record of each chunk's place" in result.output, result.output  # issue 31 #6: written before it
    assert actstore.open_stats(old)["count"].values.sum() == 12  # the first cache layout still reads
    (old / "fixture--model" / "acts" / "c" / "0" / "1" / "0").unlink()
    result = run("verify", old)
    assert result.exit_code == 1 and "c/0/1/0: missing" in result.output, result.output


def test_a_torn_cache_is_never_read_while_another_process_replaces_it(store):
    """Readers see the old cache or the new one: each read equals one of two written caches."""
    first = actstore.compute_stats(store, force=True)
    second = first.copy(deep=True)
    second["mean"].values[...] += 1.0
    second["var"].values[...] *= 2.0
    group = zarr.open_group(store / GROUP, mode="a")
    stop = threading.Event()
    writes = []

    def writer():
        i = 0
        while not stop.is_set() and i < 60:
            write_stats_cache(store, group, (first, second)[i % 2])
            writes.append(i)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    reads = torn = 0
    reader_group = zarr.open_group(store / GROUP, mode="r")
    try:
        while thread.is_alive():
            got = read_stats_cache(reader_group)
            if got is None:
                torn += 1
                continue
            reads += 1
            matches = [np.array_equal(got["mean"].values, s["mean"].values)
                       and np.array_equal(got["var"].values, s["var"].values) for s in (first, second)]
            assert any(matches), "a reader accepted a mix of two caches"
    finally:
        stop.set()
        thread.join()
    assert len(writes) == 60 and reads > 20, (len(writes), reads)
    assert torn == 0, f"{torn} of {reads + torn} reads found no cache while it was replaced"
    subgroups = [name for name, _ in zarr.open_group(store / GROUP / "stats").groups()]
    assert len(subgroups) <= 2  # old caches are deleted


def test_a_path_and_its_file_url_share_one_lock_and_create_the_same_store(run, store, tiny_model_dirs, tmp_path):
    url = "file://" + str(store)
    with WriterLock(store, GROUP).acquire():
        with pytest.raises(StoreError, match="is being written by pid"):
            WriterLock(url, GROUP).acquire()
    with WriterLock(url + "/", GROUP).acquire():
        with pytest.raises(StoreError, match="is being written by pid"):
            WriterLock(str(store.parent / "." / store.name), GROUP).acquire()
    data = tmp_path / "p.json"
    data.write_text(json.dumps([{"positive": "Yes.", "negative": "No."}] * 2))
    new = tmp_path / "by-url.zarr"
    result = run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", f"file://{new}", "-q")
    assert result.exit_code == 0, result.output
    assert actstore.open_store(new).sizes["sample"] == 4
    assert actstore.open_store(f"file://{new}").sizes["sample"] == 4


def test_a_class_of_one_row_is_not_taken_for_a_damaged_cache(run, tmp_path, tiny_model_dirs):
    """Its variance is NaN (0/0, ddof=1): that is the statistic, not damage."""
    import warnings

    data = tmp_path / "one.jsonl"
    data.write_text('{"text": "alpha", "label": "pos"}\n{"text": "beta", "label": "neg"}\n'
                    '{"text": "gamma", "label": "neg"}\n')
    store = tmp_path / "one.zarr"
    assert run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0
    first = actstore.compute_stats(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = actstore.open_stats(store)
    assert np.isnan(cached["var"].sel({"class": "pos"}).values).all()
    assert cached.attrs["data_version"] == first.attrs["data_version"]


def test_the_whitening_pass_names_a_damaged_chunk_behind_a_valid_cache(run, store):
    actstore.compute_stats(store)  # the cache is good; the covariance pass reads the rows themselves
    flip(chunk(store, "acts"))
    result = run("enr", "-s", store, "--layer", "1", "--k", "4", "--whiten", "-o", store.parent / "w.safetensors")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "'tiny-llama/acts' chunk c/0/0/0: checksum mismatch" in result.output, result.output


def test_a_chunk_the_reader_may_not_read_is_not_called_damaged(run, store, monkeypatch):
    # As root (CI) chmod does not stop a read: the denial is simulated where zarr reads.
    real = zarr.Array.__getitem__

    def denied(self, key):
        if self.path.endswith("acts"):
            raise PermissionError(13, "Permission denied")
        return real(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", denied)
    result = run("verify", store)
    assert result.exit_code == 1
    assert "cannot be read (Permission denied); check the store's file permissions" in result.output
    assert "DAMAGED" not in result.output and "capture them again" not in result.output


@pytest.mark.parametrize("array", ["order", "question"])
def test_verify_names_a_twin_array_a_group_promises_but_lacks(run, tmp_path, tiny_model_dirs, array):
    # issue 31 #7: a group captured with option-swapped twins whose 'order' or 'question' array was
    # deleted passed verify ("no damage found"), and the letter control then took it for an old group
    data = tmp_path / "ab.json"
    data.write_text(json.dumps([{"positive": f"Question {i}?\n\nChoices:\n(A) yes\n(B) no\n(A)",
                                 "negative": f"Question {i}?\n\nChoices:\n(A) yes\n(B) no\n(B)"} for i in range(4)]))
    store = tmp_path / "ab.zarr"
    assert run("capture", "-m", tiny_model_dirs["llama"], "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0
    assert run("verify", store).exit_code == 0
    shutil.rmtree(store / GROUP / array)
    result = run("verify", store)
    assert result.exit_code == 1 and f"array {array!r} is missing" in result.output, result.output

"""Golden files: today's reader reads the stores and vector files of format version 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import actstore

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def expected_acts() -> np.ndarray:
    return (np.arange(6 * 2 * 4, dtype=np.float32).reshape(6, 2, 4) % 7) * np.float32(0.5) - 1


def test_store_v1_opens_with_its_coordinates(tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(FIXTURES / "store-v1.zarr", store)  # the checkout may be read-only
    ds = actstore.open_store(store)
    np.testing.assert_array_equal(ds.acts.values, expected_acts())
    assert ds["layer"].values.tolist() == [1, 3]
    assert ds["class"].values.tolist() == ["pos", "neg"] * 3
    assert ds["pair_id"].values.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.attrs["model_id"] == "fixture/model" and ds.attrs["schema_version"] == 1
    stats = actstore.open_stats(store)  # cached statistics are still valid
    np.testing.assert_allclose(stats.sel({"class": "pos"})["mean"].values, expected_acts()[0::2].mean(0))


def test_vector_v1_reads_back():
    vec = actstore.load_vector(FIXTURES / "vector-v1.safetensors")
    assert vec.layer == 3 and vec.k == 2 and vec.info.format == "actstore.vector/1"
    assert vec.info.class_counts == {"pos": 3, "neg": 3}
    assert vec.info.method == "enr"  # written as "enr-topk" before the method registry: an alias
    acts = expected_acts()[:, 1].astype(np.float64)
    diff = acts[0::2].mean(0) - acts[1::2].mean(0)
    np.testing.assert_allclose(vec.vector[vec.indices], diff[vec.indices], rtol=1e-6)
    assert np.count_nonzero(vec.vector) <= 2


def test_store_with_checksums_opens_and_verifies_clean(tmp_path):
    """Today's format: CRC32C in every array's codecs, NaN fill for acts, the statistics cache
    in a subgroup named by stats/'s attribute 'current'."""
    store = tmp_path / "store.zarr"
    shutil.copytree(FIXTURES / "store-v1-checksums.zarr", store)
    ds = actstore.open_store(store)
    np.testing.assert_array_equal(ds.acts.values, expected_acts())
    stats = actstore.open_stats(store)
    np.testing.assert_allclose(stats.sel({"class": "neg"})["mean"].values, expected_acts()[1::2].mean(0))
    (report,) = actstore.verify_store(store)
    assert report.ok and report.checksums and report.stats == "ok" and report.checked == 8

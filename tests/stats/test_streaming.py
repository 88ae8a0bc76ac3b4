"""Welford/Chan moments as a Dask reduction against float64 two-pass statistics."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

from actstore.stats.streaming import chan_merge, moments


def two_pass(x: np.ndarray):
    """Float64 two-pass mean and M2 per column, with correctly rounded sums (math.fsum)
    so the reference itself does not lose digits on offset data."""
    x = x.astype(np.float64).reshape(x.shape[0], -1)
    mean = np.array([math.fsum(col) / len(col) for col in x.T])
    m2 = np.array([math.fsum((col - m) ** 2) for col, m in zip(x.T, mean)])
    return x.shape[0], mean, m2


def rel_err(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.mark.parametrize("split_every", [None, 2, 3])
@pytest.mark.parametrize("chunks", [(7, 3, 5), ((1, 13, 2, 40, 9, 35), 3, 5), (100, 3, 5)])
def test_chan_merge_matches_two_pass_on_uneven_chunks(chunks, split_every):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3, 5)) * rng.uniform(0.1, 10, size=(1, 3, 5)) + rng.normal(size=(1, 3, 5))
    result = moments(da.from_array(x, chunks=chunks), split_every=split_every).compute()
    n, mean, m2 = two_pass(x)
    mean, m2 = mean.reshape(3, 5), m2.reshape(3, 5)
    assert result.shape == (3, 3, 5)
    assert np.all(result[0] == n)
    assert rel_err(result[1], mean) < 1e-9
    assert rel_err(result[2], m2) < 1e-9


@pytest.mark.parametrize("offset", [1e6, 1e8])
@pytest.mark.parametrize("split_every", [None, 2, 3])
def test_chan_merge_matches_two_pass_on_offset_data(offset, split_every):
    rng = np.random.default_rng(1)
    x = offset + 1e-3 * rng.normal(size=(1000, 4))
    result = moments(da.from_array(x, chunks=((1, 17, 333, 249, 400),)[0:1] + (4,)), split_every=split_every).compute()
    n, mean, m2 = two_pass(x)
    assert rel_err(result[1], mean) < 1e-9
    # Unbiased variance, as the store reports it.
    assert rel_err(result[2] / (n - 1), m2 / (n - 1)) < 1e-9


def test_float16_input_accumulates_in_float64():
    rng = np.random.default_rng(2)
    x = (100 + rng.normal(size=(5000, 8))).astype(np.float16)
    result = moments(da.from_array(x, chunks=(512, 8))).compute()
    n, mean, m2 = two_pass(x)
    assert result.dtype == np.float64
    assert rel_err(result[1], mean) < 1e-12
    assert rel_err(result[2], m2) < 1e-9
    # dask's own var on float16 would accumulate in float16; ours does not.


def test_chan_merge_with_an_empty_state_is_the_identity():
    a = {"n": np.array([3.0]), "mean": np.array([2.0]), "m2": np.array([5.0])}
    empty = {"n": np.array([0.0]), "mean": np.array([0.0]), "m2": np.array([0.0])}
    for merged in (chan_merge(a, empty), chan_merge(empty, a)):
        for key in a:
            np.testing.assert_array_equal(merged[key], a[key])


def test_statistics_open_the_store_once_to_read_and_once_more_to_cache(tmp_path, tiny_model_dirs, pairs_file,
                                                                       monkeypatch):
    # Each open is a round trip on an object store: the chain takes the opened group.
    import zarr

    import actstore

    store = tmp_path / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), pairs_file, store, layers="1", progress=False)
    opens = []
    original = zarr.open_group
    monkeypatch.setattr(zarr, "open_group", lambda *a, **kw: opens.append(kw.get("mode")) or original(*a, **kw))
    actstore.compute_stats(store, force=True)
    assert opens == ["r", "a"]  # read the data; write the cache
    opens.clear()
    actstore.compute_stats(store)
    assert opens == ["r"]  # cached
    opens.clear()
    actstore.build_vector(store, 1, "whitened", 4)
    assert opens == ["r"]


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_window_moments_equal_the_torch_reduction_on_offset_data(offset):
    from actstore.moments import Moments
    from actstore.stats.streaming import window_moments

    rng = np.random.default_rng(3)
    acts = (offset + rng.standard_normal((301, 3, 16))).astype(np.float32)
    labels = rng.choice(["neg", "pos", "zz"], size=301)
    base = Moments.empty((3, 16)).add(acts[:50], labels[:50])
    fused = base.merge(window_moments(acts[50:], labels[50:]))
    reference = base.add(acts[50:], labels[50:])
    assert fused.classes == reference.classes
    np.testing.assert_array_equal(fused.n, reference.n)
    np.testing.assert_allclose(fused.mean, reference.mean, rtol=1e-12)
    np.testing.assert_allclose(fused.m2, reference.m2, rtol=1e-9)
    exact = acts[labels == "pos"].astype(np.float64)
    index = fused.classes.index("pos")
    np.testing.assert_allclose(fused.m2[index], ((exact - exact.mean(0)) ** 2).sum(0), rtol=1e-9)


@pytest.mark.parametrize("zarr_reads", ["0", "1"])  # chunk files read directly, or through zarr
@pytest.mark.parametrize("rows", [1, 7, 1 << 17])
def test_class_codes_read_in_slices_equal_numpy_unique(tmp_path, monkeypatch, rows, zarr_reads):
    """The labels read a slice at a time give np.unique's sorted classes and inverse, whatever
    order the classes first appear in (here a class first seen in a later slice sorts first)."""
    import zarr

    from actstore.stores.chunks import ZARR_READS
    from actstore.stores.reader import class_codes

    monkeypatch.setenv(ZARR_READS, zarr_reads)

    labels = np.array(["pos", "neg", "pos", "zeta", "pos", "alpha", "neg", "neg", "zeta", "alpha", "pos"])
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_array("class", shape=labels.shape, chunks=(4,), dtype=str, fill_value="")[:] = labels
    for n in (len(labels), 5):
        classes, codes = class_codes(root, tmp_path / "s.zarr", n, rows=rows)
        expected, inverse = np.unique(labels[:n], return_inverse=True)
        assert classes == expected.tolist()
        np.testing.assert_array_equal(codes, inverse)
        assert codes.dtype == np.int64

"""Moments over a resample of the training rows against numpy on the rows repeated as their weights say."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

import actstore
from actstore.errors import ActstoreError, StatsError
from actstore.moments import Moments
from actstore.stats.subsets import (
    Resample,
    resample_units,
    row_weights,
    subset_moments,
    subset_statistics,
    weighted_class_moments,
)
from actstore.stores.group import StoreGroup
from actstore.stores.schema import CaptureSpec
from actstore.stores.writer import ActivationWriter


def repeated_moments(x: np.ndarray, codes: np.ndarray, weights: np.ndarray, n_classes: int):
    """n, mean and M2 per class of ``x``'s rows repeated ``weights`` times: written out with
    correctly rounded sums (math.fsum), so the reference loses no digits on offset data."""
    rows = np.repeat(np.arange(len(x)), weights)
    flat = x.reshape(len(x), -1).astype(np.float64)
    out = np.zeros((3, n_classes, flat.shape[1]))
    for c in range(n_classes):
        mine = flat[rows[codes[rows] == c]]
        out[0, c] = len(mine)
        for j in range(flat.shape[1]):
            mean = math.fsum(mine[:, j]) / len(mine)
            out[1, c, j], out[2, c, j] = mean, math.fsum((mine[:, j] - mean) ** 2)
    return out.reshape((3, n_classes, *x.shape[1:]))


def rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("offset", [0.0, 1e6])
@pytest.mark.parametrize("split_every", [None, 2, 3])
@pytest.mark.parametrize("chunks", [(7, 3, 5), ((1, 13, 2, 40, 9, 35), 3, 5), (16, 1, 2)])
def test_weighted_moments_equal_numpy_on_the_repeated_rows(offset, split_every, chunks):
    rng = np.random.default_rng(0)
    x = offset + rng.normal(size=(100, 3, 5)) * rng.uniform(0.1, 10, size=(1, 3, 5))
    codes = rng.integers(0, 2, 100)
    weights = rng.integers(0, 4, 100)  # zeros (rows left out) and repeats
    got = weighted_class_moments(da.from_array(x, chunks=chunks), codes, weights, 2, split_every).compute()
    want = repeated_moments(x, codes, weights, 2)
    assert np.all(got[0] == want[0])
    assert rel_err(got[1], want[1]) < 1e-10
    assert rel_err(got[2], want[2]) < 1e-10


def test_weights_of_one_give_the_plain_moments_and_all_zero_is_refused():
    x = np.arange(24.0).reshape(8, 3)
    codes = np.array([0, 1] * 4)
    got = weighted_class_moments(x, codes, np.ones(8, dtype=int), 2).compute()
    np.testing.assert_allclose(got[1], [x[codes == 0].mean(0), x[codes == 1].mean(0)], rtol=1e-15)
    np.testing.assert_allclose(got[2] / 3, [x[codes == 0].var(0, ddof=1), x[codes == 1].var(0, ddof=1)], rtol=1e-14)
    with pytest.raises(StatsError, match="every weight is 0"):
        weighted_class_moments(x, codes, np.zeros(8, dtype=int), 2)


@pytest.mark.parametrize("spec, want", [("bootstrap:3", Resample("bootstrap", 3)),
                                        ("half:2/3", Resample("half", 0, 2, 3)),
                                        ("half:1/2:5", Resample("half", 5, 1, 2))])
def test_specs_parse_and_print_back(spec, want):
    assert Resample.parse(spec) == want and str(want) == spec


@pytest.mark.parametrize("spec", ["boot:1", "bootstrap:x", "bootstrap:-1", "half:3/2", "half:0/2", "half:1/1",
                                  "half:1"])
def test_bad_specs_are_refused_naming_the_field(spec):
    with pytest.raises(StatsError, match=r"train_resample .*expected bootstrap:SEED") as err:
        Resample.parse(spec)
    assert err.value.params == ("train_resample",)


def test_parts_partition_the_units_of_each_stratum_and_the_bootstrap_keeps_stratum_sizes():
    # 9 pairs (pos and neg), then 4 unpaired pos units and 3 unpaired neg units: three strata.
    classes = np.array(["pos", "neg"] * 9 + ["pos"] * 4 + ["neg"] * 3)
    units = np.concatenate([np.repeat(np.arange(9), 2), np.arange(100, 107)])
    unit_ids, unit_of_row, strata = resample_units(classes, units)
    assert unit_ids.tolist() == [*range(9), *range(100, 107)]
    assert len(set(strata[:9])) == 1 and len(set(strata[9:13])) == 1 and len(set(strata[13:])) == 1
    assert len(set(strata)) == 3
    parts = np.stack([Resample("half", 7, i, 3).unit_weights(strata) for i in (1, 2, 3)])
    assert np.all(parts.sum(0) == 1)  # disjoint, and together every unit
    for stratum in np.unique(strata):
        sizes = parts[:, strata == stratum].sum(1)
        assert sizes.max() - sizes.min() <= 1  # near-equal parts within each stratum
    boot = Resample("bootstrap", 1).unit_weights(strata)
    for stratum in np.unique(strata):
        assert boot[strata == stratum].sum() == np.sum(strata == stratum)
    assert not np.array_equal(boot, Resample("bootstrap", 2).unit_weights(strata))


def write_store(path, acts, classes, pair_ids, questions=None) -> StoreGroup:
    spec = CaptureSpec(model_id="m", model_fingerprint="f", model_type=None, hidden_size=acts.shape[2],
                       layers=list(range(acts.shape[1])), position="all")
    n = len(acts)
    coords = {"class": np.asarray(classes), "pair_id": np.asarray(pair_ids), "text_hash": np.array(["0" * 16] * n),
              "text_index": np.arange(n), "token_index": np.zeros(n, dtype=np.int64)}
    if questions is not None:
        coords["question"] = np.asarray(questions)
    with ActivationWriter.open(path, "g", spec) as writer:
        writer.begin_run("x", "0" * 64, n, False, {})
        writer.append(acts.astype(np.float32), coords, n, int(np.max(pair_ids)))
    return StoreGroup.open(path)


@pytest.fixture
def offset_store(tmp_path):
    """30 pairs (pos, neg), two token rows per text, offset 1e6: 120 rows, 2 layers, 6 coordinates."""
    rng = np.random.default_rng(3)
    n_pairs = 30
    classes = np.tile(["pos", "pos", "neg", "neg"], n_pairs)
    pair_ids = np.repeat(np.arange(n_pairs), 4)
    acts = 1e6 + rng.normal(size=(4 * n_pairs, 2, 6)) * 50 + (classes == "pos")[:, None, None]
    return write_store(tmp_path / "o.zarr", acts, classes, pair_ids), acts, classes, pair_ids


def test_bootstrap_statistics_of_a_store_equal_numpy_on_the_drawn_pairs(offset_store):
    store, acts, classes, pair_ids = offset_store
    stored = store.dataset(coords=()).acts.values  # as written (float32)
    weights = row_weights(store, "bootstrap:4")
    draws = np.bincount(np.random.default_rng(4).integers(0, 30, 30), minlength=30)  # the rule, written out
    np.testing.assert_array_equal(weights, draws[pair_ids])
    stats = subset_statistics(store, "bootstrap:4")
    codes = (classes == "pos").astype(int)  # classes sorted: neg 0, pos 1
    want = repeated_moments(stored, codes, weights, 2)
    assert stats["class"].values.tolist() == ["neg", "pos"]
    assert stats["count"].values[:, 0].tolist() == [int(want[0, 0, 0, 0]), int(want[0, 1, 0, 0])]
    assert rel_err(stats["mean"].values, want[1]) < 1e-10
    assert rel_err(stats["var"].values, want[2] / (want[0] - 1)) < 1e-10
    assert stats.attrs["train_resample"] == "bootstrap:4" and stats.attrs["n_samples"] == weights.sum()


def test_the_parts_of_a_store_merge_back_to_its_statistics(offset_store):
    store, *_ = offset_store
    parts = [subset_moments(store, row_weights(store, f"half:{i}/3")) for i in (1, 2, 3)]
    assert [p.total for p in parts] == [40, 40, 40]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = Moments.from_dataset(actstore.compute_stats(store.location))
    np.testing.assert_array_equal(merged.n, whole.n)
    assert rel_err(merged.mean, whole.mean) < 1e-10
    assert rel_err(merged.m2, whole.m2) < 1e-8  # the cache holds var in float64: M2 = var (n - 1) rounds


def test_the_question_is_the_unit_where_the_store_records_one(tmp_path):
    # Two pairs per question (a pair and its option-swapped twin): both are drawn together.
    rng = np.random.default_rng(5)
    classes = np.tile(["pos", "neg"], 16)
    pair_ids = np.repeat(np.arange(16), 2)
    questions = pair_ids // 2
    store = write_store(tmp_path / "q.zarr", rng.normal(size=(32, 1, 4)), classes, pair_ids, questions)
    for spec in ("bootstrap:0", "half:1/2", "half:2/2"):
        weights = row_weights(store, spec)
        for q in range(8):
            assert len(set(weights[questions == q])) == 1
    half = row_weights(store, "half:1/2")
    assert half.sum() == 16 and np.array_equal(half + row_weights(store, "half:2/2"), np.ones(32))


def test_a_stats_only_store_is_refused(tmp_path, tiny_model_dirs, pairs_file):
    path = tmp_path / "so.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), pairs_file, path, layers="1", stats_only=True,
                              progress=False)
    with pytest.raises(ActstoreError, match="stats-only"):
        subset_statistics(StoreGroup.open(path), "half:1/2")


def test_the_module_examples_run(tmp_path, tiny_model_dirs, monkeypatch):
    import doctest
    import json

    import actstore.stats.subsets as module
    from tests.conftest import PAIRS

    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), tmp_path / "pairs.json", tmp_path / "acts.zarr",
                              layers="1,2", progress=False)
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(module, extraglobs={"StoreGroup": StoreGroup})
    assert result.attempted >= 3 and result.failed == 0

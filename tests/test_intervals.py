"""Intervals against written-out paired computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actstore.intervals import Interval, inflation_interval, paired_mean_interval, ratio_interval


def test_paired_t_interval_matches_the_formula_written_out():
    treated = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52, 0.63, 0.58])
    control = np.array([0.50, 0.52, 0.60, 0.50, 0.58, 0.55, 0.61, 0.49, 0.57, 0.50])
    diffs = treated - control
    mean = sum(diffs) / 10
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 9)
    t_975_9 = 2.2621571627409915  # Student t, 97.5% quantile, 9 degrees of freedom (tables)
    got = paired_mean_interval(treated, control)
    assert got.estimate == pytest.approx(mean, rel=1e-12)
    assert got.low == pytest.approx(mean - t_975_9 * sd / math.sqrt(10), rel=1e-9)
    assert got.high == pytest.approx(mean + t_975_9 * sd / math.sqrt(10), rel=1e-9)
    assert got.excludes(0.0)


def test_paired_interval_uses_the_pairing():
    # Large spread between items, tiny consistent shift: only a paired interval sees it.
    rng = np.random.default_rng(0)
    control = rng.normal(0, 1, 200)
    treated = control + 0.05 + rng.normal(0, 0.01, 200)
    assert paired_mean_interval(treated, control).excludes(0.0)
    shuffled = paired_mean_interval(treated, rng.permutation(control))
    assert not shuffled.excludes(0.0)


def test_a_single_item_has_no_interval():
    got = paired_mean_interval([1.0], [0.5])
    assert got.estimate == 0.5 and math.isnan(got.low) and not got.excludes(0.0)


def _percentile_bootstrap(statistic, arrays, n_resamples, seed):
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    draws = [statistic(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(n_resamples, n))]
    return np.percentile(draws, [2.5, 97.5])


def test_inflation_interval_is_a_paired_bootstrap_over_windows():
    rng = np.random.default_rng(1)
    tokens = np.full(24, 256)
    base = rng.normal(4.0, 0.5, 24) * tokens  # window NLLs vary a lot between windows
    steered = base + rng.normal(0.02, 0.01, 24) * tokens
    got = inflation_interval(steered, base, tokens, n_resamples=4000)
    assert got.estimate == pytest.approx(math.exp((steered.sum() - base.sum()) / tokens.sum()), rel=1e-12)

    def statistic(s, b, t):
        return math.exp((s.sum() - b.sum()) / t.sum())

    low, high = _percentile_bootstrap(statistic, (steered, base, tokens), 4000, 7)
    assert got.low == pytest.approx(low, abs=0.002)
    assert got.high == pytest.approx(high, abs=0.002)
    assert got.excludes(1.0) and got.low > 1.0


def test_ratio_interval_is_a_paired_bootstrap_over_items():
    rng = np.random.default_rng(2)
    control = rng.uniform(0.3, 0.7, 150)
    dense = control + rng.normal(0.10, 0.05, 150)
    sparse = control + rng.normal(0.06, 0.05, 150)
    got = ratio_interval(sparse, dense, control, n_resamples=4000)
    assert got.estimate == pytest.approx((sparse - control).mean() / (dense - control).mean(), rel=1e-12)

    def statistic(a, b, c):
        return (a - c).mean() / (b - c).mean()

    low, high = _percentile_bootstrap(statistic, (sparse, dense, control), 4000, 3)
    assert got.low == pytest.approx(low, abs=0.03)
    assert got.high == pytest.approx(high, abs=0.03)
    assert got.low < got.estimate < got.high


def test_bootstrap_intervals_are_reproducible():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert inflation_interval(a, b, np.ones(30)) == inflation_interval(a, b, np.ones(30))


def test_interval_excludes_and_formats():
    assert Interval(0.1, 0.02, 0.2).excludes(0.0)
    assert not Interval(0.1, -0.02, 0.2).excludes(0.0)
    assert Interval(-0.1, -0.2, -0.01).excludes(0.0)
    assert f"{Interval(0.1234, 0.05, 0.2):.2f}" == "0.12 [0.05, 0.20]"


def test_stratified_shift_weighs_each_letter_equally():
    from scipy import stats

    from actstore.intervals import stratified_mean_interval

    rng = np.random.default_rng(4)
    # A vector that only pushes letter A: +0.1 on the 30 A items, -0.1 on the 10 B items.
    strata = np.array(["A"] * 30 + ["B"] * 10 + ["C"])
    base = rng.uniform(0.2, 0.8, 41)
    treated = base + np.where(strata == "A", 0.1, -0.1) + rng.normal(0, 0.01, 41)
    plain = paired_mean_interval(treated, base)
    balanced, per = stratified_mean_interval(treated, base, strata)
    assert plain.excludes(0) and plain.estimate > 0.04  # the letter split makes a "shift"
    assert not balanced.excludes(0) and abs(balanced.estimate) < 0.01
    d = treated - base
    a, b = d[strata == "A"], d[strata == "B"]
    assert balanced.estimate == pytest.approx((a.mean() + b.mean()) / 2)  # C (one item) left out
    va, vb = a.var(ddof=1) / 30 / 4, b.var(ddof=1) / 10 / 4
    df = (va + vb) ** 2 / (va**2 / 29 + vb**2 / 9)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert balanced.high - balanced.estimate == pytest.approx(half)
    assert per["A"].estimate == pytest.approx(a.mean()) and math.isnan(per["C"].low)


def test_weighted_ratio_gives_each_stratum_the_same_weight():
    from actstore.intervals import stratum_weights

    strata = ["A"] * 6 + ["B"] * 2 + ["C"]
    w = stratum_weights(strata)
    np.testing.assert_allclose(w, [1 / 6] * 6 + [1 / 2] * 2 + [0.0])
    c = np.zeros(9)
    b = np.array([1.0] * 6 + [3.0] * 2 + [100.0])  # dense: balanced mean (1 + 3) / 2 = 2
    a = np.array([0.5] * 6 + [1.5] * 2 + [-100.0])  # sparse: balanced mean 1 -> half of dense
    assert ratio_interval(a, b, c, weights=w).estimate == pytest.approx(0.5)
    assert ratio_interval(a, b, c).estimate != pytest.approx(0.5)

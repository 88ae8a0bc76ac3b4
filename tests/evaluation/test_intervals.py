"""Intervals against written-out paired computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actstore.evaluation.intervals import (
    Interval,
    bh_q_values,
    bootstrap_p_value,
    holm_adjusted,
    inflation_interval,
    paired_mean_interval,
    paired_t_p_value,
    ratio_interval,
    resample_counts,
)


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


def test_perplexity_interval_resamples_documents_not_windows():
    rng = np.random.default_rng(5)
    documents = np.repeat(np.arange(8), 4)  # 8 documents of 4 windows
    tokens = np.full(32, 64)
    base = rng.normal(4.0, 0.3, 32) * tokens
    # Each document's windows move together: the damage differs between documents, not within.
    steered = base + np.repeat(rng.normal(0.05, 0.05, 8), 4) * tokens
    got = inflation_interval(steered, base, tokens, documents=documents, n_resamples=4000)
    assert got.estimate == pytest.approx(math.exp((steered.sum() - base.sum()) / tokens.sum()), rel=1e-12)
    per_doc = [np.array([a[documents == d].sum() for d in range(8)]) for a in (steered, base, tokens)]

    def statistic(s, b, t):
        return math.exp((s.sum() - b.sum()) / t.sum())

    low, high = _percentile_bootstrap(statistic, per_doc, 4000, 7)
    assert got.low == pytest.approx(low, abs=0.003) and got.high == pytest.approx(high, abs=0.003)
    by_window = inflation_interval(steered, base, tokens, n_resamples=4000)
    assert got.high - got.low > 1.5 * (by_window.high - by_window.low)  # windows alone claim too much
    one = inflation_interval(steered, base, tokens, documents=np.zeros(32))  # one document: windows
    assert one == inflation_interval(steered, base, tokens)


def test_benjamini_hochberg_q_values_match_the_written_out_step_up():
    p = np.array([0.001, 0.04, 0.03, 0.2, np.nan, 0.011, 0.5])
    got = bh_q_values(p)
    finite = p[np.isfinite(p)]
    m = finite.size
    order = np.argsort(finite)
    q = np.empty(m)
    running = 1.0
    for rank in range(m - 1, -1, -1):  # from the largest p down: q_(i) = min_{j >= i} p_(j) m / j
        running = min(running, finite[order[rank]] * m / (rank + 1))
        q[order[rank]] = running
    np.testing.assert_allclose(got[np.isfinite(p)], q, rtol=1e-12)
    assert math.isnan(got[4])


def test_holm_adjusted_p_values_match_the_written_out_step_down():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm_adjusted(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm_adjusted(p)[4])
    assert holm_adjusted([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_resample_counts_are_the_seeded_draws_counted():
    counts = resample_counts(7, 50, seed=3)
    draws = np.random.default_rng(3).integers(0, 7, size=(50, 7))
    for row, drawn in zip(counts, draws):
        assert row.tolist() == np.bincount(drawn, minlength=7).tolist()
    values = np.arange(7.0)
    np.testing.assert_allclose(counts @ values / 7, [values[d].mean() for d in draws])


def test_bootstrap_and_t_p_values():
    from scipy import stats

    assert bootstrap_p_value(np.full(99, 1.0)) == pytest.approx(2 / 100)
    assert bootstrap_p_value(np.r_[np.full(50, -1.0), np.full(50, 1.0)]) == 1.0
    diffs = np.array([0.3, 0.1, 0.4, -0.1, 0.2])
    assert paired_t_p_value(diffs, np.zeros(5)) == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    assert paired_t_p_value([1.0], [0.0]) != paired_t_p_value([1.0], [0.0])  # NaN with one unit

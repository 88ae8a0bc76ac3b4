"""Uncertainty of measured effects: paired intervals, bootstraps over questions and documents, corrections.

Every figure the evaluation reports is a paired comparison on the same data
(the steered and the unsteered model score the same questions, read the same
perplexity documents), so each interval comes from per-unit differences, and
each says its unit:

* :func:`paired_mean_interval`: the mean of per-unit differences with a
  Student-t interval (``mean ± t_{n-1, 1-a/2} · sd / sqrt(n)``), and
  :func:`paired_t_p_value` its two-sided p-value;
* :func:`inflation_interval`: perplexity inflation
  ``exp((Σ nll_steered − Σ nll_base) / Σ tokens)`` with a paired percentile
  bootstrap over documents (windows of one document move together), or over
  windows when the text is one document;
* :func:`ratio_interval`: a ratio of two mean shifts on the same items;
* :func:`resample_counts`: the bootstrap's draws as counts, shared by every
  figure of one sweep so that differences between vectors stay paired;
  :func:`bootstrap_p_value` the two-sided p-value of a bootstrap distribution;
* :func:`bh_q_values` (Benjamini-Hochberg) and :func:`holm_adjusted` (Holm):
  how many of many intervals would exclude zero by chance;
* :func:`bootstrap_p_mc_se` and :func:`holm_mc_se`: the Monte-Carlo standard error of a
  bootstrap p-value (and of its Holm adjustment), the part of it that another bootstrap seed
  would change (more resamples shrink it: :class:`Analysis`);
* :func:`margin_verdicts`: non-inferiority and equivalence (TOST) against a margin stated
  before the data are seen.

An :class:`Interval` says whether it excludes zero (or one, for ratios of
perplexities): that is what "distinguishable" means in every report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0  # bootstrap intervals are reproducible: the same data gives the same interval
TEST_LEVEL = 0.05  # the level of the one-sided tests against a margin (non-inferiority, each side of TOST)


@dataclass(frozen=True)
class Analysis:
    """How a folder's report reads its tables: ``margin`` (None: no margin tests), stated before the
    data are seen, on each contrast's own scale (its ``measure``), for the non-inferiority and
    equivalence verdicts of contrasts.csv (:func:`margin_verdicts`); ``resamples``, the bootstrap's
    draws behind every interval and p-value of frontier.csv, contrasts.csv and steerability.csv
    (their Monte-Carlo error shrinks as 1/sqrt(resamples): :func:`bootstrap_p_mc_se`);
    ``test_note``: what results.md says of the test set (its questions found in the training data,
    :mod:`actstore.evaluation.overlap`), None for nothing."""

    margin: float | None = None
    resamples: int = N_RESAMPLES
    test_note: str | None = None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``confidence`` interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (the effect is distinguishable from it)."""
        return bool(self.low > value or self.high < value)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def paired_mean_interval(treated, control, confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``treated − control`` (paired per item) with a t interval.

    ``treated, control: (n,)`` scores of the same items. With fewer than two
    items, or no spread, the interval is the point itself (n=1: NaN bounds).
    """
    from scipy import stats

    diffs = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    n = diffs.size
    if n == 0:
        return NAN_INTERVAL
    mean = float(diffs.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, confidence)
    sem = float(diffs.std(ddof=1)) / math.sqrt(n)
    t = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return Interval(mean, mean - t * sem, mean + t * sem, confidence)


def _bootstrap(data: tuple, statistic, confidence: float, n_resamples: int, seed: int) -> tuple[float, float]:
    from scipy import stats

    with np.errstate(all="ignore"):
        result = stats.bootstrap(data, statistic, paired=True, vectorized=True, confidence_level=confidence,
                                 n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def document_sums(values, documents) -> np.ndarray:
    """``values: (windows,)`` summed per document; ``documents: (windows,)`` integer labels
    (any labels; the result follows their sorted order)."""
    _, inverse = np.unique(np.asarray(documents), return_inverse=True)
    return np.bincount(inverse, weights=np.asarray(values, dtype=np.float64))


def inflation_interval(nll_steered, nll_base, tokens, confidence: float = CONFIDENCE,
                       n_resamples: int = N_RESAMPLES, seed: int = SEED, documents=None) -> Interval:
    """Perplexity ratio steered / base over windows, with a paired bootstrap interval.

    ``nll_steered, nll_base: (windows,)`` summed next-token negative log-likelihoods
    per window (nats), ``tokens: (windows,)`` predicted tokens per window.
    ``documents: (windows,)`` the document of each window: the bootstrap then
    resamples documents (a document's windows together: neighbouring windows of
    one article are correlated); without it, or with one document, windows.
    """
    nll_steered, nll_base, tokens = (np.asarray(a, dtype=np.float64) for a in (nll_steered, nll_base, tokens))
    if documents is not None and len(np.unique(np.asarray(documents))) > 1:
        nll_steered, nll_base, tokens = (document_sums(a, documents) for a in (nll_steered, nll_base, tokens))

    def statistic(steered, base, count, axis=-1):
        return np.exp((steered.sum(axis) - base.sum(axis)) / count.sum(axis))

    estimate = float(statistic(nll_steered, nll_base, tokens))
    if nll_steered.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    low, high = _bootstrap((nll_steered, nll_base, tokens), statistic, confidence, n_resamples, seed)
    return Interval(estimate, low, high, confidence)


def ratio_interval(numerator_treated, denominator_treated, control, confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """``mean(a − c) / mean(b − c)`` over the same items, with a paired bootstrap interval.

    ``a``: scores under the numerator's steering (a sparse vector), ``b`` under
    the denominator's (the dense vector), ``c`` unsteered; all ``(n,)`` on the
    same items. Only meaningful where the denominator's shift is clearly non-zero:
    callers check that first (see :func:`paired_mean_interval`).
    """
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (numerator_treated, denominator_treated, control))

    def statistic(a, b, c, axis=-1):
        return (a - c).sum(axis) / (b - c).sum(axis)

    with np.errstate(all="ignore"):
        estimate = float(statistic(a, b, c))
    if a.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    low, high = _bootstrap((a, b, c), statistic, confidence, n_resamples, seed)
    return Interval(estimate, low, high, confidence)


def _auroc(pos, neg, axis=-1):
    """P(a pos score > a neg score) + P(tie) / 2, over the last axis of each (batched)."""
    pos = np.moveaxis(np.asarray(pos, dtype=np.float64), axis, -1)[..., :, None]
    neg = np.moveaxis(np.asarray(neg, dtype=np.float64), axis, -1)[..., None, :]
    return (np.mean(pos > neg, axis=(-2, -1)) + 0.5 * np.mean(pos == neg, axis=(-2, -1)))


def _cohens_d(pos, neg, axis=-1):
    """(mean_pos - mean_neg) / pooled sd (ddof 1), over the last axis of each (batched)."""
    pos = np.moveaxis(np.asarray(pos, dtype=np.float64), axis, -1)
    neg = np.moveaxis(np.asarray(neg, dtype=np.float64), axis, -1)
    n1, n2 = pos.shape[-1], neg.shape[-1]
    pooled = ((n1 - 1) * pos.var(axis=-1, ddof=1) + (n2 - 1) * neg.var(axis=-1, ddof=1)) / (n1 + n2 - 2)
    with np.errstate(all="ignore"):
        return (pos.mean(axis=-1) - neg.mean(axis=-1)) / np.sqrt(pooled)


def separation_intervals(pos, neg, paired: bool, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED) -> tuple[Interval, Interval]:
    """``(auroc, cohens_d)`` of scores of two classes, each with a percentile bootstrap
    interval: over pairs when ``paired`` (``pos[i]`` and ``neg[i]`` are one pair's two
    texts, resampled together), else over each class independently."""
    from scipy import stats

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.size < 2 or neg.size < 2:
        return NAN_INTERVAL, NAN_INTERVAL
    if paired and pos.shape != neg.shape:
        raise ValueError(f"paired scores need equal lengths, got {pos.size} and {neg.size}")
    out = []
    for statistic in (_auroc, _cohens_d):
        estimate = float(statistic(pos, neg))
        with np.errstate(all="ignore"):
            result = stats.bootstrap((pos, neg), statistic, paired=paired, vectorized=True,
                                     confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                                     batch=100, rng=np.random.default_rng(seed))
        out.append(Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high),
                            confidence))
    return out[0], out[1]


def paired_t_p_value(treated, control) -> float:
    """Two-sided p-value of the paired t test of ``mean(treated − control) = 0`` (NaN
    with fewer than two units; 1 where every difference is 0)."""
    from scipy import stats

    diffs = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    if diffs.size < 2:
        return math.nan
    if not np.any(diffs != diffs[0]):
        return 1.0 if diffs[0] == 0 else 0.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(n_resamples, n)`` int: how often each of ``n`` units is drawn in each bootstrap
    resample (``rng.integers(0, n, (n_resamples, n))`` with ``default_rng(seed)``, counted).
    A resampled sum of per-unit values ``x`` is ``counts @ x``."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


def percentile_interval(estimate: float, draws, confidence: float = CONFIDENCE) -> Interval:
    """``estimate`` with the percentile interval of its bootstrap ``draws`` (NaN draws, where
    the figure is undefined in a resample, are left out)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not draws.size or not math.isfinite(estimate):
        return Interval(estimate, math.nan, math.nan, confidence)
    low, high = np.percentile(draws, [50 - 50 * confidence, 50 + 50 * confidence])
    return Interval(float(estimate), float(low), float(high), confidence)


def bootstrap_p_value(draws) -> float:
    """Two-sided p-value of "the figure is 0" from its bootstrap draws:
    ``2 min(P(draw <= 0), P(draw >= 0))`` with the (count + 1) / (B + 1) correction, at most 1."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return math.nan
    below = (np.count_nonzero(draws <= 0) + 1) / (draws.size + 1)
    above = (np.count_nonzero(draws >= 0) + 1) / (draws.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def bh_q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (:func:`scipy.stats.false_discovery_control`, method
    "bh") of the finite p-values; NaN stays NaN and does not count in the family."""
    from scipy import stats

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (familywise error) of the finite p-values:
    sorted ascending, ``p_(i) (m − i + 1)`` made non-decreasing, at most 1; NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def bootstrap_p_mc_se(p_value: float, n_resamples: int) -> float:
    """The Monte-Carlo standard error of a two-sided bootstrap p-value (:func:`bootstrap_p_value`)
    from ``n_resamples`` finite draws: ``p = 2 q``, ``q`` the share of draws in the smaller tail, a
    binomial proportion with standard error ``sqrt(q (1 - q) / B)``, so ``sqrt(p (2 - p) / B)``
    (for a one-sided p it would be ``sqrt(p (1 - p) / B)``). NaN without draws or p.

    >>> round(bootstrap_p_mc_se(0.05, 2000), 5)
    0.00698
    """
    if not n_resamples or not math.isfinite(p_value):
        return math.nan
    return math.sqrt(max(p_value * (2 - p_value), 0.0) / n_resamples)


def holm_mc_se(p_values, p_mc_se) -> np.ndarray:
    """The Monte-Carlo standard error of each Holm-adjusted p-value (:func:`holm_adjusted`) from
    those of the raw p-values: an adjusted p is ``(m - j + 1) p_(j)`` for the rank ``j`` that sets
    it (the largest of the step-down products up to its own rank), so its error is that multiple of
    ``p_(j)``'s (to first order; another seed may change which rank sets it). NaN stays NaN."""
    p, se = np.asarray(p_values, dtype=np.float64), np.asarray(p_mc_se, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    products = p[order] * (m - np.arange(m))
    best = 0
    for rank, index in enumerate(order):
        best = rank if products[rank] > products[best] else best
        out[index] = (m - best) * se[order[best]]
    return out


def margin_verdicts(interval90: Interval, margin: float | None) -> dict:
    """A difference's tests against a margin ``M`` stated before use, at level :data:`TEST_LEVEL`,
    from its two-sided 90% interval ``[low, high]`` (bootstrap percentile or t):

    * non-inferiority: the one-sided 95% lower bound (``low``) is above ``-M``: the difference
      is no worse than ``-M``;
    * equivalence (TOST, two one-sided tests at 5%): the 90% interval lies inside ``(-M, +M)``.

    Returns contrasts.csv's ``margin``, ``ci90_low``, ``ci90_high``, ``non_inferior`` and
    ``equivalent`` (both None where the interval is not defined); nothing without a margin.

    >>> margin_verdicts(Interval(-0.01, -0.04, 0.02, 0.90), 0.05)["equivalent"]
    True
    >>> margin_verdicts(Interval(0.03, -0.01, 0.07, 0.90), 0.05)
    {'margin': 0.05, 'ci90_low': -0.01, 'ci90_high': 0.07, 'non_inferior': True, 'equivalent': False}
    """
    if margin is None:
        return {}
    defined = math.isfinite(interval90.low) and math.isfinite(interval90.high)
    return {"margin": float(margin), "ci90_low": interval90.low, "ci90_high": interval90.high,
            "non_inferior": bool(interval90.low > -margin) if defined else None,
            "equivalent": bool(-margin < interval90.low and interval90.high < margin) if defined else None}

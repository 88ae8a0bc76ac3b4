"""Uncertainty of measured effects: paired intervals over test items and text windows.

Every figure the evaluation reports is a paired comparison on the same data
(the steered and the unsteered model score the same items, read the same
perplexity windows), so each interval comes from per-unit differences:

* :func:`paired_mean_interval`: the mean of per-item differences with a
  Student-t interval (``mean ± t_{n-1, 1-a/2} · sd / sqrt(n)``);
* :func:`inflation_interval`: perplexity inflation
  ``exp((Σ nll_steered − Σ nll_base) / Σ tokens)`` with a paired percentile
  bootstrap over windows (:func:`scipy.stats.bootstrap`, ``paired=True``);
* :func:`ratio_interval`: a ratio of two mean shifts measured on the same items
  (the fraction of the dense effect a sparse vector keeps), paired percentile
  bootstrap over items.

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


def inflation_interval(nll_steered, nll_base, tokens, confidence: float = CONFIDENCE,
                       n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """Perplexity ratio steered / base over windows, with a paired bootstrap interval.

    ``nll_steered, nll_base: (windows,)`` summed next-token negative log-likelihoods
    per window (nats), ``tokens: (windows,)`` predicted tokens per window.
    """
    nll_steered, nll_base, tokens = (np.asarray(a, dtype=np.float64) for a in (nll_steered, nll_base, tokens))

    def statistic(steered, base, count, axis=-1):
        return np.exp((steered.sum(axis) - base.sum(axis)) / count.sum(axis))

    estimate = float(statistic(nll_steered, nll_base, tokens))
    if nll_steered.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    low, high = _bootstrap((nll_steered, nll_base, tokens), statistic, confidence, n_resamples, seed)
    return Interval(estimate, low, high, confidence)


def ratio_interval(numerator_treated, denominator_treated, control, confidence: float = CONFIDENCE,
                   n_resamples: int = N_RESAMPLES, seed: int = SEED, weights=None) -> Interval:
    """``mean(a − c) / mean(b − c)`` over the same items, with a paired bootstrap interval.

    ``a``: scores under the numerator's steering (a sparse vector), ``b`` under
    the denominator's (the dense vector), ``c`` unsteered; all ``(n,)`` on the
    same items. Only meaningful where the denominator's shift is clearly non-zero:
    callers check that first (see :func:`paired_mean_interval`). ``weights``
    (``(n,)``, e.g. :func:`stratum_weights`) make both means weighted; an item
    keeps its weight when resampled.
    """
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (numerator_treated, denominator_treated, control))
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=np.float64)

    def statistic(a, b, c, w, axis=-1):
        return (w * (a - c)).sum(axis) / (w * (b - c)).sum(axis)

    with np.errstate(all="ignore"):
        estimate = float(statistic(a, b, c, w))
    if a.size < 2:
        return Interval(estimate, math.nan, math.nan, confidence)
    low, high = _bootstrap((a, b, c, w), statistic, confidence, n_resamples, seed)
    return Interval(estimate, low, high, confidence)


def stratum_weights(strata) -> np.ndarray:
    """Per-item weights that give every stratum the same total (strata of one item get 0,
    as :func:`stratified_mean_interval` leaves them out)."""
    strata = np.asarray([str(s) for s in strata])
    labels, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    size = counts[inverse].astype(np.float64)
    return np.where(size >= 2, 1.0 / size, 0.0)


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


def stratified_mean_interval(treated, control, strata, confidence: float = CONFIDENCE
                             ) -> tuple[Interval, dict[str, Interval]]:
    """Mean of ``treated − control`` with every stratum weighted equally, and each stratum's own.

    For A/B items the strata are the behavior-matching letters: a vector that only
    pushes one letter raises the score of the items whose matching letter it is and
    lowers the others', so the plain mean shift follows how the letters happen to be
    split; the balanced one does not. Estimate: the mean of the strata's mean
    differences; interval: t with the Welch-Satterthwaite degrees of freedom. Strata
    of fewer than two items have no spread and are left out (their own interval is
    NaN).
    """
    from scipy import stats

    diffs = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    strata = np.asarray([str(s) for s in strata])
    groups = {str(s): diffs[strata == s] for s in sorted(set(strata.tolist()))}
    per = {s: paired_mean_interval(d, np.zeros_like(d), confidence) for s, d in groups.items()}
    used = [d for d in groups.values() if d.size >= 2]
    if not used:
        return NAN_INTERVAL, per
    g = len(used)
    parts = np.array([d.var(ddof=1) / d.size / g**2 for d in used])  # each stratum's share of the variance
    counts = np.array([d.size for d in used], dtype=np.float64)
    estimate = float(np.mean([d.mean() for d in used]))
    se = math.sqrt(float(parts.sum()))
    if se == 0:
        return Interval(estimate, estimate, estimate, confidence), per
    df = float(parts.sum() ** 2 / np.sum(parts**2 / (counts - 1)))
    t = float(stats.t.ppf(0.5 + confidence / 2, df=df))
    return Interval(estimate, estimate - t * se, estimate + t * se, confidence), per

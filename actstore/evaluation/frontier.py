"""Matched damage by interpolation: each vector's shift at exactly each perplexity budget.

A vector's shift at a budget ``b`` is read where its path through (log
perplexity inflation, shift) first reaches ``log b``, linearly between the two
measured points around it; a budget beyond every measured inflation is "not
reached", never extrapolated (the paths and their draws:
:mod:`actstore.evaluation.paths`).

Every interval comes from one bootstrap (:class:`Evidence`) that resamples
questions and perplexity documents together (the same draws for every vector,
so differences between vectors stay paired) and redoes the interpolation in
each resample, so the interval includes the choice of where on the path the
budget falls. The primary figure is the paired difference sparse minus dense at
each budget (:func:`frontier`); the fraction of dense is secondary. The
pre-specified primary contrasts (:class:`Contrast`, :func:`contrasts`) are
Holm-corrected as a family per behavior; :func:`steerability` is the
per-question view. Paths use the positive alphas (a negative scale is another
direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..vectors.info import k_label, parse_k
from ..vectors.methods import METHODS
from .grid import is_control, is_prompt
from .intervals import (
    CONFIDENCE,
    N_RESAMPLES,
    SEED,
    TEST_LEVEL,
    bh_q_values,
    bootstrap_p_mc_se,
    bootstrap_p_value,
    holm_adjusted,
    holm_mc_se,
    margin_verdicts,
    paired_mean_interval,
    percentile_interval,
    resample_counts,
)
from .paths import GROUP, Paths, key_tuple
from .rows import KEY, ContrastRow, FrontierRow, SteerabilityRow

REFERENCE_METHODS = ("enr", "whitened")  # the dense yardstick: the mean difference (whitened dense is the same)


def _k_order(k: str) -> float:
    return math.inf if parse_k(k) is None else float(k)


def _reference(vectors: set, behavior, layer, method: str) -> tuple | None:
    """The dense vector a vector of ``method`` at (behavior, layer) is compared with."""
    for candidate in (*REFERENCE_METHODS, method):
        if (behavior, layer, candidate, k_label(None)) in vectors:
            return (behavior, layer, candidate, k_label(None))
    return None


def _random_reference(vectors: set, behavior, layer, k) -> tuple | None:
    """The random control of the same k at the same layer (the lowest seed)."""
    seeds = sorted((int(v[2].split(":", 1)[1]), v) for v in vectors
                   if v[0] == behavior and v[1] == layer and str(v[2]).startswith("random:") and v[3] == k)
    return seeds[0][1] if seeds else None


def frontier(paths: Paths, budgets, confidence: float = CONFIDENCE) -> list[FrontierRow]:
    """frontier.csv's rows: every vector at every budget. p-values are the bootstrap's; q-values
    Benjamini-Hochberg per behavior over that figure's rows (controls a family of their own)."""
    rows = []
    vectors = set(paths.index)
    measure = paths.evidence.measure
    for vector in sorted(vectors, key=lambda v: (str(v[0]), int(v[1]), str(v[2]), _k_order(str(v[3])))):
        behavior, layer, method, k = vector
        for budget in budgets:
            log_budget = math.log(budget)
            shift, alpha, draws = paths.at(vector, log_budget)
            if math.isnan(shift):
                rows.append(FrontierRow(behavior, int(layer), method, k, float(budget), measure, False))
                continue
            interval = percentile_interval(shift, draws, confidence)
            fields = {"alpha": alpha, "shift": shift, "ci_low": interval.low, "ci_high": interval.high,
                      "p_value": bootstrap_p_value(draws), "boot_defined": float(np.isfinite(draws).mean())}
            reference = _reference(vectors, behavior, layer, method)
            if reference is not None and reference != vector:
                ref_shift, _, ref_draws = paths.at(reference, log_budget)
                fields["reference"] = f"{reference[2]} dense"
                if not math.isnan(ref_shift):
                    diff = percentile_interval(shift - ref_shift, draws - ref_draws, confidence)
                    fields.update(diff_vs_dense=diff.estimate, diff_ci_low=diff.low, diff_ci_high=diff.high,
                                  diff_p_value=bootstrap_p_value(draws - ref_draws))
                    ref_interval = percentile_interval(ref_shift, ref_draws, confidence)
                    if ref_interval.excludes(0.0):
                        with np.errstate(all="ignore"):
                            fraction = percentile_interval(shift / ref_shift, draws / ref_draws, confidence)
                        fields.update(fraction=fraction.estimate, fraction_ci_low=fraction.low,
                                      fraction_ci_high=fraction.high)
            control = None if is_control(method) else _random_reference(vectors, behavior, layer, k)
            if control is not None:
                control_shift, _, control_draws = paths.at(control, log_budget)
                fields["random_reference"] = control[2]
                if not math.isnan(control_shift):
                    beyond = percentile_interval(shift - control_shift, draws - control_draws, confidence)
                    fields.update(minus_random=beyond.estimate, minus_random_ci_low=beyond.low,
                                  minus_random_ci_high=beyond.high,
                                  minus_random_p_value=bootstrap_p_value(draws - control_draws))
            rows.append(FrontierRow(behavior, int(layer), method, k, float(budget), measure, True, **fields))
    return _with_q_values(rows)


def _with_q_values(rows: list[FrontierRow]) -> list[FrontierRow]:
    """Fill q_value, diff_q_value and minus_random_q_value: BH per (behavior, control or not)."""
    from dataclasses import replace

    out = list(rows)
    for column in ("p_value", "diff_p_value", "minus_random_p_value"):
        target = column.replace("p_value", "q_value")
        groups: dict = {}
        for index, row in enumerate(out):
            groups.setdefault((row.behavior, is_control(row.method)), []).append(index)
        for members in groups.values():
            q = bh_q_values([getattr(out[i], column) for i in members])
            for i, value in zip(members, q):
                out[i] = replace(out[i], **{target: float(value)})
    return out


@dataclass(frozen=True)
class Contrast:
    """One pre-specified contrast: the shift of ``method k`` at ``layer`` minus the shift of
    ``ref_method ref_k`` at ``ref_layer``, both interpolated to ``budget``. ``ref_layer=None``:
    the best other layer of the reference vector (the largest shift at the budget), chosen
    again in every bootstrap resample, so the interval includes the choice.

    Written ``NAME=LAYER:METHOD:K-REFLAYER:REFMETHOD:REFK@BUDGET`` (:meth:`parse`), e.g.
    ``sparse_minus_dense=8:enr:64-8:enr:dense@1.25`` or ``layer=8:enr:64-best:enr:64@1.25``.
    """

    name: str
    budget: float
    layer: int
    method: str
    k: str
    ref_layer: int | None
    ref_method: str
    ref_k: str

    @classmethod
    def parse(cls, spec: str) -> Contrast:
        from ..errors import ActstoreError

        try:
            name, rest = spec.split("=", 1)
            sides, budget = rest.rsplit("@", 1)
            left, right = sides.split("-", 1)
            layer, method, k = left.split(":")
            ref_layer, ref_method, ref_k = right.split(":")
            return cls(name.strip(), float(budget), int(layer), method, k,
                       None if ref_layer == "best" else int(ref_layer), ref_method, ref_k)
        except ValueError:
            raise ActstoreError(f"contrast {spec!r}: expected NAME=LAYER:METHOD:K-REFLAYER:REFMETHOD:REFK@BUDGET, "
                                "e.g. 'sparse_minus_dense=8:enr:64-8:enr:dense@1.25' (REFLAYER 'best': the best "
                                "other layer)", param="contrasts") from None

    @property
    def reference(self) -> str:
        where = "best other layer" if self.ref_layer is None else f"layer {self.ref_layer}"
        return f"{self.ref_method} k={self.ref_k} at {where}"


def default_contrasts(paths: Paths, budgets) -> list[Contrast]:
    """The family when none is pre-specified: at every budget, each sparse vector of a method
    (controls excepted) minus the dense reference at its layer (:data:`REFERENCE_METHODS`), and
    each method that ranks another's vector (``refines``: whitened ranks ENR's) minus that method
    at the same k and layer (``whitened_minus_enr``)."""
    vectors = set(paths.index)
    family = []
    for vector in sorted(vectors, key=lambda v: (str(v[0]), int(v[1]), str(v[2]), _k_order(str(v[3])))):
        behavior, layer, method, k = vector
        if is_control(method) or parse_k(k) is None:
            continue
        reference = _reference(vectors, behavior, layer, method)
        for budget in budgets:
            if reference is not None:
                family.append(Contrast("sparse_minus_dense", float(budget), int(layer), method, k, int(layer),
                                       reference[2], k_label(None)))
            refined = getattr(METHODS.get(method), "refines", None)
            if refined is not None and (behavior, layer, refined, k) in vectors:
                family.append(Contrast(f"{method}_minus_{refined}", float(budget), int(layer), method, k, int(layer),
                                       refined, k))
    return sorted(set(family), key=lambda c: (c.name, c.layer, c.method, _k_order(c.k), c.budget))


def contrasts(paths: Paths, budgets, family: list[Contrast] | None = None,
              confidence: float = CONFIDENCE, margin: float | None = None) -> list[ContrastRow]:
    """The primary contrasts of every behavior, with bootstrap intervals and p-values (and their
    Monte-Carlo errors), Holm-adjusted over each behavior's family (``family``, else
    :func:`default_contrasts`); with a ``margin``, each also tested for non-inferiority and
    equivalence (:func:`~actstore.evaluation.intervals.margin_verdicts`). A contrast whose sides
    are not both reached has NaN figures and is not counted in Holm's m."""
    rows = []
    for behavior in sorted({v[0] for v in paths.index}):
        chosen = family if family is not None else default_contrasts(
            Paths(paths.evidence, paths.shift, paths.log_inflation, paths.shift_draws, paths.log_inflation_draws,
                  {v: r for v, r in paths.index.items() if v[0] == behavior}), budgets)
        rows += with_holm([_contrast(paths, behavior, c, confidence, margin) for c in chosen])
    return rows


def with_holm(rows: list[ContrastRow]) -> list[ContrastRow]:
    """``rows`` with ``p_holm`` (Holm over them, one family) and its Monte-Carlo error filled."""
    adjusted = holm_adjusted([row.p_value for row in rows])
    errors = holm_mc_se([row.p_value for row in rows], [row.p_mc_se for row in rows])
    return [ContrastRow(**{**row.__dict__, "p_holm": float(p), "p_holm_mc_se": float(se)})
            for row, p, se in zip(rows, adjusted, errors)]


def _contrast(paths: Paths, behavior, c: Contrast, confidence: float, margin: float | None = None) -> ContrastRow:
    log_budget = math.log(c.budget)
    nan = ContrastRow(behavior, c.name, c.layer, c.budget, c.method, c.k, c.reference, paths.evidence.measure,
                      math.nan, math.nan, math.nan, math.nan, **({} if margin is None else {"margin": float(margin)}))
    vector = paths.find(behavior, c.layer, c.method, c.k)
    if vector is None:
        return nan
    shift, _, draws = paths.at(vector, log_budget)
    if c.ref_layer is not None:
        reference = paths.find(behavior, c.ref_layer, c.ref_method, c.ref_k)
        if reference is None:
            return nan
        ref_shift, _, ref_draws = paths.at(reference, log_budget)
    else:  # the best other layer, chosen in the data and again in every resample
        others = [v for v in paths.index if v[0] == behavior and int(v[1]) != c.layer and v[2] == c.ref_method
                  and str(v[3]) == c.ref_k]
        measured = [paths.at(v, log_budget) for v in others]
        measured = [(s, d) for s, _, d in measured if not math.isnan(s)]
        if not measured:
            return nan
        ref_shift = max(s for s, _ in measured)
        with np.errstate(all="ignore"):
            stacked = np.stack([d for _, d in measured])
            ref_draws = np.where(np.isfinite(stacked).any(0), np.nanmax(np.where(np.isfinite(stacked), stacked,
                                                                                 -np.inf), axis=0), np.nan)
    if math.isnan(shift) or math.isnan(ref_shift):
        return nan
    diffs = draws - ref_draws
    diff = percentile_interval(shift - ref_shift, diffs, confidence)
    p_value = bootstrap_p_value(diffs)
    tested = margin_verdicts(percentile_interval(shift - ref_shift, diffs, 1 - 2 * TEST_LEVEL), margin)
    return ContrastRow(behavior, c.name, c.layer, c.budget, c.method, c.k, c.reference, paths.evidence.measure,
                       diff.estimate, diff.low, diff.high, p_value,
                       p_mc_se=bootstrap_p_mc_se(p_value, int(np.isfinite(diffs).sum())), **tested)


def steerability(results, items, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = SEED) -> list[SteerabilityRow]:
    """Per vector: each question's least-squares slope of its primary measure (mean over its
    answer orders) over alpha, the unsteered model at alpha 0; the mean slope (t over
    questions), the spread of slopes (sd) and the anti-steerable share (slope < 0), the last
    two with percentile bootstrap intervals over questions. The prompting baseline has no alpha:
    no row."""
    if not len(results):
        return []
    measure = str(results["measure"].iloc[0])
    base_items = items[items["method"] == "none"]
    order = list(base_items["item"])
    _, inverse = np.unique(base_items.set_index("item")["question"].loc[order].to_numpy(), return_inverse=True)
    counts = np.bincount(inverse)

    def per_question(frame) -> np.ndarray:
        return np.bincount(inverse, weights=frame.set_index("item")[measure].loc[order].to_numpy(float)) / counts

    base = per_question(base_items)
    steered_items = {key_tuple(key): frame for key, frame in items[items["method"] != "none"].groupby(KEY, sort=False)}
    q_counts = resample_counts(counts.size, n_resamples, seed)
    rows = []
    for (behavior, layer, method, k), group in results[~results["method"].map(is_prompt)].groupby(GROUP, sort=False):
        group = group.sort_values("alpha")
        x = np.concatenate([[0.0], group["alpha"].to_numpy(dtype=np.float64)])
        y = np.stack([base] + [per_question(steered_items[key_tuple(r)])
                               for r in group[KEY].itertuples(index=False)])  # (alphas + 1, questions)
        xc = x - x.mean()
        slopes = (xc[:, None] * (y - y.mean(0))).sum(0) / (xc ** 2).sum()
        n = slopes.size
        mean = paired_mean_interval(slopes, np.zeros(n), confidence)
        boot_mean = q_counts @ slopes / n
        boot_sd = np.sqrt(np.maximum(q_counts @ slopes ** 2 / n - boot_mean ** 2, 0) * n / max(n - 1, 1))
        anti = slopes < 0
        sd = percentile_interval(float(slopes.std(ddof=1)) if n > 1 else math.nan, boot_sd, confidence)
        share = percentile_interval(float(anti.mean()), q_counts @ anti / n, confidence)
        rows.append(SteerabilityRow(str(behavior), int(layer), str(method), str(k), measure, int(n), len(group),
                                    mean.estimate, mean.low, mean.high, sd.estimate, sd.low, sd.high,
                                    share.estimate, share.low, share.high))
    return rows

"""The markdown of results.md: how figures are written, and the section on the primary contrasts.

:func:`contrast_lines` writes the contrasts' section of :func:`~actstore.evaluation.report.write_report`:
the difference tests, Holm-corrected as a family; the bootstrap p-values whose Holm verdict lies
within two Monte-Carlo standard errors of the threshold (another bootstrap seed could change it:
more ``--resamples`` shrink the error); with a margin stated before use (``--margin``), the
non-inferiority and equivalence verdicts beside them (contrasts.csv's columns:
:class:`~actstore.evaluation.rows.ContrastRow`).
"""

from __future__ import annotations

import math

from .intervals import N_RESAMPLES, Analysis
from .rows import ContrastRow

ALPHA_LEVEL = 0.05
MC_SE_NEAR = 2.0  # a Holm p within this many Monte-Carlo standard errors of ALPHA_LEVEL is called borderline


def fmt(value, spec=".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def ci(estimate, low, high, spec=".3g") -> str:
    return f"{fmt(estimate, spec)} [{fmt(low, spec)}, {fmt(high, spec)}]"


def md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cells) + " |" for cells in lines])


def borderline(row: ContrastRow) -> bool:
    """Whether the contrast's Holm verdict at :data:`ALPHA_LEVEL` is within :data:`MC_SE_NEAR`
    Monte-Carlo standard errors of flipping (a bootstrap p; the t tests have no such error)."""
    return (math.isfinite(row.p_holm) and math.isfinite(row.p_holm_mc_se)
            and abs(row.p_holm - ALPHA_LEVEL) <= MC_SE_NEAR * row.p_holm_mc_se)


def _verdict(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else ("yes" if value else "no")


def contrast_lines(rows: list[ContrastRow], prespecified: bool, analysis: Analysis | None = None) -> list[str]:
    analysis = analysis or Analysis()
    lines = ["## Primary contrasts (Holm-corrected as a family)", "",
             ("The family was pre-specified for this sweep." if prespecified else
              "No family was pre-specified: every sparse vector minus the dense one at its layer, and whitened "
              "minus ENR at the same k, at every budget, make the family (a larger family, a stricter Holm)."),
             "Each contrast is a paired difference of interpolated shifts at its budget, with a bootstrap interval "
             f"({analysis.resamples} resamples; questions and documents resampled together, the interpolation "
             "redone; a 'best other layer' chosen again in each resample).", ""]
    tested = [r for r in rows if not math.isnan(r.p_value)]
    if not tested:
        return lines + ["No contrast of the family has both sides reached at its budget.", ""] + _margin_lines(rows,
                                                                                                            analysis)
    m = len(tested)
    raw = sum(r.ci_low > 0 or r.ci_high < 0 for r in tested)
    held = [r for r in tested if r.p_holm < ALPHA_LEVEL]
    lines += [f"{raw} of {m} contrasts have an interval excluding zero ({m} x {ALPHA_LEVEL:g} = "
              f"{m * ALPHA_LEVEL:.2g} expected by chance); {len(held)} at Holm-adjusted p < {ALPHA_LEVEL:g} "
              f"({sum(r.estimate > 0 for r in held)} positive, {sum(r.estimate < 0 for r in held)} negative)"
              + (f"; {len(rows) - m} not tested (a side not reached at the budget)." if len(rows) > m else "."), ""]
    lines += md_table(["contrast", "layer", "budget", "vector", "minus", "difference [95% CI]", "p", "Holm p"],
                      [[r.contrast, str(r.layer), f"{r.budget:g}", f"{r.method} k={r.k}", r.reference,
                        ci(r.estimate, r.ci_low, r.ci_high), fmt(r.p_value, ".2g"),
                        fmt(r.p_holm, ".2g") + (" (borderline)" if borderline(r) else "")]
                       for r in rows])
    return lines + [""] + _monte_carlo_lines(tested, analysis) + _margin_lines(rows, analysis)


def _monte_carlo_lines(tested: list[ContrastRow], analysis: Analysis) -> list[str]:
    """The Monte-Carlo error of the bootstrap p-values, and the verdicts it could change."""
    near = [r for r in tested if borderline(r)]
    bootstrapped = [r for r in tested if math.isfinite(r.p_mc_se)]
    if not bootstrapped:
        return []
    lines = [f"The bootstrap p-values carry Monte-Carlo error from their {analysis.resamples} resamples "
             "(contrasts.csv: p_mc_se, p_holm_mc_se; sqrt(p(2 - p)/B) for a two-sided p)"]
    if not near:
        return [lines[0] + f": no Holm p lies within {MC_SE_NEAR:g} of its standard errors of {ALPHA_LEVEL:g}.", ""]
    lines[0] += (f". {len(near)} Holm p-values lie within {MC_SE_NEAR:g} standard errors of {ALPHA_LEVEL:g}, so their "
                 "verdict could change with the bootstrap's seed (borderline; more resamples, --resamples, shrink "
                 "the error" + (f", e.g. {4 * analysis.resamples}" if analysis.resamples <= N_RESAMPLES else "")
                 + "):")
    lines += [f"- {r.contrast} layer {r.layer} {r.method} k={r.k} at {fmt(r.budget, 'g')}: Holm p "
              f"{fmt(r.p_holm, '.3g')} ± {fmt(r.p_holm_mc_se, '.2g')}" for r in near]
    return lines + [""]


def _margin_lines(rows: list[ContrastRow], analysis: Analysis) -> list[str]:
    """With a margin: each contrast's non-inferiority and equivalence verdicts."""
    if analysis.margin is None:
        return []
    m = analysis.margin
    lines = ["### Against the margin", "",
             f"The margin M = {m:g} was stated before use, on each contrast's own scale (its measure). "
             "Non-inferior: the one-sided 95% lower bound (the low end of the 90% interval) is above -M, so the "
             "vector is no worse than the reference by more than M. Equivalent (TOST, two one-sided tests at 5%): "
             "the 90% interval lies inside (-M, +M). A difference interval that includes zero is not equivalence; "
             "these verdicts are. contrasts.csv: margin, ci90_low, ci90_high, non_inferior, equivalent.", ""]
    tested = [r for r in rows if r.non_inferior is not None]
    if not tested:
        return lines + ["No contrast has a defined interval to test against the margin.", ""]
    lines += md_table(["contrast", "layer", "budget", "vector", "minus", "measure", "90% CI", "non-inferior",
                       "equivalent"],
                      [[r.contrast, str(r.layer), fmt(r.budget, "g"), f"{r.method} k={r.k}", r.reference, r.measure,
                        f"[{fmt(r.ci90_low)}, {fmt(r.ci90_high)}]", _verdict(r.non_inferior),
                        _verdict(r.equivalent)] for r in tested])
    return lines + [""]

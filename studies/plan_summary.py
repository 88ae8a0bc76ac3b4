"""The gemma plan's summary (studies/results/PLAN.md §3, §7 and the amendment of 2026-12-05), read from sweep folders.

:func:`write_summary` is what ``python studies/sweep_gemma.py --summary-only`` runs: from the
behaviors' folders in ``out`` it writes primary.csv (the primary family P1-P7,
:func:`primary_family`), controls.csv, letter_leak.csv and resampled.csv
(:mod:`plan_controls`), frontier.csv and contrasts.csv (every behavior's rows) and SUMMARY.md.

Rules of the amendment applied here:

* **Resamples and their Monte-Carlo error** (5): one bootstrap per behavior with ``n_resamples``
  draws; each primary p carries ``p_mc_se`` (:func:`~actstore.evaluation.intervals.bootstrap_p_mc_se`,
  ``sqrt(p (2 - p) / B)`` for the two-sided percentile p, B its finite draws) and each Holm p its
  ``p_holm_mc_se`` (:func:`~actstore.evaluation.intervals.holm_mc_se`); a Holm p within two of
  them of 0.05 is ``borderline``.
* **The first segment** (3): a budget a vector reaches between alpha 0 (the unsteered point) and
  its first measured alpha is "first segment" and not read (NaN, with a note), in the primary
  family and in the control comparisons (:func:`read_at`). The rule is decided on the point
  estimate (as "not reached" is). Where the point estimate is read, every bootstrap draw is kept
  as the interpolation gives it, a draw whose own crossing falls in the first segment included:
  dropping those draws would condition the interval on where each resample crosses and shift it
  toward the resamples that inflate less; their share is reported (``first_segment_draws``).
* **Margins** (4): for P1, P2, P6 and P7 with a margin m on the behavior's own scale,
  non-inferiority (the one-sided 95% bound, the 90% interval's low end, above -m) and equivalence
  (TOST: the 90% interval inside (-m, +m)) from the same draws (:func:`margin_columns`). "No
  worse" is the contrast's first term against its second (:data:`NO_WORSE`).
* **Both scales** (8): for P1 and P6 (A/B) the probability scale (items.csv's ``score``) beside
  log-odds, from the same resamples (``probability_*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PRIMARY_BUDGET, FALLBACK_BUDGET = 1.25, 1.05
NARROW_K = 64
LEVEL = 0.05
READ, NOT_REACHED, FIRST_SEGMENT, NOT_RUN = "read", "not reached", "first segment", "not run"
# Amendment 2026-12-05 (4): which side is "no worse" in each margin-tested contrast (first term minus second > -m).
NO_WORSE = {"P1": "k=64 no worse than dense: S(k=64) - S(dense) > -m",
            "P2": "k=64 no worse than dense: S(k=64) - S(dense) > -m",
            "P6": "whitened no worse than ENR: S(whitened k=64) - S(ENR k=64) > -m",
            "P7": "whitened no worse than ENR: S(whitened k=64) - S(ENR k=64) > -m"}
PROBABILITY = ("P1", "P6")  # amendment 2026-12-05 (8): the probability scale beside log-odds


@dataclass(frozen=True)
class Reading:
    """A vector's shift at a budget: ``status`` :data:`READ` (``shift`` and its ``draws``), else
    :data:`NOT_REACHED`, :data:`FIRST_SEGMENT` or :data:`NOT_RUN` (``shift`` NaN, ``draws`` None);
    ``first_segment_draws``: the share of draws that cross the budget in the first segment."""

    shift: float
    draws: np.ndarray | None
    status: str
    first_segment_draws: float = math.nan

    @property
    def read(self) -> bool:
        return self.status == READ


def read_at(paths, behavior: str, layer: int, method: str, k: str, budget: float) -> Reading:
    """The vector's shift at ``budget`` by PLAN.md's interpolation, with the first-segment rule:
    the path's first crossing lies between alpha 0 and the first measured alpha exactly when the
    first measured point's log-inflation is already at or above the budget."""
    vector = paths.find(behavior, layer, method, k) if paths is not None else None
    if vector is None:
        return Reading(math.nan, None, NOT_RUN)
    log_budget = math.log(budget)
    shift, _, draws = paths.at(vector, log_budget)
    if math.isnan(shift):
        return Reading(math.nan, None, NOT_REACHED)
    first = paths.index[vector][0]
    if paths.log_inflation[first] >= log_budget:
        return Reading(math.nan, None, FIRST_SEGMENT)
    share = float(np.mean(paths.log_inflation_draws[first] >= log_budget))
    return Reading(shift, draws, READ, share)


def choose_budget(paths, behavior: str, vectors) -> tuple[float | None, str]:
    """PLAN.md's fallback with the first-segment rule: 1.25 where every vector of the contrast is
    read there, else 1.05; None with the reason where neither (a vector reaching a budget in its
    first segment reaches every lower budget there too, so no fallback helps it)."""
    for budget in (PRIMARY_BUDGET, FALLBACK_BUDGET):
        statuses = [read_at(paths, behavior, *v, budget).status for v in vectors]
        if all(s == READ for s in statuses):
            return budget, ""
        if NOT_RUN in statuses:
            return None, "not run"
        if FIRST_SEGMENT in statuses:
            which = ", ".join(f"{v[1]} k={v[2]}" for v, s in zip(vectors, statuses) if s == FIRST_SEGMENT)
            return None, f"first segment at {budget:g} ({which}: reached between alpha 0 and the first alpha; not read)"
    return None, f"not reached at {PRIMARY_BUDGET:g} or {FALLBACK_BUDGET:g}"


def margin_columns(estimate: float, draws, margin: float | None) -> dict:
    """Non-inferiority and equivalence against ``margin`` from the draws' 90% percentile interval
    (:func:`~actstore.evaluation.intervals.margin_verdicts`); empty verdicts without a margin or draws."""
    from actstore.evaluation.intervals import margin_verdicts, percentile_interval

    empty = {"margin": math.nan if margin is None else float(margin), "ci90_low": math.nan, "ci90_high": math.nan,
             "non_inferior": None, "equivalent": None}
    if margin is None or draws is None:
        return empty
    return {**empty, **margin_verdicts(percentile_interval(estimate, draws, 1 - 2 * LEVEL), margin)}


def _row(name, claim, behavior, contrast, budget, estimate=math.nan, draws=None, note="") -> dict:
    from actstore.evaluation.intervals import bootstrap_p_mc_se, bootstrap_p_value, percentile_interval

    interval = percentile_interval(estimate, draws) if draws is not None else None
    p_value = bootstrap_p_value(draws) if draws is not None else math.nan
    finite = int(np.isfinite(draws).sum()) if draws is not None else 0
    return {"id": name, "claim": claim, "behavior": behavior, "contrast": contrast, "budget": budget,
            "estimate": estimate, "ci_low": interval.low if interval else math.nan,
            "ci_high": interval.high if interval else math.nan, "p_value": p_value,
            "testable": draws is not None and not math.isnan(estimate), "note": note,
            "p_mc_se": bootstrap_p_mc_se(p_value, finite), "resamples": finite}


def _difference(paths_of, probability_of, margins, spec) -> dict:
    """P1, P2, P6, P7: S(a) - S(b) at the contrast's budget, with margins and (P1, P6) the probability scale."""
    name, claim, behavior, contrast, a, b = spec
    paths = paths_of.get(behavior)
    budget, note = choose_budget(paths, behavior, [a, b]) if paths is not None else (None, "not run")
    if budget is None:
        row = _row(name, claim, behavior, contrast, math.nan, note=note)
        draws, estimate, share = None, math.nan, math.nan
    else:
        ra, rb = (read_at(paths, behavior, *v, budget) for v in (a, b))
        estimate, draws = ra.shift - rb.shift, ra.draws - rb.draws
        share = max(ra.first_segment_draws, rb.first_segment_draws)
        row = _row(name, claim, behavior, contrast, budget, estimate, draws,
                   "" if budget == PRIMARY_BUDGET else f"fallback: not every vector reached {PRIMARY_BUDGET:g}")
    row["first_segment_draws"] = share
    row.update(margin_columns(estimate, draws, margins.get(behavior)) if name in NO_WORSE else {})
    row["no_worse_means"] = NO_WORSE.get(name, "")
    probability = probability_of.get(behavior)
    if name in PROBABILITY and probability is not None and budget is not None:
        pa, pb = (read_at(probability, behavior, *v, budget) for v in (a, b))  # the same inflation: both read
        other = _row(name, claim, behavior, contrast, budget, pa.shift - pb.shift, pa.draws - pb.draws)
        row.update({f"probability_{c}": other[c] for c in ("estimate", "ci_low", "ci_high", "p_value")})
    return row


def _fraction_of_dense(paths, behavior: str):
    """(F, draws, budget) of S(k=64) / S(dense) at layer 8, or None (not read, or a dense interval holding zero)."""
    from actstore.evaluation.intervals import percentile_interval

    vectors = [(8, "enr", "64"), (8, "enr", "dense")]
    budget, _ = choose_budget(paths, behavior, vectors) if paths is not None else (None, "")
    if budget is None:
        return None
    r64, rd = (read_at(paths, behavior, *v, budget) for v in vectors)
    if not percentile_interval(rd.shift, rd.draws).excludes(0.0):  # a fraction of noise is not computed
        return None
    with np.errstate(all="ignore"):
        return r64.shift / rd.shift, r64.draws / rd.draws, budget


def _narrow_minus_diffuse(paths_of, shares: dict) -> dict:
    """P3: F(narrow) - F(diffuse), F = S(k=64) / S(dense); the behaviors resampled independently."""
    fractions = {b: _fraction_of_dense(paths_of.get(b), b) for b in ("refusal", "morality")}
    if all(f is not None for f in fractions.values()) and len(shares) == 2:
        narrow, diffuse = max(shares, key=shares.get), min(shares, key=shares.get)
        (fn, dn, bn), (fd, dd, bd) = fractions[narrow], fractions[diffuse]
        return _row("P3", "(b)", f"{narrow} (narrow) vs {diffuse}", "F(narrow) - F(diffuse), F = S(k=64)/S(dense)",
                    max(bn, bd), fn - fd, dn - dd)
    return _row("P3", "(b)", "refusal vs morality", "F(narrow) - F(diffuse)", math.nan,
                note="not testable: a dense shift's interval includes zero, a budget is not read, or a behavior "
                     "is missing")


def _best_layer(paths_of, name: str, behavior: str) -> dict:
    """P4, P5: argmax over layers 4-10 of S(k=64) minus argmax of S(dense) at 1.25, redone per resample;
    a layer read in its first segment is left out of the scan (said in the note)."""
    paths = paths_of.get(behavior)
    best, skipped = {}, []
    for k in ("64", "dense"):
        layers, shifts, draws = [], [], []
        for layer in range(4, 11):
            reading = read_at(paths, behavior, layer, "enr", k, PRIMARY_BUDGET)
            if reading.read:
                layers.append(layer), shifts.append(reading.shift), draws.append(reading.draws)
            elif reading.status == FIRST_SEGMENT:
                skipped.append(f"layer {layer} k={k}")
        if len(layers) >= 2:
            stacked = np.where(np.isfinite(np.stack(draws)), np.stack(draws), -np.inf)
            best[k] = (layers[int(np.argmax(shifts))], np.asarray(layers)[np.argmax(stacked, axis=0)])
    note = f"left out (first segment at {PRIMARY_BUDGET:g}): {', '.join(skipped)}" if skipped else ""
    if len(best) == 2:
        return _row(name, "(c)", behavior, "best layer of k=64 - best layer of dense (layers 4-10)", PRIMARY_BUDGET,
                    float(best["64"][0] - best["dense"][0]), (best["64"][1] - best["dense"][1]).astype(float), note)
    return _row(name, "(c)", behavior, "best layer of k=64 - best layer of dense", math.nan,
                note="; ".join(filter(None, ["fewer than two layers reach 1.25 / not run", note])))


DIFFERENCES = [("P1", "(a)", "refusal", "S(k=64) - S(dense), layer 8", (8, "enr", "64"), (8, "enr", "dense")),
               ("P2", "(a)", "morality", "S(k=64) - S(dense), layer 8", (8, "enr", "64"), (8, "enr", "dense")),
               ("P6", "(d)", "refusal", "S(whitened k=64) - S(ENR k=64), layer 8", (8, "whitened", "64"),
                (8, "enr", "64")),
               ("P7", "(d)", "morality", "S(whitened k=64) - S(ENR k=64), layer 8", (8, "whitened", "64"),
                (8, "enr", "64"))]


def primary_family(paths_of: dict, shares: dict, margins: dict | None = None,
                   probability_of: dict | None = None) -> list[dict]:
    """P1-P7 (PLAN.md §3) with estimate, 95% percentile interval, bootstrap p and its Monte-Carlo
    error, and Holm over the seven (a contrast not testable gets p = 1: it stays in m and is not
    rejected). ``paths_of``: behavior -> Paths on its primary measure; ``probability_of``: the
    A/B behaviors' Paths on the probability scale; ``margins``: behavior -> margin (or None)."""
    margins, probability_of = margins or {}, probability_of or {}
    by_id = {spec[0]: spec for spec in DIFFERENCES}
    rows = [_difference(paths_of, probability_of, margins, by_id["P1"]),
            _difference(paths_of, probability_of, margins, by_id["P2"]),
            _narrow_minus_diffuse(paths_of, shares),
            _best_layer(paths_of, "P4", "refusal"), _best_layer(paths_of, "P5", "morality"),
            _difference(paths_of, probability_of, margins, by_id["P6"]),
            _difference(paths_of, probability_of, margins, by_id["P7"])]
    return with_holm(rows)


def with_holm(rows: list[dict]) -> list[dict]:
    """Holm over ``rows`` (p = 1, exact, for the untestable) with each Holm p's Monte-Carlo error and
    ``borderline``: a Holm p within two of its Monte-Carlo standard errors of 0.05."""
    from actstore.evaluation.intervals import holm_adjusted, holm_mc_se

    p = [r["p_value"] if r["testable"] else 1.0 for r in rows]
    se = [r["p_mc_se"] if r["testable"] else 0.0 for r in rows]
    for row, adjusted, error in zip(rows, holm_adjusted(p), holm_mc_se(p, se)):
        row["p_holm"], row["p_holm_mc_se"] = float(adjusted), float(error)
        row["borderline"] = bool(row["testable"] and abs(adjusted - LEVEL) <= 2 * error)
    return rows


COLUMNS = ["id", "claim", "behavior", "contrast", "budget", "estimate", "ci_low", "ci_high", "p_value", "testable",
           "note", "p_holm", "probability_estimate", "probability_ci_low", "probability_ci_high",
           "probability_p_value", "resamples", "p_mc_se", "p_holm_mc_se", "borderline", "first_segment_draws",
           "margin", "no_worse_means", "ci90_low", "ci90_high", "non_inferior", "equivalent"]


def load_paths(folder: Path, n_resamples: int, measure: str | None = None):
    """Paths of a sweep folder on its primary measure, or on ``measure`` (``score``: the probability scale)."""
    from actstore.evaluation.ledger import Ledger
    from actstore.evaluation.paths import Evidence, Paths

    ledger = Ledger.open_existing(folder)
    results = ledger.results()
    if measure is not None:
        results = results.assign(measure=measure)
    return Paths.of(Evidence.from_tables(results, ledger.items(), ledger.windows()), n_resamples)


def write_summary(out: Path, done: list[str], shares: dict, margins: dict, n_resamples: int, header: str) -> Path:
    """Every table of the plan's summary and SUMMARY.md (``header`` first) in ``out``."""
    import pandas as pd
    import plan_controls

    from actstore.evaluation.ledger import Ledger

    done = [b for b in done if len(Ledger.open_existing(out / b).results())]  # a folder without a row yet: skipped
    paths_of = {b: load_paths(out / b, n_resamples) for b in done}
    probability_of = {b: load_paths(out / b, n_resamples, "score") for b in done
                      if paths_of[b].evidence.measure == "logodds"}
    family = primary_family({b: paths_of[b] for b in ("refusal", "morality") if b in paths_of}, shares, margins,
                            probability_of)
    pd.DataFrame(family).reindex(columns=COLUMNS).to_csv(out / "primary.csv", index=False)
    controls = plan_controls.random_controls(paths_of, probability_of)
    controls.to_csv(out / "controls.csv", index=False)
    leak = plan_controls.letter_leak(paths_of)
    leak.to_csv(out / "letter_leak.csv", index=False)
    resampled = plan_controls.resampled(out, family, n_resamples, margins)
    resampled.to_csv(out / "resampled.csv", index=False)

    def gather(name: str):
        frames = [pd.read_csv(out / b / name, dtype={"k": str}) for b in done if (out / b / name).exists()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    results = gather("results.csv")
    gather("frontier.csv").to_csv(out / "frontier.csv", index=False)
    gather("contrasts.csv").to_csv(out / "contrasts.csv", index=False)
    lines = summary_markdown(results, family, shares, n_resamples, plan_controls.markdown(controls, leak, resampled))
    (out / "SUMMARY.md").write_text(header + "\n".join(lines))
    return out / "SUMMARY.md"


def fmt_ci(value, low, high, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def fmt(value, spec: str = ".2g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def _p_cell(p, se) -> str:
    return "n/a" if p is None or math.isnan(p) else f"{p:.2g} ± {se:.1g}" if se and math.isfinite(se) else f"{p:.2g}"


def _margin_cell(row: dict) -> str:
    margin = row.get("margin", math.nan)
    if row["id"] not in NO_WORSE:
        return ""
    if margin is None or math.isnan(margin):
        return "no margin"
    if row.get("non_inferior") is None:
        return f"m = {margin:g}: n/a"
    yes = {True: "yes", False: "no"}
    return (f"m = {margin:g}, 90% [{row['ci90_low']:.3g}, {row['ci90_high']:.3g}]: no worse "
            f"{yes[bool(row['non_inferior'])]}, equivalent {yes[bool(row['equivalent'])]}")


def primary_lines(family: list[dict], n_resamples: int) -> list[str]:
    """The primary family's table and what its columns mean."""
    held = [r for r in family if r["testable"] and r["p_holm"] < LEVEL]
    lines = ["## Primary family (PLAN.md §3), Holm-corrected together", "",
             f"m = {len(family)}; {sum(r['testable'] for r in family)} testable; {len(held)} rejected at familywise "
             f"0.05. Intervals: 95% percentile bootstrap ({n_resamples} resamples of questions and documents per "
             "behavior, every interpolation and choice redone). p ± its Monte-Carlo standard error; a Holm p within "
             "two of them of 0.05 is borderline. A budget reached between alpha 0 and a vector's first measured "
             "alpha is not read (first segment).", "",
             "| # | claim | behavior | contrast | budget | estimate [95% CI] | probability [95% CI] | p | Holm p | "
             "margin (90% CI, one-sided 95% / TOST) | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in family:
        probability = fmt_ci(r.get("probability_estimate", math.nan), r.get("probability_ci_low"),
                             r.get("probability_ci_high")) if r["id"] in PROBABILITY else ""
        holm = _p_cell(r["p_holm"], r["p_holm_mc_se"] if r["testable"] else None)
        share = r.get("first_segment_draws", math.nan)
        crossed = f"{share:.1%} of draws cross in a first segment" if share > 0 else ""  # NaN > 0 is False
        note = "; ".join(filter(None, ["**borderline**" if r.get("borderline") else "", r["note"], crossed]))
        lines.append(f"| {r['id']} | {r['claim']} | {r['behavior']} | {r['contrast']} | "
                     f"{'' if math.isnan(r['budget']) else format(r['budget'], 'g')} | "
                     f"{fmt_ci(r['estimate'], r['ci_low'], r['ci_high'])} | {probability} | "
                     f"{_p_cell(r['p_value'], r['p_mc_se'])} | {holm} | {_margin_cell(r)} | {note} |")
    lines += ["", "Margins (PLAN.md amendment 2026-12-05, 4) on each behavior's own scale (log-odds for refusal, "
              "nats/token for morality; the probability scale has none): non-inferiority when the one-sided 95% "
              "bound (the 90% interval's low end) is above -m, equivalence when the 90% interval lies inside "
              "(-m, +m). No worse means: " + "; ".join(f"{k} {v}" for k, v in NO_WORSE.items()) + "."]
    return lines


def summary_markdown(results, family: list[dict], shares: dict, n_resamples: int, sections=()) -> list[str]:
    """SUMMARY.md's body: the primary family, the narrow/diffuse shares, ``sections`` (the controls'),
    the counts and the cost."""
    from actstore.evaluation.grid import is_control
    from actstore.evaluation.report import count_line

    lines = primary_lines(family, n_resamples)
    if shares:
        lines += ["", "Narrow/diffuse (claim (b), from the train statistics alone): share of the layer-8 dense "
                  f"vector's squared norm on its {NARROW_K} coordinates of largest ENR: "
                  + ", ".join(f"{b} {s:.3f}" for b, s in sorted(shares.items())) + "."]
    lines += ["", *sections]
    lines += ["", "## Counts (secondary; Benjamini-Hochberg per behavior, controls a family of their own)", ""]
    for behavior, rows in results.groupby("behavior"):
        vectors = rows[~rows["method"].map(is_control)]
        controls = rows[rows["method"].map(is_control)]
        lines.append(f"- **{behavior}** ({rows['measure'].iloc[0]}, {int(rows['n_questions'].iloc[0])} questions): "
                     f"vectors: {count_line(vectors)}"
                     + (f"; controls: {count_line(controls)}" if len(controls) else "") + ".")
    seconds = results["seconds"].to_numpy(dtype=float)
    lines += ["", "## Cost", "",
              f"{len(results)} configurations; median {float(sorted(seconds)[len(seconds) // 2]):.3g} s each, "
              f"{3600 / seconds.mean():.0f} configurations per hour at the mean ({seconds.sum() / 3600:.2f} h in all).",
              ""]
    return lines

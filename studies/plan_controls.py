"""The gemma plan's controls beside the primary family (PLAN.md's amendment of 2026-12-05, items 3, 6, 7).

* :func:`random_controls` (controls.csv): each vector at layer 8 (enr, whitened) that has random
  controls of its k, minus each seed's control (``random:<seed>``) at 1.25 (PLAN.md's fallback
  1.05 where either side is not read there; the first-segment rule of :func:`plan_summary.read_at`
  on both sides), a 95% percentile interval per seed, on the primary measure and (A/B) on the
  probability scale. The vector **exceeds random** only if every seed's interval lies above zero
  (the vector moves the behavior more than the random direction); the range over seeds is given.
* :func:`letter_leak` (letter_leak.csv): the letter control's both-orders log-odds shift interval
  at its largest alpha (results.csv's 95% t interval over questions), its larger absolute bound
  divided by the control's |letter bias| at that alpha: the share of a letter push that may still
  be in a both-orders shift. Times each vector's |letter bias| at 1.25 (fallback 1.05; neither is
  read in the first segment), the letter bias interpolated along the vector's path like its shift
  (linearly in log-inflation from the unsteered point, results.csv's per-alpha ``letter_bias``):
  the largest part of the vector's shift that may be its letter push. The same ratio at the
  control's other alphas is given as a range (``other_*``).
* :func:`resampled` (resampled.csv): P1, P2 and P6's ENR side (ENR k=64 at layer 8 alone; whitened
  vectors cannot be resampled) with the vectors' own noise, from the half sweeps
  ``<out>/<behavior>-half-1-2`` and ``-half-2-2`` combined with the full folder
  (:func:`actstore.evaluation.resampling.combine`, c = 1/sqrt(2)), at the primary row's budget;
  the widened interval beside the fixed-vector one and the ratio of their widths. Decisions stay on
  the fixed-vector intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from plan_summary import FALLBACK_BUDGET, PRIMARY_BUDGET, choose_budget, fmt, fmt_ci, read_at

LAYER = 8
VECTOR_METHODS = ("enr", "whitened")


def _seeds(paths, behavior: str, k: str) -> list[int]:
    return sorted(int(v[2].split(":", 1)[1]) for v in paths.index
                  if v[0] == behavior and int(v[1]) == LAYER and str(v[2]).startswith("random:") and str(v[3]) == k)


def _seed_row(paths, behavior: str, vector: tuple, seed: int, scale: str) -> dict:
    from actstore.evaluation.intervals import bootstrap_p_value, percentile_interval

    _, method, k = vector
    control = (LAYER, f"random:{seed}", k)
    row = {"behavior": behavior, "scale": scale, "layer": LAYER, "method": method, "k": k, "seed": seed}
    budget, note = choose_budget(paths, behavior, [vector, control])
    if budget is None:
        return {**row, "budget": math.nan, "estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan, "read": False, "note": note}
    mine, theirs = (read_at(paths, behavior, *v, budget) for v in (vector, control))
    interval = percentile_interval(mine.shift - theirs.shift, mine.draws - theirs.draws)
    return {**row, "budget": budget, "estimate": interval.estimate, "ci_low": interval.low, "ci_high": interval.high,
            "p_value": bootstrap_p_value(mine.draws - theirs.draws), "read": True,
            "vector_shift": mine.shift, "random_shift": theirs.shift,
            "first_segment_draws": max(mine.first_segment_draws, theirs.first_segment_draws),
            "note": "" if budget == PRIMARY_BUDGET else f"fallback {FALLBACK_BUDGET:g}"}


def verdict(rows: list[dict]) -> str:
    """"exceeds random" only where every seed is read and its interval lies above zero."""
    failed = [r["seed"] for r in rows if r["read"] and not r["ci_low"] > 0]
    unread = [r["seed"] for r in rows if not r["read"]]
    if failed:
        return f"not shown (seed {', '.join(map(str, failed))}: interval not above zero)"
    if unread:
        return f"undecided (seed {', '.join(map(str, unread))} not read)"
    return f"exceeds random (all {len(rows)} seeds)" if len(rows) > 1 else "exceeds random (its one seed)"


def random_controls(paths_of: dict, probability_of: dict | None = None):
    """controls.csv: one row per (behavior, scale, vector, seed), with the vector's ``verdict``."""
    import pandas as pd

    rows = []
    for behavior, paths in paths_of.items():
        scales = [(paths.evidence.measure, paths)]
        scales += [("probability", probability_of[behavior])] if behavior in (probability_of or {}) else []
        vectors = sorted((int(v[1]), v[2], str(v[3])) for v in paths.index
                         if v[0] == behavior and int(v[1]) == LAYER and v[2] in VECTOR_METHODS)
        for scale, scaled in scales:
            for vector in vectors:
                seeds = [_seed_row(scaled, behavior, vector, s, scale) for s in _seeds(scaled, behavior, vector[2])]
                rows += [{**r, "verdict": verdict(seeds)} for r in seeds]
    return pd.DataFrame(rows)


def leak_ratios(results) -> tuple[float, float, float, float] | None:
    """(alpha, ratio) at the letter control's largest alpha and the (min, max) ratio at its other
    alphas: max(|ci_low|, |ci_high|) of its both-orders log-odds shift / its |letter bias|."""
    letter = results[(results["method"] == "letter") & (results["alpha"] > 0)].sort_values("alpha")
    if not len(letter) or "letter_bias" not in letter:
        return None
    bound = np.maximum(letter["shift_logodds_ci_low"].abs(), letter["shift_logodds_ci_high"].abs()).to_numpy(float)
    ratio = bound / letter["letter_bias"].abs().to_numpy(float)
    others = ratio[:-1] if ratio.size > 1 else np.array([math.nan])
    return float(letter["alpha"].iloc[-1]), float(ratio[-1]), float(np.min(others)), float(np.max(others))


def letter_bias_at(paths, vector: tuple, budget: float) -> float:
    """The vector's letter bias at ``budget``, interpolated along its path like its shift."""
    from actstore.evaluation.paths import interpolate_at

    rows = paths.index[vector]
    results = paths.evidence.results
    origin = np.zeros(1)
    L = np.concatenate([origin, paths.log_inflation[rows]])
    bias = np.concatenate([origin, results["letter_bias"].to_numpy(dtype=np.float64)[rows]])
    alpha = np.concatenate([origin, results["alpha"].to_numpy(dtype=np.float64)[rows]])
    value, _ = interpolate_at(L, bias, alpha, math.log(budget))
    return float(value)


def letter_leak(paths_of: dict):
    """letter_leak.csv: per vector (every layer, controls excepted) of an A/B behavior with a letter control."""
    import pandas as pd

    from actstore.evaluation.grid import is_control

    rows = []
    for behavior, paths in paths_of.items():
        results = paths.evidence.results
        ratios = leak_ratios(results[results["behavior"] == behavior])
        if paths.evidence.measure != "logodds" or ratios is None:
            continue
        letter_alpha, ratio, low, high = ratios
        for vector in sorted(v for v in paths.index if v[0] == behavior and not is_control(v[2])):
            _, layer, method, k = vector
            budget, note = choose_budget(paths, behavior, [(int(layer), method, str(k))])
            bias = letter_bias_at(paths, vector, budget) if budget is not None else math.nan
            shift = read_at(paths, behavior, int(layer), method, str(k), budget).shift if budget else math.nan
            rows.append({"behavior": behavior, "layer": int(layer), "method": method, "k": str(k),
                         "budget": budget or math.nan, "shift": shift, "letter_bias": bias,
                         "letter_alpha": letter_alpha, "leak_ratio": ratio, "leak_bound": ratio * abs(bias),
                         "other_ratio_min": low, "other_ratio_max": high, "other_bound_min": low * abs(bias),
                         "other_bound_max": high * abs(bias), "note": note})
    return pd.DataFrame(rows)


HALVES = ("half-1-2", "half-2-2")
# (primary row, behavior, the contrast that combine widens)
RESAMPLED = [("P1", "refusal", "8:enr:64-8:enr:dense"), ("P2", "morality", "8:enr:64-8:enr:dense"),
             ("P6", "refusal", "8:whitened:64-8:enr:64"), ("P7", "morality", "8:whitened:64-8:enr:64")]


def _widened(combined, row: dict) -> dict:
    """The figures of ``combined``'s contrast for one primary row."""
    table = combined.contrasts[combined.contrasts["contrast"] == row["id"]]
    if not len(table):
        return {"note": "not in the half sweeps"}
    r = table.iloc[0]
    return {"estimate": r["estimate"], "fixed_ci_low": r["fixed_ci_low"], "fixed_ci_high": r["fixed_ci_high"],
            "ci_low": r["ci_low"], "ci_high": r["ci_high"], "width_ratio": r["width_ratio"],
            "replicates_min": r.get("replicates_min", math.nan), "replicates_max": r.get("replicates_max", math.nan),
            "note": ""}


def resampled(out: Path, family: list[dict], n_resamples: int, margins: dict | None = None):
    """resampled.csv: P1, P2, P6 and P7, fixed-vector and widened intervals ("not run" without halves)."""
    import pandas as pd

    from actstore.errors import ActstoreError
    from actstore.evaluation.resampling import combine

    by_id = {r["id"]: r for r in family}
    rows = []
    for name, behavior, what in RESAMPLED:
        row = by_id[name]
        base = {"id": name, "behavior": behavior, "figure": row["contrast"], "budget": row["budget"]}
        halves = [out / f"{behavior}-{h}" for h in HALVES]
        if not all((h / "results.csv").exists() for h in halves):
            rows.append({**base, "note": "not run"})
            continue
        if not row["testable"]:
            rows.append({**base, "note": f"not read: {row['note']}"})
            continue
        spec = [f"{name}={what}@{row['budget']:g}"]
        try:
            combined = combine(halves, out / behavior, (row["budget"],), spec, n_resamples=n_resamples,
                               margin=(margins or {}).get(behavior))
        except ActstoreError as error:
            rows.append({**base, "note": f"not combined: {error}"})
            continue
        rows.append({**base, **_widened(combined, row)})
    return pd.DataFrame(rows)


def _control_lines(controls) -> list[str]:
    if not len(controls):
        return ["No random control of a layer-8 vector's k was measured."]
    lines = ["| behavior | scale | vector | seeds | budget(s) | vector - random, range over seeds | lowest 95% "
             "bound | verdict |", "|---|---|---|---|---|---|---|---|"]
    for (behavior, scale, method, k), rows in controls.groupby(["behavior", "scale", "method", "k"], sort=False):
        read = rows[rows["read"]]
        budgets = ", ".join(f"{b:g}" for b in sorted(set(read["budget"]))) or "n/a"
        spread = (f"{read['estimate'].min():+.3g} to {read['estimate'].max():+.3g}" if len(read) else "n/a")
        lines.append(f"| {behavior} | {scale} | {method} k={k} | {len(rows)} | {budgets} | {spread} | "
                     f"{fmt(read['ci_low'].min() if len(read) else math.nan, '+.3g')} | {rows['verdict'].iloc[0]} |")
    return lines


def _leak_lines(leak) -> list[str]:
    if not len(leak):
        return ["No A/B behavior with a letter control."]
    lines = []
    for behavior, rows in leak.groupby("behavior", sort=False):
        first = rows.iloc[0]
        lines += [f"**{behavior}**: the letter control's ratio at its largest alpha ({first['letter_alpha']:g}) is "
                  f"{first['leak_ratio']:.1%} (at its other alphas {first['other_ratio_min']:.1%} to "
                  f"{first['other_ratio_max']:.1%}).", "",
                  "| layer | vector | budget | shift | letter bias | leak bound | at the other alphas' ratios |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows.sort_values("leak_bound", ascending=False, na_position="last").itertuples(index=False):
            lines.append(f"| {r.layer} | {r.method} k={r.k} | {fmt(r.budget, 'g')} | {fmt(r.shift, '+.3g')} | "
                         f"{fmt(r.letter_bias, '.3g')} | {fmt(r.leak_bound, '.2g')} | {fmt(r.other_bound_min, '.2g')}"
                         f"-{fmt(r.other_bound_max, '.2g')} | " + (f" {r.note}" if r.note else ""))
        lines.append("")
    return lines


def _resampled_lines(resampled) -> list[str]:
    lines = ["| # | behavior | figure | budget | estimate | fixed vectors | with their noise | width ratio | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in resampled.to_dict("records"):
        fixed = fmt_ci(r.get("estimate", math.nan), r.get("fixed_ci_low"), r.get("fixed_ci_high"))
        widened = fmt_ci(r.get("estimate", math.nan), r.get("ci_low"), r.get("ci_high"))
        lines.append(f"| {r['id']} | {r['behavior']} | {r['figure']} | {fmt(r['budget'], 'g')} | "
                     f"{fmt(r.get('estimate', math.nan), '+.3g')} | {fixed} | {widened} | "
                     f"{fmt(r.get('width_ratio', math.nan), '.2f')} | {r.get('note') or ''} |")
    return lines


def markdown(controls, leak, resampled) -> list[str]:
    """SUMMARY.md's sections for controls.csv, letter_leak.csv and resampled.csv."""
    return ["## Random controls (PLAN.md amendment 2026-12-05, 3)", "",
            f"Each layer-8 vector minus each seed's random control of its k at {PRIMARY_BUDGET:g} (fallback "
            f"{FALLBACK_BUDGET:g}; a budget reached in either path's first segment is not read), 95% percentile "
            "interval per seed (controls.csv). A vector exceeds random only if every seed's interval lies above "
            "zero; on A/B behaviors each scale has its verdict (PLAN.md §7: established only where both "
            "agree).", "", *_control_lines(controls), "",
            "## The letter leak, bounded (amendment 6)", "",
            "Ratio: the letter control's both-orders log-odds shift, the larger absolute end of its 95% interval "
            "(results.csv) at its largest alpha, over its |letter bias| there. Leak bound: that ratio times the "
            f"vector's |letter bias| at {PRIMARY_BUDGET:g} (fallback {FALLBACK_BUDGET:g}), interpolated along its "
            "path like its shift: the largest part of its shift that may be its letter push, in log-odds "
            "(letter_leak.csv).", "", *_leak_lines(leak),
            "## The vectors' own noise (amendments 7 and 10)", "",
            "Half sweeps (`--train-resample half:1/2`, `half:2/2`) combined with the full folder "
            "(`actstore.evaluation.resampling.combine`, c = 1/sqrt(2)) at the primary row's budget; decisions "
            "stay on the fixed-vector intervals; both sides of P6 and P7 are resampled (a half's whitened vector "
            "from the half's covariance). P3, P4 and P5 have none (resampled.csv).", "",
            *_resampled_lines(resampled), ""]

"""The primary contrasts of studies/results/generation/PLAN.md, from the sweep folders alone.

Called as `python studies/generation_axbench.py summarize`. Per model folder (instruct, demo) and
concept folder (concept0..9): results.csv's selected rows (each vector's factor chosen on the select
prompts) and items.csv's harmonic scores on the report prompts, paired by prompt. P1 = prompt - dense,
P2 = k64 - dense; the estimate is the mean over concepts of each concept's mean paired difference, with
(a) a t interval over the concept means and (b) a t interval over the (concept, instruction) pairs;
Holm over the 4 tests on (a)'s p-values. Writes SUMMARY.md and contrasts.csv beside the folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from generation_axbench import AXBENCH_PROMPT_MINUS_DIFFMEAN, t_interval

CONTRASTS = {"P1 prompt - dense": ("prompt", "dense"), "P2 k64 - dense": ("64", "dense")}
SECONDARY = {"prompt - unsteered": ("prompt", "none"), "dense - unsteered": ("dense", "none"),
             "k64 - unsteered": ("64", "none")}  # does each arm add the concept at all (no correction claimed)
RUBRICS = ("harmonic", "concept_rating", "instruction_rating", "fluency_rating")


def _arm(method: str, k: str) -> str:
    return "prompt" if method == "prompt" else str(k)


def selected_scores(folder: Path) -> pd.DataFrame:
    """(prompt_id, arm) -> the report prompts' ratings at each arm's selected configuration, plus the
    unsteered baseline (arm "none") and each arm's selected alpha and perplexity inflation."""
    results = pd.read_csv(folder / "results.csv")
    items = pd.read_csv(folder / "items.csv", dtype={"k": str})
    chosen = results[results["selected"].astype(bool)]
    frames = []
    for row in chosen.itertuples():
        rows = items[(items["method"] == row.method) & (items["k"].astype(str) == str(row.k))
                     & np.isclose(items["alpha"], row.alpha) & (items["layer"] == row.layer)]
        frames.append(rows.assign(arm=_arm(row.method, row.k)))
    baseline = items[items["method"] == "none"] if "none" in set(items["method"]) else None
    if baseline is not None and len(baseline):
        frames.append(baseline.assign(arm="none"))
    table = pd.concat(frames)
    return table[table["split"] == "report"]


def concept_differences(folder: Path, measure: str = "harmonic") -> dict[str, np.ndarray]:
    """Per contrast: the paired differences of ``measure`` over the concept's report prompts."""
    table = selected_scores(folder).pivot_table(index="prompt_id", columns="arm", values=measure)
    return {name: (table[a] - table[b]).to_numpy() for name, (a, b) in {**CONTRASTS, **SECONDARY}.items()
            if a in table and b in table}


def selected_damage(folder: Path) -> dict[str, float]:
    """Each arm's perplexity inflation at its selected configuration (results.csv)."""
    results = pd.read_csv(folder / "results.csv", dtype={"k": str})
    chosen = results[results["selected"].astype(bool)]
    return {_arm(row.method, row.k): float(row.ppl_inflation) for row in chosen.itertuples()}


def finished(folder: Path) -> bool:
    """A sweep that ran to its end: its report written and all 7 configurations in results.csv (amendment 2
    cuts the run by the clock; a concept cut mid-sweep is left out)."""
    return (folder / "results.md").is_file() and len(pd.read_csv(folder / "results.csv")) == 7


def summarize(out: Path) -> None:
    from actstore.evaluation.intervals import holm_adjusted

    rows = []
    for model_folder, measure in ((m, measure) for m in sorted(out.iterdir()) if m.is_dir() and m.name in
                                  ("instruct", "demo") for measure in ("harmonic", "concept_rating")):
        per_concept = {c.name: concept_differences(c, measure) for c in sorted(model_folder.glob("concept*"))
                       if finished(c)}
        for name in (*CONTRASTS, *SECONDARY):
            diffs = [d[name] for d in per_concept.values() if name in d]
            if len(diffs) < 2:
                continue
            means = [float(np.nanmean(d)) for d in diffs]
            mean, low, high, p = t_interval(means)
            _, pair_low, pair_high, _ = t_interval(np.concatenate(diffs))
            rows.append({"model": model_folder.name, "measure": measure, "contrast": name, "concepts": len(diffs),
                         "pairs": int(sum(np.isfinite(d).sum() for d in diffs)), "estimate": mean,
                         "ci_low_concepts": low, "ci_high_concepts": high, "p_concepts": p,
                         "ci_low_pairs": pair_low, "ci_high_pairs": pair_high})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = np.nan  # Holm within each measure's primary family (the plan's 4 tests per measure)
        primary = table["contrast"].isin(list(CONTRASTS))
        for _, family in table[primary].groupby("measure"):
            table.loc[family.index, "p_holm"] = holm_adjusted(family["p_concepts"].to_numpy())
    table.to_csv(out / "contrasts.csv", index=False)
    lines = ["# Primary contrasts (harmonic score at the selected factor, report prompts)", "",
             "| model | measure | contrast | concepts / pairs | estimate | 95% CI over concepts | 95% CI over pairs "
             "| p (concepts) | Holm p | AxBench |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        axbench = f"{AXBENCH_PROMPT_MINUS_DIFFMEAN:+.3f}" if row.contrast.startswith("P1") and \
            row.measure == "harmonic" else "-"
        lines.append(f"| {row.model} | {row.measure} | {row.contrast} | {row.concepts} / {row.pairs} | "
                     f"{row.estimate:+.3f} | "
                     f"[{row.ci_low_concepts:+.3f}, {row.ci_high_concepts:+.3f}] | [{row.ci_low_pairs:+.3f}, "
                     f"{row.ci_high_pairs:+.3f}] | {row.p_concepts:.3g} | "
                     f"{'' if np.isnan(row.p_holm) else format(row.p_holm, '.3g')} | {axbench} |")
    lines += ["", "Rows without a Holm p are secondary (each arm against the unsteered model, no correction claimed).",
              "", _damage_lines(out), "", "Not in the plan, added after reading the generations: degenerate "
              "text at each arm's selected configuration (all 16 prompts).", "", degenerate_lines(out)]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _damage_lines(out: Path) -> str:
    """Perplexity inflation at each arm's selected configuration: the median and range over concepts."""
    lines = ["| model | arm | concepts | ppl inflation at the selected factor: median [min, max] |",
             "|---|---|---|---|"]
    for model_folder in sorted(m for m in out.iterdir() if m.is_dir() and m.name in ("instruct", "demo")):
        damage = pd.DataFrame([selected_damage(c) for c in sorted(model_folder.glob("concept*")) if finished(c)])
        for arm in damage.columns:
            values = damage[arm].dropna()
            lines.append(f"| {model_folder.name} | {arm} | {len(values)} | {values.median():.3f} "
                         f"[{values.min():.3f}, {values.max():.3f}] |")
    return "\n".join(lines)


def degenerate_lines(out: Path) -> str:
    """Not in the plan (added after reading the generations): the share of degenerate generations
    (:func:`actstore.evaluation.scorers.is_degenerate`: a run of one character, a sentence or a 4-gram said
    three times, ...) at each arm's selected configuration, pooled over the finished concepts' prompts."""
    import json

    from actstore.evaluation.scorers import is_degenerate

    lines = ["| model | arm | generations | degenerate |", "|---|---|---|---|"]
    for model_folder in sorted(m for m in out.iterdir() if m.is_dir() and m.name in ("instruct", "demo")):
        counts: dict[str, list[int]] = {}
        for folder in sorted(c for c in model_folder.glob("concept*") if finished(c)):
            results = pd.read_csv(folder / "results.csv", dtype={"k": str})
            chosen = {(row.method, str(row.k), float(row.alpha)) for row in results[results["selected"]].itertuples()}
            chosen.add(("none", "none", 0.0))
            for line in (folder / "generations.jsonl").read_text().splitlines():
                row = json.loads(line)
                key = (row["method"], str(row["k"]), float(row["alpha"]))
                if key in chosen:
                    arm = "none" if row["method"] == "none" else _arm(row["method"], row["k"])
                    counts.setdefault(arm, []).append(int(is_degenerate(row["text"])))
        for arm, flags in counts.items():
            lines.append(f"| {model_folder.name} | {arm} | {len(flags)} | {np.mean(flags):.0%} |")
    return "\n".join(lines)

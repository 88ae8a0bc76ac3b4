"""The contrasts of studies/results/generation/PLAN.md (and its amendment 3), from the sweep folders alone.

Called as `python studies/generation_axbench.py summarize`. Per model folder (instruct, demo) and concept
folder (concept0..9):

* the **planned** contrasts, exactly as the plan computes them: each vector at its factor selected over the
  planned factors {0.5, 1, 2} (recomputed from items.csv by :func:`generation_selection.planned_selection`,
  so the factors amendment 3 adds to the same folders do not move it); P1 = prompt - dense, P2 = k64 - dense
  on the report prompts, paired by prompt; the estimate is the mean over concepts of each concept's mean
  paired difference, with (a) a t interval over the concept means and (b) one over the (concept,
  instruction) pairs; Holm over the 4 tests (2 contrasts x 2 models) per measure on (a)'s p-values;
* the **capped** contrasts P1c and P2c (amendment 3 item 3): the same at the selection under the damage cap
  (:func:`generation_selection.capped_selection`), a Holm family of their own, over the concepts whose added
  factors (0.125, 0.25) are in; a concept where an arm has no factor under the cap drops out of the
  contrasts with that arm (counted);
* the fluency validation's verdict (``fluency/validation.json``, :mod:`generation_fluency`), which decides
  whether the capped selection uses the gated harmonic.

Writes SUMMARY.md and contrasts.csv beside the folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from generation_axbench import AXBENCH_PROMPT_MINUS_DIFFMEAN, t_interval
from generation_selection import (
    ADDED,
    ADDED_BY_MODEL,
    CAP,
    CONTRASTS,
    PLANNED,
    SECONDARY,
    Sweep,
    arm_scores,
    capped_selection,
    differences,
    has_factors,
    planned_selection,
    read_sweep,
)

MODELS = ("instruct", "demo")
N_CONCEPTS = 10
MEASURES = ("harmonic", "concept_rating")
CAPPED = {"P1c prompt - dense": ("prompt", "dense"), "P2c k64 - dense": ("64", "dense")}


def _done_rows(folder: Path) -> pd.DataFrame:
    results = pd.read_csv(folder / "results.csv", dtype={"k": str})
    return results.dropna(subset=["on_target_shift", "ppl_inflation"])  # as the sweep's ledger reads it


def finished(folder: Path) -> bool:
    """A planned sweep that ran to its end: its report written and the planned 7 configurations (the prompting
    baseline, k 64 and dense at 0.5, 1, 2) in results.csv (amendment 2 cuts the run by the clock; a concept
    cut mid-sweep is left out)."""
    return (folder / "results.md").is_file() and (folder / "results.csv").is_file() and \
        has_factors(_done_rows(folder), PLANNED)


def extended(folder: Path) -> bool:
    """A finished concept whose added factors are in too (amendment 3: 0.125 and 0.25 for k 64 and dense;
    amendment 4: 0.02, 0.04 and 0.08 in a ``demo`` model folder)."""
    return finished(folder) and has_factors(_done_rows(folder), ADDED_BY_MODEL.get(folder.parent.name, ADDED))


@dataclass
class ModelSweeps:
    """One model folder: its finished concepts (read), those of them in the capped family (added factors in,
    every item with its text), and the names of the others."""

    name: str
    planned: list[Sweep] = field(default_factory=list)
    capped: list[Sweep] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    capped_not_run: list[str] = field(default_factory=list)


def read_models(out: Path) -> list[ModelSweeps]:
    """Each model folder of ``out`` (instruct, demo) with its concept folders sorted by number."""
    models = []
    for name in MODELS:
        folder = out / name
        if not folder.is_dir():
            continue
        model = ModelSweeps(name)
        numbered = [p for p in folder.glob("concept*") if p.is_dir() and p.name[len("concept"):].isdigit()]
        for concept in sorted(numbered, key=lambda p: int(p.name[len("concept"):])):
            if not finished(concept):
                model.unfinished.append(concept.name)
                continue
            sweep = read_sweep(concept)
            model.planned.append(sweep)
            if extended(concept) and sweep.aligned:
                model.capped.append(sweep)
            else:
                model.capped_not_run.append(concept.name)
        models.append(model)
    return models


def contrast_rows(model: str, measure: str, per_concept: list[dict[str, np.ndarray]], names) -> list[dict]:
    """One row per contrast with at least 2 concepts: the mean of the concept means, the t intervals over
    concepts and over (concept, instruction) pairs, and the p-value over concepts."""
    rows = []
    for name in names:
        diffs = [d[name] for d in per_concept if name in d]
        if len(diffs) < 2:
            continue
        mean, low, high, p = t_interval([float(np.nanmean(d)) for d in diffs])
        _, pair_low, pair_high, _ = t_interval(np.concatenate(diffs))
        rows.append({"model": model, "measure": measure, "contrast": name, "concepts": len(diffs),
                     "pairs": int(sum(np.isfinite(d).sum() for d in diffs)), "estimate": mean,
                     "ci_low_concepts": low, "ci_high_concepts": high, "p_concepts": p,
                     "ci_low_pairs": pair_low, "ci_high_pairs": pair_high})
    return rows


def with_holm(table: pd.DataFrame, primary) -> pd.DataFrame:
    """``p_holm``: Holm within each measure's family of ``primary`` contrasts (over models), NaN elsewhere."""
    from actstore.evaluation.intervals import holm_adjusted

    table = table.assign(p_holm=np.nan)
    if len(table):
        rows = table[table["contrast"].isin(list(primary))]
        for _, family in rows.groupby("measure"):
            table.loc[family.index, "p_holm"] = holm_adjusted(family["p_concepts"].to_numpy())
    return table


def planned_table(models: list[ModelSweeps]) -> pd.DataFrame:
    """The plan's contrasts (and the secondary ones against the unsteered model) at the planned selection."""
    rows = []
    for model in models:
        scores = [arm_scores(s, planned_selection(s)) for s in model.planned]
        for measure in MEASURES:
            per_concept = [differences(table, measure, {**CONTRASTS, **SECONDARY}) for table in scores]
            rows += contrast_rows(model.name, measure, per_concept, (*CONTRASTS, *SECONDARY))
    return with_holm(pd.DataFrame(rows), CONTRASTS).assign(family="planned")


def capped_measures(gated: bool) -> tuple[str, ...]:
    """The capped family's measures: the concept rating, the plan's harmonic and, if the gate passed, the
    gated harmonic beside it (never instead of it)."""
    return ("concept_rating", "harmonic", "harmonic_gated") if gated else ("concept_rating", "harmonic")


def capped_table(models: list[ModelSweeps], gated: bool) -> pd.DataFrame:
    """P1c and P2c (and the arms against the unsteered model) at the capped selection, with ``left_out``:
    the capped family's concepts where one of the contrast's arms had no configuration under the cap."""
    rows = []
    contrasts = {**CAPPED, **SECONDARY}
    for model in models:
        scores = [arm_scores(s, capped_selection(s, gated)) for s in model.capped]
        arms = [set(table["arm"]) for table in scores]
        for measure in capped_measures(gated):
            per_concept = [differences(table, measure, contrasts) for table in scores]
            for row in contrast_rows(model.name, measure, per_concept, contrasts):
                a, b = contrasts[row["contrast"]]
                rows.append({**row, "left_out": sum(not {a, b} <= present for present in arms)})
    return with_holm(pd.DataFrame(rows), CAPPED).assign(family="capped")


def table_lines(table: pd.DataFrame, capped: bool = False) -> list[str]:
    """A contrasts table in markdown: the planned one with AxBench's figure beside P1 on the harmonic (its
    selection is by score, uncapped), the capped one with the concepts left out instead."""
    last = "left out (no configuration within the cap)" if capped else "AxBench"
    lines = ["| model | measure | contrast | concepts / pairs | estimate | 95% CI over concepts | 95% CI over pairs "
             f"| p (concepts) | Holm p | {last} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        axbench = f"{AXBENCH_PROMPT_MINUS_DIFFMEAN:+.3f}" if row.contrast.startswith("P1 ") and \
            row.measure == "harmonic" else "-"
        lines.append(f"| {row.model} | {row.measure} | {row.contrast} | {row.concepts} / {row.pairs} | "
                     f"{row.estimate:+.3f} | "
                     f"[{row.ci_low_concepts:+.3f}, {row.ci_high_concepts:+.3f}] | [{row.ci_low_pairs:+.3f}, "
                     f"{row.ci_high_pairs:+.3f}] | {row.p_concepts:.3g} | "
                     f"{'' if np.isnan(row.p_holm) else format(row.p_holm, '.3g')} | "
                     f"{row.left_out if capped else axbench} |")
    return lines


def summarize(out: Path) -> None:
    """SUMMARY.md and contrasts.csv (both families) in ``out``, from its model folders."""
    from generation_fluency import read_verdict, verdict_line

    verdict = read_verdict(out / "fluency")
    gated = bool(verdict and verdict["gate"])
    models = read_models(out)
    planned, capped = planned_table(models), capped_table(models, gated)
    pd.concat([planned, capped], ignore_index=True).to_csv(out / "contrasts.csv", index=False)
    lines = ["# Generation study: summary (`python studies/generation_axbench.py summarize`)", "",
             *judge_lines(out), verdict_line(verdict), "", *concept_count_lines(models), "",
             "## Primary contrasts (harmonic score at the selected factor, report prompts)", "",
             *table_lines(planned), "",
             "Rows without a Holm p are secondary (each arm against the unsteered model, no correction claimed). "
             "Each vector's factor is selected over the planned factors {0.5, 1, 2} only.", "",
             *damage_lines(models), "", "Not in the plan, added after reading the generations: degenerate "
             "text at each arm's selected configuration (all 16 prompts).", "", *degenerate_lines(models), "",
             *capped_lines(models, capped, gated)]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def judge_lines(out: Path) -> list[str]:
    """The concept raters' validations (judge/ and classifier/VALIDATION.md: the pooled AUROCs and the rule),
    printed above every result that uses them."""
    lines = []
    for folder, who in (("classifier", "Concept rating (TF-IDF classifier, amendment 1)"),
                        ("judge", "LM judge's concept rating (SmolLM2-135M-Instruct; not used for the concept)")):
        path = out / folder / "VALIDATION.md"
        if path.is_file():
            kept = [line.strip() for line in path.read_text().splitlines()
                    if line.startswith(("Pooled, positive vs negative", "The plan's rule"))]
            lines += [f"{who}, `{folder}/VALIDATION.md`: " + " ".join(kept), ""]
    return lines or ["The concept raters were not validated (no judge/ or classifier/VALIDATION.md here).", ""]


def _names(sweeps) -> str:
    """``concepts 0, 1, 2``, ``concept 8`` or ``none``, from concept folders' names or sweeps."""
    numbers = [(s if isinstance(s, str) else s.name).replace("concept", "") for s in sweeps]
    return f"concept{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}" if numbers else "none"


def concept_count_lines(models: list[ModelSweeps]) -> list[str]:
    """Per model: the concepts whose planned sweep finished, those in the capped family, and those not run."""
    lines = []
    for model in models:
        started = len(model.planned) + len(model.unfinished)
        added = " and ".join(f"{f:g}" for f in ADDED_BY_MODEL.get(model.name, ADDED))
        lines.append(f"- {model.name}: planned grid finished for {len(model.planned)} of {N_CONCEPTS} concepts "
                     f"({_names(model.planned)}; cut or running: {_names(model.unfinished)}; not started: "
                     f"{N_CONCEPTS - started}). Capped family (factors {added} in too): {len(model.capped)} "
                     f"({_names(model.capped)}); capped not run: {N_CONCEPTS - len(model.capped)} (of them finished "
                     f"without all the added factors in: {_names(model.capped_not_run)}).")
    return lines


def damage_lines(models: list[ModelSweeps]) -> list[str]:
    """Perplexity inflation at each arm's planned selection: the median and range over concepts."""
    lines = ["| model | arm | concepts | ppl inflation at the selected factor: median [min, max] |",
             "|---|---|---|---|"]
    for model in models:
        damage = pd.DataFrame([{("prompt" if r.method == "prompt" else str(r.k)): float(r.ppl_inflation)
                                for r in planned_selection(s).itertuples()} for s in model.planned])
        for arm in damage.columns:
            values = damage[arm].dropna()
            lines.append(f"| {model.name} | {arm} | {len(values)} | {values.median():.4g} "
                         f"[{values.min():.4g}, {values.max():.4g}] |")
    return lines


def degenerate_lines(models: list[ModelSweeps]) -> list[str]:
    """Not in the plan (added after reading the generations): the share of degenerate generations
    (:func:`actstore.evaluation.scorers.is_degenerate`) at each arm's planned selection, pooled over the
    concepts' prompts (both halves)."""
    lines = ["| model | arm | generations | degenerate |", "|---|---|---|---|"]
    for model in models:
        tables = [arm_scores(s, planned_selection(s), split=None) for s in model.planned]
        if not tables:
            continue
        pooled = pd.concat(tables)
        for arm, flags in pooled.groupby("arm", sort=False)["degenerate"]:
            lines.append(f"| {model.name} | {arm} | {len(flags)} | {flags.astype(float).mean():.0%} |")
    return lines


def capped_lines(models: list[ModelSweeps], table: pd.DataFrame, gated: bool) -> list[str]:
    """SUMMARY.md's section on the capped family: the contrasts, then each arm's damage at its capped choice."""
    from generation_capped import capped_damage_lines

    selection = "the gated harmonic (the fluency gate passed)" if gated else \
        "the plan's harmonic (the fluency gate is not used: not passed, or not yet validated)"
    lines = [f"## Capped contrasts (amendment 3 item 3: perplexity inflation at most {CAP:g})", "",
             "Per (concept, arm), among all measured factors (" + "; ".join(
                 f"{model}: {', '.join(f'{f:g}' for f in (*added, *PLANNED))}"
                 for model, added in ADDED_BY_MODEL.items()) + ") "
             f"whose inflation is at most {CAP:g}, the one with the largest mean of {selection} over the "
             "select prompts; the prompting arm only where its own inflation is within the cap. Holm over P1c and "
             "P2c x the models, per measure, a family of its own; rows without a Holm p are secondary. The left-out "
             "column counts the capped family's concepts where one of the two arms had no configuration within "
             "the cap.", ""]
    if not any(model.capped for model in models):
        return [*lines, "Not run: no finished concept has the added factors yet."]
    contrasts = table_lines(table, capped=True) if len(table) else ["No contrast has 2 concepts yet."]
    return [*lines, *contrasts, "", *capped_damage_lines(models, gated)]

"""Study (ii)'s summary: sparse (enr k=64) minus dense on the concept rating at matched perplexity damage.

Called as `python studies/generation_caa.py summarize` (or ``run``). Per behavior's sweep folder
(``<out>/<behavior>/``): the concept rating's shift (steered minus unsteered, per open-ended question) of
each vector read where its path first reaches each perplexity budget (1.05: the plan's test; 1.25), by the
project's own machinery (``Evidence.from_tables`` on a copy of results.csv whose ``measure`` is
``concept_rating``, ``Paths.of``, ``Paths.at``): questions and perplexity documents resampled together and
the interpolation redone in each resample (2000). Rows: k64 - dense, dense - unsteered, k64 - unsteered, on
the concept rating and (secondary) on the harmonic. Holm over the 2 planned tests (k64 - dense, concept
rating, budget 1.05, one per behavior). Writes SUMMARY.md (the scorers' validation first) and contrasts.csv.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from generation_caa import BEHAVIORS, BUDGETS, FRACTIONS, KS, LAYER, PASS_LOW, git_rev

SPARSE_K = 64  # the sparse vector compared with dense (KS holds it)
MEASURES = ("concept_rating", "harmonic")  # the validated on-target rating; the secondary harmonic
PLANNED = ("concept_rating", "k64 - dense", 1.05)  # the plan's test, one per behavior


def read_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """results.csv, items.csv and windows.csv of a sweep folder, read as the project reads them."""
    from actstore.evaluation.tables import read_csv

    return read_csv(folder / "results.csv"), read_csv(folder / "items.csv"), read_csv(folder / "windows.csv")


def finished(folder: Path) -> bool:
    """A sweep that ran to its end: its report written and every configuration in results.csv."""
    return (folder / "results.md").is_file() and (folder / "results.csv").is_file() and \
        len(pd.read_csv(folder / "results.csv")) == len(KS) * len(FRACTIONS)


def _figure(name: str, budget: float, estimate: float, draws: np.ndarray, alphas: str) -> dict:
    from actstore.evaluation.intervals import bootstrap_p_value, percentile_interval

    interval = percentile_interval(estimate, draws)
    return {"contrast": name, "budget": budget, "estimate": estimate, "ci_low": interval.low,
            "ci_high": interval.high, "p_value": bootstrap_p_value(draws) if math.isfinite(estimate) else math.nan,
            "reached_share": float(np.isfinite(draws).mean()), "alphas": alphas}


def contrast_rows(folder: Path, measure: str, n_resamples: int | None = None) -> list[dict]:
    """k64 - dense, dense - unsteered and k64 - unsteered on ``measure`` at each budget (NaN: not reached)."""
    from actstore.evaluation.intervals import N_RESAMPLES
    from actstore.evaluation.paths import Evidence, Paths
    from actstore.vectors.info import k_label

    results, items, windows = read_tables(folder)
    evidence = Evidence.from_tables(results.assign(measure=measure), items, windows)
    paths = Paths.of(evidence, n_resamples or N_RESAMPLES)
    behavior = results["behavior"].iloc[0]
    dense, sparse = (paths.find(behavior, LAYER, "enr", k_label(k)) for k in (None, SPARSE_K))
    rows = []
    for budget in BUDGETS:
        d, d_alpha, d_draws = paths.at(dense, math.log(budget))
        s, s_alpha, s_draws = paths.at(sparse, math.log(budget))
        rows += [_figure("k64 - dense", budget, s - d, s_draws - d_draws, f"k64 {s_alpha:.3g}, dense {d_alpha:.3g}"),
                 _figure("dense - unsteered", budget, d, d_draws, f"{d_alpha:.3g}"),
                 _figure("k64 - unsteered", budget, s, s_draws, f"{s_alpha:.3g}")]
    return [{"behavior": str(behavior), "measure": measure, **row,
             "planned": (measure, row["contrast"], row["budget"]) == PLANNED} for row in rows]


def contrast_table(out: Path, behaviors, n_resamples: int | None = None) -> pd.DataFrame:
    """Every finished behavior's rows, with Holm over the planned tests (NaN elsewhere)."""
    from actstore.evaluation.intervals import holm_adjusted

    rows = [row for behavior in behaviors if finished(out / behavior)
            for measure in MEASURES for row in contrast_rows(out / behavior, measure, n_resamples)]
    table = pd.DataFrame(rows, columns=["behavior", "measure", "contrast", "budget", "estimate", "ci_low", "ci_high",
                                        "p_value", "reached_share", "alphas", "planned"])
    table["p_holm"] = np.nan
    planned = table["planned"].astype(bool)
    table.loc[planned, "p_holm"] = holm_adjusted(table.loc[planned, "p_value"].to_numpy(dtype=np.float64))
    return table


def validations(out: Path, behaviors) -> pd.DataFrame:
    frames = [pd.read_csv(out / b / "validation.csv") for b in behaviors if (out / b / "validation.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["behavior", "scorer", "passes"])


def validation_lines(table: pd.DataFrame, behaviors) -> list[str]:
    lines = ["## The on-target scorers' validation (amendment 3, item 4; read first)", "",
             "| behavior | scorer | n matching / other | AUROC [95% CI] | lower bound > 0.6 |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.behavior} | {row.scorer} | {row.n_matching} / {row.n_other} | {row.auroc:.3f} "
                     f"[{row.auroc_low:.3f}, {row.auroc_high:.3f}] | {'passes' if row.passes else 'fails'} |")
    lines.append("")
    for behavior in behaviors:
        mine = table[(table["behavior"] == behavior) & (table["scorer"] == "classifier")]
        if not len(mine):
            lines.append(f"- {behavior}: the classifier was not validated; no finding is drawn from its ratings.")
        elif bool(mine["passes"].iloc[0]):
            lines.append(f"- {behavior}: the classifier (the sweep's concept rating) passes the rule; its shifts "
                         "below are read as findings.")
        else:
            lines.append(f"- {behavior}: the classifier (the sweep's concept rating) FAILS the rule (lower bound not "
                         f"above {PASS_LOW}): its shifts below are reported as measured and no finding is drawn "
                         "from them.")
    lines += ["", "The LM judge's concept rating is validated beside (the plan), but the sweeps rate the concept "
              "with the classifier only; the LM judge gives the instruction and fluency ratings (unvalidated).", ""]
    return lines


def training_lines(out: Path, behaviors) -> list[str]:
    import json

    lines = ["## Training data (vectors)", "", "| behavior | train.json items | dropped: question among the "
             "open-ended ones | kept | texts captured (with twins) | position |", "|---|---|---|---|---|---|"]
    for behavior in behaviors:
        path = out / behavior / "caa_run.json"
        if path.is_file():
            run = json.loads(path.read_text())
            lines.append(f"| {behavior} | {run['train_items']} | {run['dropped_open_ended']} | {run['kept']} | "
                         f"{run['texts_captured']} | {run['position']} (the answer letter, chat template) |")
    return lines + [""]


def _cell(row) -> str:
    if not math.isfinite(row.estimate):
        return "not reached"
    return f"{row.estimate:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]"


def contrast_lines(table: pd.DataFrame) -> list[str]:
    head = ["| behavior | measure | contrast | budget | estimate [95% CI] | p | Holm p | resamples reached | "
            "alpha (fraction of the residual norm) |", "|---|---|---|---|---|---|---|---|---|"]
    lines = ["## Planned: k64 - dense on the concept rating at ppl inflation 1.05 (Holm over 2)", "", *head]
    for planned, title in ((True, None), (False, "## Beside it (no correction claimed): each vector against the "
                                                  "unsteered model; budget 1.25; the harmonic (secondary)")):
        if title:
            lines += ["", title, "", *head]
        for row in table[table["planned"].astype(bool) == planned].itertuples():
            p, holm = ("-" if not math.isfinite(x) else f"{x:.3g}" for x in (row.p_value, row.p_holm))
            lines.append(f"| {row.behavior} | {row.measure} | {row.contrast} | {row.budget:g} | {_cell(row)} | "
                         f"{p} | {holm} | {row.reached_share:.0%} | {row.alphas} |")
    return lines


def summarize(out: Path, behaviors=tuple(BEHAVIORS), n_resamples: int | None = None) -> pd.DataFrame:
    """SUMMARY.md and contrasts.csv in ``out`` from the behaviors' sweep folders; returns the table."""
    table = contrast_table(out, behaviors, n_resamples)
    table.to_csv(out / "contrasts.csv", index=False)
    done = [b for b in behaviors if finished(out / b)]
    lines = ["# Study (ii): CAA open-ended questions, enr k=64 against dense at matched perplexity damage", "",
             f"`python studies/generation_caa.py summarize` ({git_rev()}). M1 (SmolLM2-135M-Instruct), layer "
             f"{LAYER}, chat template, 32 greedy tokens, fractions {', '.join(map(str, FRACTIONS))}. Shift: the "
             "rating steered minus unsteered per open-ended question, read where each vector's path first reaches "
             "the budget; intervals: 2000 bootstrap resamples of questions and perplexity documents, the "
             "interpolation redone in each (a resample where the budget is not reached is left out: "
             "'resamples reached').", "", *validation_lines(validations(out, behaviors), behaviors),
             *training_lines(out, behaviors), *contrast_lines(table), ""]
    missing = [b for b in behaviors if b not in done]
    lines.append(f"Not run or unfinished: {', '.join(missing)}." if missing else "Both behaviors' sweeps finished.")
    lines.append("The harmonic mixes the classifier's concept rating with the LM judge's unvalidated instruction "
                 "and fluency ratings (AxBench's 0 rule): secondary, read beside the concept rating, never instead.")
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table

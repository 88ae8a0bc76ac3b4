"""The damage side of amendment 3's capped selection (studies/results/generation/PLAN.md), for SUMMARY.md.

Per model and arm (the prompting baseline, enr k 64, enr dense), over the concepts of the capped family
(:func:`generation_summary.read_models`): in how many the arm had a configuration within the cap, which
factors the capped selection chose, the perplexity inflation there (median and range over concepts), the
share of degenerate generations there, and which concepts dropped out. The prompting baseline has no
factor: its own inflation is checked against the cap (:func:`prompt_inflation_line`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from generation_selection import CAP, arm, arm_scores, capped_selection

ARMS = ("prompt", "64", "dense")


def capped_choices(sweeps, gated: bool) -> pd.DataFrame:
    """One row per (concept, arm) of the capped family: the chosen factor (NaN for the prompting baseline),
    its perplexity inflation and the share of degenerate generations (all prompts); an arm with nothing
    within the cap has ``chosen`` False."""
    rows = []
    for sweep in sweeps:
        chosen = capped_selection(sweep, gated)
        scores = arm_scores(sweep, chosen, split=None)
        picked = {arm(r.method, r.k): r for r in chosen.itertuples()}
        for name in ARMS:
            row = picked.get(name)
            flags = scores.loc[scores["arm"] == name, "degenerate"].astype(float)
            rows.append({"concept": sweep.name, "arm": name, "chosen": row is not None,
                         "factor": float(row.norm_fraction) if row is not None else np.nan,
                         "ppl_inflation": float(row.ppl_inflation) if row is not None else np.nan,
                         "degenerate": float(flags.mean()) if len(flags) else np.nan})
    return pd.DataFrame(rows, columns=["concept", "arm", "chosen", "factor", "ppl_inflation", "degenerate"])


def _factors(values: pd.Series) -> str:
    counts = Counter(round(float(v), 9) for v in values.dropna())  # 0.25 and 0.25000000000000006 are one factor
    return ", ".join(f"{factor:g} x{n}" for factor, n in sorted(counts.items())) or "-"


def _range(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if not len(values):
        return "-"
    return f"{values.median():.{digits + 1}g} [{values.min():.{digits + 1}g}, {values.max():.{digits + 1}g}]"


def prompt_inflation_line(model: str, sweeps) -> str:
    """The prompting baseline's own perplexity inflation against the cap, over the capped family."""
    inflation = pd.Series([float(s.results.loc[s.results["method"] == "prompt", "ppl_inflation"].iloc[0])
                           for s in sweeps if (s.results["method"] == "prompt").any()])
    over = int((inflation > CAP).sum())
    return (f"- {model}: the prompting arm's own inflation {_range(inflation)} (median [min, max] over "
            f"{len(inflation)} concepts); over the cap {CAP:g} in {over} concept(s).")


def capped_damage_lines(models, gated: bool) -> list[str]:
    """SUMMARY.md's table of each arm at its capped selection, the drop-outs, and the prompting arm's check."""
    lines = ["| model | arm | concepts within the cap / in the capped family | factors chosen | ppl inflation at "
             "the capped choice: median [min, max] | degenerate (all 16 prompts) | dropped out (no "
             "configuration within the cap) |", "|---|---|---|---|---|---|---|"]
    notes = []
    for model in models:
        if not model.capped:
            continue
        choices = capped_choices(model.capped, gated)
        for name in ARMS:
            mine = choices[choices["arm"] == name]
            kept = mine[mine["chosen"]]
            dropped = ", ".join(c.replace("concept", "") for c in mine.loc[~mine["chosen"], "concept"]) or "none"
            degenerate = f"{kept['degenerate'].mean():.0%}" if len(kept) else "-"
            lines.append(f"| {model.name} | {name} | {len(kept)} / {len(mine)} | {_factors(kept['factor'])} | "
                         f"{_range(kept['ppl_inflation'])} | {degenerate} | {dropped} |")
        notes.append(prompt_inflation_line(model.name, model.capped))
    return [*lines, "", *notes]

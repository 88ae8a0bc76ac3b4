"""Which configuration each arm is read at, in studies/results/generation/PLAN.md's sweep folders.

Used by ``generation_summary`` (``python studies/generation_axbench.py summarize``). Per concept folder
(:func:`read_sweep`, the folder as the sweep's own read-only ledger sees it, each item with its text):

* :func:`planned_selection`: the plan's selection, over the planned factors {0.5, 1, 2} only (amendment 3
  adds 0.125 and 0.25 to the same folders, and the sweep then re-selects results.csv's ``selected`` over
  every factor present; the plan's selection does not move). It is the sweep's own rule
  (:func:`actstore.evaluation.selection.selected`: per vector, the factor with the largest mean harmonic
  over the ``select`` prompts, a tie to the smaller factor; the prompting baseline's one row) applied to
  the planned rows.
* :func:`capped_selection`: amendment 3 item 3, the same rule among all measured factors whose perplexity
  inflation (point estimate) is at most :data:`CAP`, on the gated harmonic where the fluency gate passed;
  the prompting baseline only where its own inflation is within the cap.
* :func:`differences`: the paired differences of a measure between two arms over the report prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PLANNED = (0.5, 1.0, 2.0)  # amendment 1's factors of the residual norm
ADDED = (0.125, 0.25)  # amendment 3 item 3 (M1)
ADDED_BY_MODEL = {"instruct": ADDED, "demo": (0.02, 0.04, 0.08)}  # amendment 4: M2's added factors
CAP = 1.25  # amendment 3 item 3: the largest perplexity inflation a capped selection may choose
VECTOR_ARMS = ("64", "dense")  # enr --k 64 and enr --k dense
CONTRASTS = {"P1 prompt - dense": ("prompt", "dense"), "P2 k64 - dense": ("64", "dense")}
SECONDARY = {"prompt - unsteered": ("prompt", "none"), "dense - unsteered": ("dense", "none"),
             "k64 - unsteered": ("64", "none")}  # does each arm add the concept at all (no correction claimed)
_JOIN = ["layer_key", "method", "k", "alpha_key", "item"]


@dataclass
class Sweep:
    """One concept folder: results.csv's done rows, items.csv's rows (each with its generation's ``text``
    and ``harmonic_gated``: 0 where the text is degenerate, else ``harmonic``) and whether every item
    found its text (``aligned``)."""

    name: str
    results: pd.DataFrame
    items: pd.DataFrame
    aligned: bool


def arm(method: str, k: str) -> str:
    """A results or items row's arm: ``prompt``, ``none`` (unsteered), or the vector's k (``64``, ``dense``)."""
    return str(method) if method in ("prompt", "none") else str(k)


def _join_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """(layer, method, k, alpha, item) in types that compare: no layer (the unsteered rows) as -2,
    alpha rounded to 9 digits (items.csv and generations.jsonl write it alike; this is a guard)."""
    layer = pd.to_numeric(frame["layer"], errors="coerce").fillna(-2).astype(int)
    return frame.assign(layer_key=layer, k=frame["k"].astype(str), alpha_key=frame["alpha"].astype(float).round(9))


def with_texts(items: pd.DataFrame, generations: Path) -> tuple[pd.DataFrame, bool]:
    """``items`` with each row's generation ``text`` (generations.jsonl, matched by layer, method, k, alpha
    and item, one to one) and ``harmonic_gated``; ``aligned`` is False where an item has no text (a sweep
    mid-write) or the files disagree in length."""
    from actstore.evaluation.scorers import is_degenerate

    lines = generations.read_text().splitlines() if generations.is_file() else []
    texts = pd.DataFrame([json.loads(line) for line in lines if line.strip()],
                         columns=["layer", "method", "k", "alpha", "item", "text"])
    keyed = _join_keys(items.reset_index(drop=True))
    merged = keyed.merge(_join_keys(texts)[[*_JOIN, "text"]], on=_JOIN, how="left", validate="one_to_one")
    aligned = bool(merged["text"].notna().all()) and len(texts) == len(items)
    degenerate = merged["text"].map(lambda t: is_degenerate(t) if isinstance(t, str) else np.nan)
    gated = merged["harmonic"].where(degenerate.astype(float) != 1.0, 0.0).where(degenerate.notna())
    return merged.drop(columns=["layer_key", "alpha_key"]).assign(degenerate=degenerate, harmonic_gated=gated), aligned


def read_sweep(folder: Path) -> Sweep:
    """A concept folder read through the sweep's own ledger, read-only (the done configurations only)."""
    from actstore.evaluation.ledger import Ledger

    ledger = Ledger.open_existing(folder)
    results = ledger.results().reset_index(drop=True)
    items = ledger.items()
    items = items.assign(k=items["k"].astype(str))
    items, aligned = with_texts(items, folder / "generations.jsonl")
    return Sweep(folder.name, results, items, aligned)


def at_factors(results: pd.DataFrame, factors) -> np.ndarray:
    """``(rows,)`` bool: the prompting baseline's row and every vector row whose ``norm_fraction`` is one of
    ``factors`` (np.isclose: the column carries float noise such as 0.5000000000000001)."""
    fraction = results["norm_fraction"].to_numpy(dtype=np.float64)
    near = np.isclose(fraction[:, None], np.asarray(factors, dtype=np.float64)[None, :]).any(axis=1)
    return (results["method"] == "prompt").to_numpy() | near


def has_factors(results: pd.DataFrame, factors) -> bool:
    """Whether the prompting baseline and both vectors (k 64, dense) have a done row at every factor."""
    if not (results["method"] == "prompt").any():
        return False
    fraction = results["norm_fraction"].to_numpy(dtype=np.float64)
    for k in VECTOR_ARMS:
        mine = fraction[((results["method"] == "enr") & (results["k"].astype(str) == k)).to_numpy()]
        if not all(np.isclose(mine, factor).any() for factor in factors):
            return False
    return True


def _select(results: pd.DataFrame, items: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The sweep's rule on ``results``' rows, choosing on ``items``' ``metric`` column."""
    from actstore.evaluation.selection import selected

    rows = results.reset_index(drop=True)
    if not len(rows):
        return rows
    scored = items.assign(harmonic=items[metric]) if metric != "harmonic" else items
    return rows[selected(rows, scored)]


def planned_selection(sweep: Sweep) -> pd.DataFrame:
    """The plan's selected rows: per vector among the planned factors only, and the prompting baseline."""
    return _select(sweep.results[at_factors(sweep.results, PLANNED)], sweep.items, "harmonic")


def capped_selection(sweep: Sweep, gated: bool, cap: float = CAP) -> pd.DataFrame:
    """Amendment 3's selected rows: per vector among its factors with perplexity inflation at most ``cap``
    (by the gated harmonic when ``gated``); the prompting baseline only if its own inflation is within it.
    A vector with no factor under the cap has no row (its concept drops out of contrasts with it)."""
    results = sweep.results
    within = results["ppl_inflation"].to_numpy(dtype=np.float64) <= cap
    chosen = _select(results[within], sweep.items, "harmonic_gated" if gated else "harmonic")
    return chosen


def arm_scores(sweep: Sweep, chosen: pd.DataFrame, split: str | None = "report") -> pd.DataFrame:
    """The items at each chosen row, with their ``arm``, and the unsteered ones (``none``): the ``split``
    half's prompts (the report prompts), or every prompt where ``split`` is None."""
    items = sweep.items
    frames = [items[items["method"] == "none"].assign(arm="none")]
    for row in chosen.itertuples():
        rows = items[(items["method"] == row.method) & (items["k"] == str(row.k))
                     & np.isclose(items["alpha"], row.alpha)
                     & np.isclose(pd.to_numeric(items["layer"], errors="coerce").fillna(-2), row.layer)]
        frames.append(rows.assign(arm=arm(row.method, row.k)))
    table = pd.concat(frames)
    return table if split is None else table[table["split"] == split]


def differences(scores: pd.DataFrame, measure: str, contrasts: dict) -> dict[str, np.ndarray]:
    """Per contrast whose two arms were chosen: the paired differences of ``measure`` over the report
    prompts (by prompt_id)."""
    table = scores.pivot_table(index="prompt_id", columns="arm", values=measure)
    return {name: (table[a] - table[b]).to_numpy() for name, (a, b) in contrasts.items()
            if a in table and b in table}


def chosen_damage(chosen: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Each chosen arm's (factor, perplexity inflation); the prompting baseline's factor is NaN."""
    return {arm(row.method, row.k): (float(row.norm_fraction), float(row.ppl_inflation))
            for row in chosen.itertuples()}

"""Each vector's path through (log perplexity inflation, shift), and the one bootstrap behind every interval.

A vector's configurations are points on its own path, in order of alpha,
starting from the unsteered model (alpha 0: inflation exactly 1, shift exactly
0). :func:`interpolate_at` reads a path where it first reaches a log-budget,
linearly between the two measured points around it; a budget beyond every
measured inflation is "not reached", never extrapolated.

:class:`Evidence` holds, per configuration, the per-question effects and the
per-document perplexity differences; its draws resample questions and
perplexity documents together, the same draws for every vector, so that
differences between vectors stay paired. :class:`Paths` indexes each vector's
configurations and interpolates the point estimate and every draw at a budget.
What is read off the paths (frontier rows, contrasts, steerability) is
:mod:`actstore.evaluation.frontier`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import is_prompt
from .intervals import N_RESAMPLES, SEED, resample_counts
from .rows import KEY

GROUP = ["behavior", "layer", "method", "k"]  # one vector: its configurations differ only in alpha


def interpolate_at(log_inflation, shift, alpha, log_budget: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift and alpha where each path first reaches ``log_budget``.

    ``log_inflation, shift, alpha: (..., points)``, each path in alpha order starting
    at the unsteered point (0, 0, 0). Linear in log-inflation between the last point
    below the budget and the first at or above it; NaN where the path never reaches it.
    """
    L, S, A = (np.asarray(x, dtype=np.float64) for x in (log_inflation, shift, alpha))
    cross = (L[..., :-1] < log_budget) & (L[..., 1:] >= log_budget)
    reached = cross.any(-1)
    j = np.argmax(cross, -1)[..., None]
    l0, l1 = np.take_along_axis(L, j, -1)[..., 0], np.take_along_axis(L, j + 1, -1)[..., 0]
    with np.errstate(all="ignore"):
        t = (log_budget - l0) / (l1 - l0)
        out = []
        for values in (S, A):
            v0, v1 = np.take_along_axis(values, j, -1)[..., 0], np.take_along_axis(values, j + 1, -1)[..., 0]
            out.append(np.where(reached, v0 + t * (v1 - v0), np.nan))
    return out[0], out[1]


@dataclass
class Evidence:
    """Per configuration (rows of ``results``): the per-question effects on the primary
    measure ``effects (configs, questions)`` and the per-unit perplexity differences
    ``nll_diff (configs, units)`` with ``tokens (units,)``; the unit is the document (or
    the window, for text of one document). :meth:`draws` gives every configuration's
    point estimate and bootstrap draws of (shift, log-inflation), on shared resamples."""

    results: object  # pandas.DataFrame, in this order
    measure: str
    effects: np.ndarray
    nll_diff: np.ndarray
    tokens: np.ndarray
    unit: str

    @classmethod
    def from_tables(cls, results, items, windows) -> Evidence:
        measure = str(results["measure"].iloc[0]) if "measure" in results and len(results) else "score"
        results = results.reset_index(drop=True)
        base_items = items[items["method"] == "none"]
        order = list(base_items["item"])
        questions = base_items.set_index("item")["question"].loc[order].to_numpy()
        _, inverse = np.unique(questions, return_inverse=True)
        counts = np.bincount(inverse)
        base_metric = base_items.set_index("item")[measure].loc[order].to_numpy(dtype=np.float64)
        base_windows = windows[windows["method"] == "none"].sort_values("window")
        documents = base_windows["document"].to_numpy() if "document" in base_windows else np.zeros(len(base_windows))
        unit = "document" if np.unique(documents).size > 1 else "window"
        units = np.unique(documents, return_inverse=True)[1] if unit == "document" else np.arange(len(documents))
        base_nll = base_windows["nll"].to_numpy(dtype=np.float64)
        tokens = np.bincount(units, weights=base_windows["tokens"].to_numpy(dtype=np.float64))
        item_groups = {key_tuple(key): frame for key, frame in
                       items[items["method"] != "none"].groupby(KEY, sort=False)}
        window_groups = {key_tuple(key): frame for key, frame in
                         windows[windows["method"] != "none"].groupby(KEY, sort=False)}
        effects = np.empty((len(results), counts.size))
        nll_diff = np.empty((len(results), tokens.size))
        for index, row in enumerate(results[KEY].itertuples(index=False)):
            key = key_tuple(row)
            steered = item_groups[key].set_index("item")[measure].loc[order].to_numpy(dtype=np.float64)
            effects[index] = np.bincount(inverse, weights=steered - base_metric) / counts
            nll = window_groups[key].sort_values("window")["nll"].to_numpy(dtype=np.float64)
            nll_diff[index] = np.bincount(units, weights=nll - base_nll)
        return cls(results, measure, effects, nll_diff, tokens, unit)

    def draws(self, n_resamples: int = N_RESAMPLES, seed: int = SEED
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(shift, log_inflation, shift_draws (configs, B), log_inflation_draws (configs, B))``:
        questions drawn by ``resample_counts(questions, B, seed)``, perplexity units by
        ``resample_counts(units, B, seed + 1)``."""
        q_counts = resample_counts(self.effects.shape[1], n_resamples, seed)
        u_counts = resample_counts(self.tokens.size, n_resamples, seed + 1)
        shift = self.effects.mean(1)
        log_inflation = self.nll_diff.sum(1) / self.tokens.sum()
        shift_draws = self.effects @ q_counts.T / self.effects.shape[1]
        log_inflation_draws = (self.nll_diff @ u_counts.T) / (u_counts @ self.tokens)[None, :]
        return shift, log_inflation, shift_draws, log_inflation_draws


def key_tuple(key) -> tuple:
    """A row's (layer, method, k, alpha) with the types the tables' keys have."""
    layer, method, k, alpha = key
    return (int(layer), str(method), str(k), float(alpha))


@dataclass
class Paths:
    """Every vector's path: ``index`` maps (behavior, layer, method, k) to its rows in alpha
    order (the prompting baseline, which has no alpha, has none); :meth:`at` interpolates the
    point estimate and the draws at a log-budget."""

    evidence: Evidence
    shift: np.ndarray
    log_inflation: np.ndarray
    shift_draws: np.ndarray
    log_inflation_draws: np.ndarray
    index: dict

    @classmethod
    def of(cls, evidence: Evidence, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Paths:
        shift, log_inflation, shift_draws, log_inflation_draws = evidence.draws(n_resamples, seed)
        results = evidence.results
        index = {}
        for key, group in results.groupby(GROUP, sort=False):
            if is_prompt(key[2]):  # the prompting baseline has no alpha path: a point, read in selection.py
                continue
            group = group[group["alpha"] > 0].sort_values("alpha")
            if len(group):
                index[tuple(key)] = group.index.to_numpy()
        return cls(evidence, shift, log_inflation, shift_draws, log_inflation_draws, index)

    def find(self, behavior, layer: int, method: str, k: str) -> tuple | None:
        """The key of a vector in :attr:`index`, or None where it was not measured."""
        for vector in self.index:
            if vector[0] == behavior and int(vector[1]) == int(layer) and vector[2] == method and str(vector[3]) == k:
                return vector
        return None

    def at(self, vector: tuple, log_budget: float) -> tuple[float, float, np.ndarray]:
        """``(shift, alpha, shift_draws (B,))`` of ``vector`` at ``log_budget`` (NaN: not reached)."""
        rows = self.index[vector]
        alphas = self.evidence.results["alpha"].to_numpy(dtype=np.float64)[rows]
        origin = np.zeros(1)
        L = np.concatenate([origin, self.log_inflation[rows]])
        S = np.concatenate([origin, self.shift[rows]])
        A = np.concatenate([origin, alphas])
        shift, alpha = interpolate_at(L, S, A, log_budget)
        n = self.shift_draws.shape[1]
        Ld = np.concatenate([np.zeros((n, 1)), self.log_inflation_draws[rows].T], axis=1)
        Sd = np.concatenate([np.zeros((n, 1)), self.shift_draws[rows].T], axis=1)
        Ad = np.broadcast_to(A, Ld.shape)
        draws, _ = interpolate_at(Ld, Sd, Ad, log_budget)
        return float(shift), float(alpha), draws

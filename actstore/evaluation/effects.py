"""One configuration's effects against the unsteered model, per question.

The unit of every on-target interval is the question: an A/B question is
scored as written and with its options swapped, and its effect is the mean of
its two orders' steered-minus-unsteered differences. On log-odds a preference
for one answer letter adds the same amount to the order whose matching answer
is that letter as it takes from the other order, so it cancels in that mean;
half the difference of the two orders (:func:`letter_push`) is that preference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .intervals import NAN_INTERVAL, Interval, inflation_interval, paired_mean_interval, paired_t_p_value

DEGENERATION = ("distinct_2", "repeated_3gram")


@dataclass(frozen=True)
class Units:
    """How items group: ``questions (items,)`` int, ``orders (items,)`` int, ``letter_signs
    (items,)`` +1 / -1 (the item's matching letter is the earlier / later of its two), 0
    unknown; ``documents (windows,)`` int."""

    questions: np.ndarray
    orders: np.ndarray
    letter_signs: np.ndarray
    documents: np.ndarray

    @classmethod
    def of(cls, on_target, windows) -> Units:
        return cls(np.asarray(on_target.questions), np.asarray(on_target.orders),
                   np.asarray(on_target.letter_signs), np.asarray(windows.documents))

    @property
    def n_questions(self) -> int:
        return int(np.unique(self.questions).size)


@dataclass
class Measurement:
    """Per-item metrics ``{metric: (items,)}`` and per-window ``nll``/``tokens`` of one steering state."""

    measures: dict[str, np.ndarray]
    nll: np.ndarray
    tokens: np.ndarray
    texts: list[str] | None = None

    @property
    def on_target(self) -> float:
        return float(np.mean(self.measures["score"]))

    @property
    def ppl(self) -> float:
        return float(math.exp(self.nll.sum() / self.tokens.sum()))


def question_means(values, questions) -> np.ndarray:
    """``values: (items,)`` averaged per question (over its answer orders), in sorted question order."""
    _, inverse = np.unique(np.asarray(questions), return_inverse=True)
    values = np.asarray(values, dtype=np.float64)
    return np.bincount(inverse, weights=values) / np.bincount(inverse)


def letter_push(values, questions, letter_signs) -> np.ndarray:
    """Per question with both orders (one item of each letter sign): half the difference of
    ``values`` between the order whose matching letter is the earlier one and the other.
    ``(questions with both orders,)``."""
    _, inverse = np.unique(np.asarray(questions), return_inverse=True)
    signs = np.asarray(letter_signs, dtype=np.float64)
    signed = np.bincount(inverse, weights=signs * np.asarray(values, dtype=np.float64)) / 2
    paired = (np.bincount(inverse, weights=(signs > 0).astype(float)) == 1) & (
        np.bincount(inverse, weights=(signs < 0).astype(float)) == 1) & (np.bincount(inverse) == 2)
    return signed[paired]


def _question_interval(steered, base, questions) -> tuple[Interval, float]:
    diffs = question_means(np.asarray(steered) - np.asarray(base), questions)
    ok = np.isfinite(diffs)
    zeros = np.zeros(int(ok.sum()))
    return paired_mean_interval(diffs[ok], zeros), paired_t_p_value(diffs[ok], zeros)


def effects(steered: Measurement, base: Measurement, units: Units, primary: str) -> dict:
    """The :class:`~actstore.evaluation.rows.ResultRow` fields that compare ``steered`` with ``base``."""
    shift, p_score = _question_interval(steered.measures["score"], base.measures["score"], units.questions)
    row = {"on_target": steered.on_target, "on_target_base": base.on_target, "on_target_shift": shift.estimate,
           "on_target_ci_low": shift.low, "on_target_ci_high": shift.high}
    logodds, p_logodds, bias = NAN_INTERVAL, math.nan, NAN_INTERVAL
    if "logodds" in steered.measures:
        diffs = steered.measures["logodds"] - base.measures["logodds"]
        logodds, p_logodds = _question_interval(steered.measures["logodds"], base.measures["logodds"],
                                                units.questions)
        pushes = letter_push(diffs, units.questions, units.letter_signs)
        bias = paired_mean_interval(pushes, np.zeros_like(pushes)) if pushes.size else NAN_INTERVAL
    row.update({"shift_logodds": logodds.estimate, "shift_logodds_ci_low": logodds.low,
                "shift_logodds_ci_high": logodds.high, "letter_bias": bias.estimate,
                "letter_bias_ci_low": bias.low, "letter_bias_ci_high": bias.high})
    main = logodds if primary == "logodds" else shift
    detectable = main.excludes(0.0)
    established = detectable if primary != "logodds" else bool(
        logodds.excludes(0.0) and shift.excludes(0.0) and (logodds.estimate > 0) == (shift.estimate > 0))
    inflation = inflation_interval(steered.nll, base.nll, steered.tokens, documents=units.documents)
    row.update({"measure": primary, "p_value": p_logodds if primary == "logodds" else p_score,
                "q_value": math.nan, "detectable": detectable, "established": established,
                "ppl": steered.ppl, "ppl_base": base.ppl, "ppl_inflation": inflation.estimate,
                "ppl_inflation_ci_low": inflation.low, "ppl_inflation_ci_high": inflation.high})
    for metric in DEGENERATION:
        if metric in steered.measures:
            s, b = steered.measures[metric], base.measures[metric]
            ok = np.isfinite(s) & np.isfinite(b)
            interval = paired_mean_interval(s[ok], b[ok])
            row.update({f"{metric}_shift": interval.estimate, f"{metric}_ci_low": interval.low,
                        f"{metric}_ci_high": interval.high})
    return row

"""The rows of a sweep folder's tables, each column defined once.

    results.csv      :class:`ResultRow`, one per configuration (layer, method, k, alpha)
    items.csv        :class:`ItemRows`, one block of rows per configuration: one row per scored item
    windows.csv      :class:`WindowRows`, one block per configuration: one row per perplexity window
    kl.csv           :class:`KLRows`, one block per configuration: one row per KL prompt (``damage`` kl)
    frontier.csv     :class:`FrontierRow`, one per (behavior, layer, method, k, budget)
    contrasts.csv    :class:`ContrastRow`, one per pre-specified contrast (Holm-corrected as a family)
    steerability.csv :class:`SteerabilityRow`, one per vector (behavior, layer, method, k)

A table's columns are its record's fields in order (:func:`columns`); a row is
written with :func:`as_record`. The unsteered rows of items.csv,
windows.csv and kl.csv carry :data:`BASELINE` as their key.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

NAN = math.nan


def columns(record_type) -> list[str]:
    """The table's columns: the record's fields, in order."""
    return [f.name for f in fields(record_type)]


def as_record(row) -> dict:
    return asdict(row)


@dataclass(frozen=True)
class ConfigKey:
    """One configuration: a vector (layer, method, k) at one alpha. ``k``: "dense" or an integer's text."""

    layer: float  # NaN for the unsteered rows
    method: str
    k: str
    alpha: float

    def as_tuple(self) -> tuple:
        return (int(self.layer), str(self.method), str(self.k), float(self.alpha))


BASELINE = ConfigKey(NAN, "none", "none", 0.0)
KEY = ["layer", "method", "k", "alpha"]


@dataclass(frozen=True)
class ResultRow:
    """One configuration against the unsteered model (every interval 95%).

    ``on_target_*``: the probability-scale shift (A/B: P(matching) over the two letters;
    preference and generation: their score), per question the mean over its answer
    orders, paired t over questions. ``shift_logodds_*``: the same on log-odds (A/B only).
    ``letter_bias_*``: per question half the difference of its two orders' log-odds
    shifts, signed toward the earlier letter of the pair (A of A/B), t over questions:
    a pure letter push shows here and cancels in the shifts. ``measure``: which shift
    is primary (``logodds`` for A/B, else ``score``); ``p_value`` (paired t) and
    ``q_value`` (Benjamini-Hochberg over the behavior's configurations, the controls' a family
    of their own) are its;
    ``detectable``: its interval excludes zero; ``established``: both scales' intervals
    exclude zero on the same side (A/B; otherwise = detectable).

    ``kl_first_*`` and ``kl_mean_*`` (``damage`` kl, else NaN): KL(unsteered || steered) in nats on
    the unsteered model's greedy continuations of the KL prompts, at the first generated token and
    the mean over each continuation (:mod:`actstore.evaluation.damage`); the mean over prompts with a
    t interval over prompts (kl.csv holds the per-prompt values). NaN for the prompting baseline
    (method ``prompt``): its steering is an instruction in the prompt, not a hook the KL prompts'
    continuations could be read under.

    ``harmonic_*`` (a judged generation sweep, else NaN): the mean of the judge's harmonic score
    (AxBench: the harmonic mean of the concept, instruction and fluency ratings, each in [0, 2])
    under this configuration over the prompts of the ``report`` split (all prompts without
    ``select_split``), with a t interval over those prompts. ``selected``: with ``select_split``,
    the alpha of its vector (layer, method, k) with the highest mean primary score (the harmonic
    score with a judge) over the ``select`` prompts, chosen without reading a ``report`` prompt
    (:mod:`actstore.evaluation.selection`); the prompting baseline's row, which has no factor, is
    selected too. False everywhere without a split.

    The prompting baseline's row: layer -1, k "none", alpha 0 and NaN for what a vector has
    (scale, norms); its perplexity is read with the instruction prefixed to each window.

    ``seed``: a random control's seed (method ``random:<seed>``), empty for every other row;
    derived from ``method`` (:func:`control_seed`), and filled in when a folder written before
    the column is read.
    """

    behavior: str
    model: str
    protocol: str
    layer: int
    method: str
    k: str
    alpha: float
    alpha_mode: str
    scale: float
    added_norm: float
    norm_fraction: float
    vector_norm: float
    residual_norm: float
    on_target: float
    on_target_base: float
    on_target_shift: float
    on_target_ci_low: float
    on_target_ci_high: float
    shift_logodds: float
    shift_logodds_ci_low: float
    shift_logodds_ci_high: float
    letter_bias: float
    letter_bias_ci_low: float
    letter_bias_ci_high: float
    measure: str
    p_value: float
    q_value: float
    detectable: bool
    established: bool
    ppl: float
    ppl_base: float
    ppl_inflation: float
    ppl_inflation_ci_low: float
    ppl_inflation_ci_high: float
    n_items: int
    n_questions: int
    ppl_tokens: int
    ppl_documents: int
    seconds: float
    distinct_2_shift: float = NAN
    distinct_2_ci_low: float = NAN
    distinct_2_ci_high: float = NAN
    repeated_3gram_shift: float = NAN
    repeated_3gram_ci_low: float = NAN
    repeated_3gram_ci_high: float = NAN
    kl_first: float = NAN
    kl_first_ci_low: float = NAN
    kl_first_ci_high: float = NAN
    kl_mean: float = NAN
    kl_mean_ci_low: float = NAN
    kl_mean_ci_high: float = NAN
    harmonic: float = NAN
    harmonic_ci_low: float = NAN
    harmonic_ci_high: float = NAN
    selected: bool = False
    seed: float = NAN  # derived from ``method``: a random control's seed (``random:<seed>``), else NaN

    def __post_init__(self):
        object.__setattr__(self, "seed", control_seed(self.method))

    @property
    def key(self) -> ConfigKey:
        return ConfigKey(self.layer, self.method, self.k, self.alpha)


def control_seed(method) -> float:
    """results.csv's ``seed``: the seed of a random control's row (method ``random:<seed>``), NaN for
    every other method (a vector, the letter control, the prompting baseline).

    >>> control_seed("random:3"), control_seed("enr")
    (3.0, nan)
    """
    prefix, _, seed = str(method).partition(":")
    if prefix != "random":
        return NAN
    try:
        return float(int(seed))
    except ValueError:
        return NAN


def primary_columns(measure: str) -> tuple[str, str, str]:
    """results.csv's (shift, low, high) columns of the primary measure."""
    return (("shift_logodds", "shift_logodds_ci_low", "shift_logodds_ci_high") if measure == "logodds"
            else ("on_target_shift", "on_target_ci_low", "on_target_ci_high"))


ROW_KEY = ["layer", "k", "alpha", "method"]  # the configuration's columns, first in items, windows and kl.csv
ITEM_KEY = [*ROW_KEY, "item", "question", "order"]
PROMPT_LABELS = ["prompt_id", "split"]  # items.csv's text columns of a generation sweep, after ITEM_KEY
QUESTION_TEXT = "question_text"  # items.csv's text of each item's question (where the protocol has it)
JUDGE_NOTE = "judge.txt"  # a judged sweep folder's note on its judge (its validation, or that it had none)
SPLITS = ("select", "report")  # the halves of the prompts (``select_split``); without a split all are report


def _key_columns(key: ConfigKey, n: int) -> dict:
    """:data:`ROW_KEY`'s columns of ``n`` rows of one configuration."""
    return {"layer": [key.layer] * n, "k": [key.k] * n, "alpha": [key.alpha] * n, "method": [key.method] * n}


def item_metrics(names) -> list[str]:
    """The metric columns of items.csv among ``names`` (every column but the key and text ones)."""
    return [c for c in names if c not in (*ITEM_KEY, *PROMPT_LABELS, QUESTION_TEXT)]


@dataclass(frozen=True)
class ItemRows:
    """One configuration's per-item rows: ``metrics`` ``{name: (items,)}`` in the protocol's
    order (``score`` first; A/B also ``logodds``; a judged generation also ``concept_rating``,
    ``instruction_rating``, ``fluency_rating`` and ``harmonic``). Columns: :data:`ITEM_KEY`, for
    prompts (generation) :data:`PROMPT_LABELS` (``prompt_id``: a digest of the prompt's text,
    ``split``: ``select`` or ``report``), ``question_text`` where given (each item's question as
    the protocol has it: :func:`~actstore.evaluation.overlap.question_texts`; written on the
    unsteered rows only, the steered rows of the same items leave it empty), then the metrics."""

    key: ConfigKey
    item: list[str]
    question: np.ndarray
    order: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    prompt_id: tuple[str, ...] = ()
    split: tuple[str, ...] = ()
    question_text: tuple[str, ...] = ()

    def frame(self):
        import pandas as pd

        n = len(self.item)
        labels = {"prompt_id": list(self.prompt_id), "split": list(self.split)} if self.prompt_id else {}
        if self.question_text:
            labels[QUESTION_TEXT] = list(self.question_text) if self.key.method == "none" else [""] * n
        return pd.DataFrame({**_key_columns(self.key, n), "item": self.item,
                             "question": np.asarray(self.question, dtype=np.int64),
                             "order": np.asarray(self.order, dtype=np.int64), **labels,
                             **{m: np.asarray(v, dtype=np.float64) for m, v in self.metrics.items()}})


WINDOW_COLUMNS = [*ROW_KEY, "window", "document", "nll", "tokens"]


@dataclass(frozen=True)
class WindowRows:
    """One configuration's per-window rows: ``nll`` (nats, summed), ``tokens`` (predicted),
    ``document`` (the window's document: the unit of the perplexity's interval)."""

    key: ConfigKey
    document: np.ndarray
    nll: np.ndarray
    tokens: np.ndarray

    def frame(self):
        import pandas as pd

        n = len(self.nll)
        return pd.DataFrame({**_key_columns(self.key, n), "window": np.arange(n),
                             "document": np.asarray(self.document, dtype=np.int64), "nll": self.nll,
                             "tokens": np.asarray(self.tokens, dtype=np.int64)})


KL_COLUMNS = [*ROW_KEY, "prompt_id", "kl_first", "kl"]


@dataclass(frozen=True)
class KLRows:
    """One configuration's per-prompt KL damage (nats): ``kl_first`` at the first generated token,
    ``kl`` the mean over the continuation (:class:`~actstore.evaluation.damage.KLDamage`);
    ``prompt_id``: the prompt's position in the KL prompts, from 0. The unsteered rows
    (:data:`BASELINE`) are 0 by definition (KL(P || P)), written so, not measured."""

    key: ConfigKey
    kl_first: np.ndarray
    kl: np.ndarray

    @classmethod
    def unsteered(cls, n_prompts: int) -> KLRows:
        return cls(BASELINE, np.zeros(n_prompts), np.zeros(n_prompts))

    def frame(self):
        import pandas as pd

        n = len(self.kl)
        return pd.DataFrame({**_key_columns(self.key, n), "prompt_id": np.arange(n),
                             "kl_first": np.asarray(self.kl_first, dtype=np.float64),
                             "kl": np.asarray(self.kl, dtype=np.float64)}, columns=KL_COLUMNS)


@dataclass(frozen=True)
class FrontierRow:
    """A vector's shift (primary measure) at exactly one perplexity budget, interpolated
    along its own alpha path on log-inflation (the unsteered model is its alpha-0 point).

    ``reached``: the budget lies within the vector's measured inflations (never
    extrapolated; else every figure is NaN). ``alpha``: the interpolated alpha.
    ``diff_vs_dense``: shift minus the dense reference vector's at the same budget and
    layer; ``fraction``: their ratio (only where the dense shift's interval excludes
    zero). ``minus_random``: shift minus the random control of the same k at the same layer
    (``random_reference``, its lowest seed): what the vector does beyond any push of its size.
    Intervals: percentile bootstrap resampling questions and perplexity documents together,
    the interpolation redone in each resample; ``boot_defined``: the share of resamples in
    which the shift is defined (the budget reached), the intervals are over those. ``*p_value``:
    bootstrap two-sided p; ``*q_value``: Benjamini-Hochberg per behavior over the frontier's
    rows of that figure (controls a family of their own).
    """

    behavior: str
    layer: int
    method: str
    k: str
    budget: float
    measure: str
    reached: bool
    alpha: float = NAN
    shift: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    p_value: float = NAN
    q_value: float = NAN
    boot_defined: float = NAN
    reference: str = ""
    diff_vs_dense: float = NAN
    diff_ci_low: float = NAN
    diff_ci_high: float = NAN
    diff_p_value: float = NAN
    diff_q_value: float = NAN
    fraction: float = NAN
    fraction_ci_low: float = NAN
    fraction_ci_high: float = NAN
    random_reference: str = ""
    minus_random: float = NAN
    minus_random_ci_low: float = NAN
    minus_random_ci_high: float = NAN
    minus_random_p_value: float = NAN
    minus_random_q_value: float = NAN


@dataclass(frozen=True)
class ContrastRow:
    """A pre-specified primary contrast at one budget (:class:`~actstore.evaluation.frontier.Contrast`):
    ``estimate`` = shift of ``method k`` at ``layer`` minus shift of ``reference`` (both
    interpolated to the budget), bootstrap interval and p-value (NaN where a side is not
    reached); ``p_holm``: Holm-adjusted over the behavior's family of primary contrasts.

    The prompting baseline's rows (contrast ``prompt_minus_vector``, method ``prompt``, k "none",
    budget NaN: the vector's alpha is the selected one, not matched on damage): the mean over the
    ``report`` prompts of the prompt's score minus the vector's at its selected alpha (``measure``:
    ``harmonic`` with a judge), paired per prompt, t interval and p over prompts; ``layer``: the
    vector's; ``p_holm`` over those rows, a family of their own
    (:func:`actstore.evaluation.selection.prompt_contrasts`).

    ``p_mc_se``, ``p_holm_mc_se``: the Monte-Carlo standard errors of the bootstrap p and its Holm
    adjustment (:func:`~actstore.evaluation.intervals.bootstrap_p_mc_se`; NaN for t tests). With a
    margin M (``eval --margin``, stated before use, on the contrast's ``measure``): ``ci90_low``,
    ``ci90_high`` (the 90% interval), ``non_inferior`` (its low end, the one-sided 95% bound, above
    -M), ``equivalent`` (TOST: inside (-M, +M)); :func:`~actstore.evaluation.intervals.margin_verdicts`."""

    behavior: str
    contrast: str
    layer: int
    budget: float
    method: str
    k: str
    reference: str
    measure: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float = NAN
    p_mc_se: float = NAN
    p_holm_mc_se: float = NAN
    margin: float = NAN
    ci90_low: float = NAN
    ci90_high: float = NAN
    non_inferior: bool | None = None
    equivalent: bool | None = None


@dataclass(frozen=True)
class SteerabilityRow:
    """Per-question steerability of one vector (Tan et al. 2024): each question's slope of
    its primary measure (A/B: log-odds, mean over orders) over the vector's alphas (alpha
    0 = unsteered), least squares. ``slope_mean`` (t interval over questions), ``slope_sd``
    (the spread of slopes) and ``anti_steerable`` (the share of questions whose slope is
    negative), the last two with percentile bootstrap intervals over questions."""

    behavior: str
    layer: int
    method: str
    k: str
    measure: str
    n_questions: int
    n_alphas: int
    slope_mean: float
    slope_ci_low: float
    slope_ci_high: float
    slope_sd: float
    slope_sd_ci_low: float
    slope_sd_ci_high: float
    anti_steerable: float
    anti_ci_low: float
    anti_ci_high: float

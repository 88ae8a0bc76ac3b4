"""AxBench's protocol for choosing a factor, and the prompting baseline against the vectors.

A judged generation sweep (``judge``) rates every continuation on three rubrics and
scores it by their harmonic mean (:mod:`actstore.evaluation.judges`). Choosing each
vector's best alpha on the same prompts its score is then reported on would flatter
it, so (AxBench, Wu et al. 2025) the prompts are split in two by a hash of their text
(:class:`PromptSplit`, ``select_split`` the share of ``select`` prompts):

* :func:`selected`: per vector (layer, method, k), the alpha with the highest mean
  primary score (the harmonic score with a judge) over the ``select`` prompts; a
  tie goes to the smaller alpha. Nothing of a ``report`` prompt is read.
* results.csv's ``harmonic`` columns are over the ``report`` prompts
  (:func:`harmonic_fields`), as is every comparison of the prompting baseline
  with a selected vector (:func:`prompt_contrasts`): per prompt, the prompt's
  score minus the vector's at its selected alpha, with a t interval over the
  ``report`` prompts (the unit), Holm-corrected as a family of its own.

The split is a property of each prompt's text, so it does not move when prompts are
added or reordered; every row of items.csv carries its prompt's ``prompt_id`` and
``split``. The prompting baseline (method ``prompt``) has no factor: its one row is
selected.

The rules of a sweep that uses them (a judge, the prompting baseline, a split, a chat
format: each is for prompts) are checked here when the request is made (:func:`check_judged`),
and the judge is made (:func:`sweep_judge`) and noted for the report (:func:`judge_note`) here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from .grid import is_control, is_prompt
from .intervals import (
    CONFIDENCE,
    NAN_INTERVAL,
    TEST_LEVEL,
    holm_adjusted,
    margin_verdicts,
    paired_mean_interval,
    paired_t_p_value,
)
from .paths import GROUP, key_tuple
from .rows import KEY, SPLITS, ContrastRow

SELECT, REPORT = SPLITS
JUDGES = ("axbench",)  # judges known by name (actstore.evaluation.judges.make_judge)
PROMPT_CONTRAST = "prompt_minus_vector"
_ID_DIGITS = 12  # hex digits of a prompt_id (48 bits: collisions need millions of prompts)


def prompt_id(text: str) -> str:
    """A stable name of a prompt: the first hex digits of the SHA-256 of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_ID_DIGITS]


def _hash_fraction(identifier: str) -> float:
    """A prompt's place in [0, 1): its id read as a hex fraction (uniform over texts)."""
    return int(identifier, 16) / 16 ** len(identifier)


@dataclass(frozen=True)
class PromptSplit:
    """Each prompt's ``prompt_id`` and ``split`` label: ``select`` where its hash fraction is below
    ``fraction``, else ``report``; without a fraction every prompt is ``report``.

    >>> PromptSplit.of(["a", "b"]).labels
    ('report', 'report')
    """

    prompt_ids: tuple[str, ...]
    labels: tuple[str, ...]
    fraction: float | None = None

    @classmethod
    def of(cls, prompts: Sequence[str], fraction: float | None = None) -> PromptSplit:
        ids = tuple(prompt_id(p) for p in prompts)
        if fraction is None:
            return cls(ids, (REPORT,) * len(ids))
        labels = tuple(SELECT if _hash_fraction(i) < fraction else REPORT for i in ids)
        split = cls(ids, labels, float(fraction))
        for half in SPLITS:
            if half not in labels:
                raise ActstoreError(f"select_split={fraction:g} leaves no prompt of the {len(ids)} in the {half} "
                                    "half (the halves are drawn by a hash of each prompt's text); give more "
                                    "prompts or a split nearer 0.5", param=("select_split", "prompts"))
        return split

    @property
    def report(self) -> np.ndarray:
        """``(prompts,)`` bool: the prompts figures are reported on."""
        return np.asarray(self.labels) == REPORT


def harmonic_fields(measures: dict[str, np.ndarray], split: PromptSplit | None) -> dict:
    """results.csv's ``harmonic`` columns: the mean harmonic score over the ``report`` prompts with
    a t interval over them (empty without a judge's ``harmonic``)."""
    if "harmonic" not in measures:
        return {}
    values = np.asarray(measures["harmonic"], dtype=np.float64)
    if split is not None:
        values = values[split.report]
    values = values[np.isfinite(values)]
    interval = paired_mean_interval(values, np.zeros_like(values)) if values.size else NAN_INTERVAL
    return {"harmonic": interval.estimate, "harmonic_ci_low": interval.low, "harmonic_ci_high": interval.high}


def selection_metric(items, measure: str) -> str:
    """The per-item column a factor is chosen on: ``harmonic`` where a judge rated the items, else
    the primary ``measure``."""
    return "harmonic" if "harmonic" in items and items["harmonic"].notna().any() else measure


def _config_means(items, metric: str, half: str) -> dict:
    """Mean ``metric`` per configuration (key tuple) over the items of one split half."""
    rows = items[(items["split"] == half) & (items["method"] != "none")]
    return {key_tuple(key): float(np.nanmean(frame[metric].to_numpy(dtype=np.float64)))
            if frame[metric].notna().any() else math.nan for key, frame in rows.groupby(KEY, sort=False)}


def selected(results, items) -> np.ndarray:
    """``(rows of results,)`` bool: each vector's selected alpha (the highest mean score over the
    ``select`` prompts; ties to the smaller alpha), and the prompting baseline's row. All False
    where items.csv has no ``select`` prompt. Reads the ``select`` rows of items.csv only."""
    chosen = np.zeros(len(results), dtype=bool)
    if items is None or "split" not in items or not (items["split"] == SELECT).any() or not len(results):
        return chosen
    select_items = items[items["split"] == SELECT]  # nothing below reads a report prompt
    metric = selection_metric(select_items, str(results["measure"].iloc[0]))
    means = _config_means(select_items, metric, SELECT)
    frame = results.reset_index(drop=True)
    chosen[frame.index[frame["method"].map(is_prompt)].to_numpy()] = True
    for _, group in frame[~frame["method"].map(is_prompt)].groupby(GROUP, sort=False):
        group = group.sort_values("alpha", kind="stable")
        scores = np.array([means.get(key_tuple(r), math.nan) for r in group[KEY].itertuples(index=False)])
        if np.isfinite(scores).any():
            chosen[group.index[int(np.nanargmax(scores))]] = True
    return chosen


def report_intervals(rows, items) -> list:
    """Per row of results ``rows``: the mean score (:func:`selection_metric`) over the ``report``
    prompts with a t interval over them (an :class:`~actstore.evaluation.intervals.Interval`)."""
    if not len(rows):
        return []
    metric = selection_metric(items, str(rows["measure"].iloc[0]))
    report = items[items["split"] == REPORT]
    groups = {key_tuple(key): group[metric].to_numpy(float) for key, group in report.groupby(KEY, sort=False)}
    out = []
    for row in rows[KEY].itertuples(index=False):
        values = groups.get(key_tuple(row), np.empty(0))
        values = values[np.isfinite(values)]
        out.append(paired_mean_interval(values, np.zeros_like(values)) if values.size else NAN_INTERVAL)
    return out


def prompt_contrasts(results, items, confidence: float = CONFIDENCE, margin: float | None = None
                     ) -> list[ContrastRow]:
    """contrasts.csv's prompting-baseline rows: per prompt row and selected vector (controls
    excepted), the prompt's score minus the vector's, paired over the ``report`` prompts, t
    interval and p; Holm over these rows; with a ``margin``, the verdicts of its 90% t interval
    (:func:`~actstore.evaluation.intervals.margin_verdicts`). Empty without a prompt row or a
    ``select`` split."""
    if items is None or "split" not in items or not len(results) or "selected" not in results:
        return []
    frame = results[results["selected"].astype(bool)]
    prompting = frame["method"].map(is_prompt).astype(bool)  # bool even for no rows (map keeps a text dtype)
    prompts = frame[prompting]
    vectors = frame[~prompting & ~frame["method"].map(is_control).astype(bool)]
    if not len(prompts) or not len(vectors) or not (items["split"] == SELECT).any():
        return []
    metric = selection_metric(items, str(results["measure"].iloc[0]))
    report = items[items["split"] == REPORT]
    per_item = {key_tuple(key): group.set_index("item")[metric] for key, group in report.groupby(KEY, sort=False)}
    rows = []
    for prompt in prompts.to_dict("records"):
        mine = per_item[key_tuple([prompt[c] for c in KEY])]
        for vector in vectors.sort_values(["layer", "method", "k"], kind="stable").to_dict("records"):
            theirs = per_item[key_tuple([vector[c] for c in KEY])].reindex(mine.index)
            ok = np.isfinite(mine.to_numpy(float)) & np.isfinite(theirs.to_numpy(float))
            treated, control = mine.to_numpy(float)[ok], theirs.to_numpy(float)[ok]
            diff = paired_mean_interval(treated, control, confidence)
            tested = margin_verdicts(paired_mean_interval(treated, control, 1 - 2 * TEST_LEVEL), margin)
            rows.append(ContrastRow(str(prompt["behavior"]), PROMPT_CONTRAST, int(vector["layer"]), math.nan,
                                    str(prompt["method"]), "none",
                                    f"{vector['method']} k={vector['k']} at layer {int(vector['layer'])}, "
                                    f"alpha {vector['alpha']:.4g} (selected)", metric, diff.estimate, diff.low,
                                    diff.high, paired_t_p_value(treated, control) if ok.sum() > 1 else math.nan,
                                    **tested))
    adjusted = holm_adjusted([row.p_value for row in rows])
    return [ContrastRow(**{**row.__dict__, "p_holm": float(p)}) for row, p in zip(rows, adjusted)]


# --- the rules of a judged, split or prompting sweep (SweepRequest's, kept here with the protocol) ---


def check_judged(request) -> None:
    """The rules of a :class:`~actstore.evaluation.request.SweepRequest`'s judge, prompting baseline, split
    and chat format (each is for prompts), checked when it is made."""
    generation = request.prompts is not None or getattr(request.on_target, "prompts", None) is not None
    for name in ("judge", "select_split", "chat_template", "system"):
        if getattr(request, name) not in (None, False) and not generation:
            raise ActstoreError(f"{name} is for a generation sweep: give prompts (their continuations are "
                                "what is judged, split and formatted)", param=(name, "prompts"))
    for name in ("chat_template", "system", "judge"):
        if getattr(request, name) not in (None, False) and request.prompts is None:
            raise ActstoreError(f"{name}: a protocol already built (on_target) is formatted and scored as it "
                                "was built; give prompts instead", param=(name, "on_target"))
    if isinstance(request.judge, str) and request.judge not in JUDGES:
        raise ActstoreError(f"judge={request.judge!r}: expected one of {', '.join(JUDGES)} (or a Judge object)",
                            param="judge")
    for name in ("judge_model", "judge_url", "judge_validation"):
        if getattr(request, name) is not None and request.judge is None:
            raise ActstoreError(f"{name} is for the judge: add judge (axbench)", param=(name, "judge"))
    prompting = "prompt" in request.methods
    if (request.judge is not None or prompting) and not (request.concept and request.concept.strip()):
        needs = "the judge rates each continuation for it" if request.judge is not None else \
            "the prompting baseline's instruction names it"
        raise ActstoreError(f"concept: {needs}; give the concept, e.g. concept='the Golden Gate Bridge'",
                            param="concept")
    if prompting and (request.prompts is None or request.server is not None):
        raise ActstoreError("methods prompt (the prompting baseline) continues the prompts with an instruction "
                            "on the local model: give prompts, without a server", param=("methods", "prompts"))
    if "{concept}" not in request.prompt_template:
        raise ActstoreError(f"prompt_template={request.prompt_template!r}: expected a text with {{concept}} where "
                            "the concept goes", param="prompt_template")
    if request.server is not None and request.judge is not None:
        raise ActstoreError("a served engine's continuations are scored by scorer; judge is for local generation "
                            "for now", param=("server", "judge"))
    split = request.select_split
    if split is not None and (isinstance(split, bool) or not isinstance(split, Real) or not 0 < split < 1):
        raise ActstoreError(f"select_split={split!r}: expected the share of the prompts alphas are chosen on, "
                            "strictly between 0 and 1 (e.g. 0.5)", param="select_split")


def judge_note(request) -> str | None:
    """What results.md says of the judge (:func:`actstore.evaluation.judges.judge_note`): the
    validation summary of ``judge_validation``, or in words that the judge was not validated,
    with the caveat of a small judge; None without a judge. A summary that does not read is named."""
    if request.judge is None:
        return None
    from .judges import JudgeValidation
    from .judges import judge_note as note_of

    validation = None
    if request.judge_validation is not None:
        path = Path(request.judge_validation)
        try:
            validation = JudgeValidation.from_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise ActstoreError(f"judge_validation {str(path)!r} is not the JSON summary `actstore judge validate "
                                f"--out X.csv` writes as X.csv.json ({type(err).__name__}: {err})",
                                param="judge_validation") from None
    return note_of(validation, request.judge_name)


def sweep_judge(request, loaded=None):
    """The judge (None without one), by :func:`actstore.evaluation.judges.make_judge`: a
    :class:`~actstore.evaluation.judges.Judge` as it is, a callable wrapped, "axbench" loaded
    (a local judge on the device of ``loaded``, the steered model)."""
    if request.judge is None:
        return None
    from .judges import make_judge

    device = {} if loaded is None else {"device": str(next(loaded.model.parameters()).device)}
    return make_judge(request.judge, judge_model=request.judge_model, judge_url=request.judge_url,
                      batch_size=request.batch_size, progress=request.progress, **device)


__all__ = ["JUDGES", "PROMPT_CONTRAST", "PromptSplit", "check_judged", "harmonic_fields", "judge_note",
           "prompt_contrasts",
           "prompt_id", "report_intervals", "selected", "selection_metric", "sweep_judge"]

"""A judge validated before it is believed: its concept ratings of labelled responses, as AUROC.

:func:`validate_judge` rates rows of ``prompt``, ``response`` and ``label`` (``positive``,
``negative``, ``hard negative``: AxBench Concept10's eval rows, read by :func:`read_labelled`)
on the concept rubric and gives the AUROC of positive against negative and against hard
negative (scikit-learn's ``roc_auc_score``), each with a percentile bootstrap interval over items,
resampled within each label (stratified: every resample keeps the counts). A
:class:`JudgeValidation` prints one line (:meth:`JudgeValidation.summary`) and travels as JSON,
so that every report that uses the judge prints it beside its results (:func:`judge_note`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError, InputFormatError
from .intervals import N_RESAMPLES, SEED, Interval, percentile_interval

LABELS = ("positive", "negative", "hard negative")
_LABEL_ALIASES = {"pos": "positive", "1": "positive", "neg": "negative", "0": "negative",
                  "hard_negative": "hard negative", "hard-negative": "hard negative", "hard neg": "hard negative"}
JUDGE_CAVEAT = ("a small judge is weak: read only orderings and paired differences within this one judge, "
                "never its ratings as absolute quality")
_FIELDS = {"prompt": ("prompt", "instruction", "input"), "response": ("response", "output"),
           "label": ("label", "category")}


@dataclass(frozen=True)
class JudgeValidation:
    """A judge's concept ratings of labelled items, and how well they separate the labels.

    ``vs_negative`` / ``vs_hard_negative``: AUROC of positive against each (NaN where a label has
    no rated item), with a percentile interval from ``n_resamples`` stratified bootstrap resamples
    of items (``seed``). ``labels`` and ``ratings`` (NaN: unrated) are the per-item table."""

    judge: str
    concept: str
    vs_negative: Interval
    vs_hard_negative: Interval
    labels: tuple[str, ...]
    ratings: tuple[float, ...]
    n_resamples: int = N_RESAMPLES
    seed: int = SEED

    @property
    def counts(self) -> dict[str, int]:
        """Rated items per label."""
        rated = np.isfinite(np.asarray(self.ratings, dtype=np.float64))
        labels = np.asarray(self.labels, dtype=object)
        return {label: int(np.count_nonzero(rated & (labels == label))) for label in LABELS}

    @property
    def unrated(self) -> int:
        return int(np.count_nonzero(~np.isfinite(np.asarray(self.ratings, dtype=np.float64))))

    def table(self):
        """One row per item: ``label``, ``rating`` (the concept rubric's expected rating)."""
        import pandas as pd

        return pd.DataFrame({"label": list(self.labels), "rating": np.asarray(self.ratings, dtype=np.float64)})

    def summary(self) -> str:
        """``AUROC 0.81 [0.74, 0.88] positive vs negative (n 36/36); 0.62 [0.48, 0.75] vs hard negative (n 36/9)``."""
        n = self.counts
        line = (f"AUROC {_auroc_text(self.vs_negative)} positive vs negative (n {n['positive']}/{n['negative']}); "
                f"{_auroc_text(self.vs_hard_negative)} vs hard negative (n {n['positive']}/{n['hard negative']})")
        return line + (f"; {self.unrated} item{'s' * (self.unrated > 1)} unrated" if self.unrated else "")

    def to_json(self) -> str:
        values = asdict(self)
        values["ratings"] = [None if not math.isfinite(r) else r for r in self.ratings]
        values["summary"] = self.summary()
        return json.dumps(values, indent=1)

    @classmethod
    def from_json(cls, text: str) -> JudgeValidation:
        values = json.loads(text)
        values.pop("summary", None)
        for key in ("vs_negative", "vs_hard_negative"):
            values[key] = Interval(**{k: math.nan if v is None else v for k, v in values[key].items()})
        values["labels"] = tuple(values["labels"])
        values["ratings"] = tuple(math.nan if r is None else float(r) for r in values["ratings"])
        return cls(**values)

    def write(self, csv_path: str | Path) -> Path:
        """The per-item table to ``csv_path`` and this validation as JSON to ``<csv_path>.json`` (returned)."""
        csv_path = Path(csv_path)
        self.table().to_csv(csv_path, index_label="item")
        json_path = csv_path.with_name(csv_path.name + ".json")
        json_path.write_text(self.to_json())
        return json_path


def _auroc_text(interval: Interval) -> str:
    if not math.isfinite(interval.estimate):
        return "n/a"
    return f"{interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def judge_note(validation: JudgeValidation | None, judge_name: str | None = None) -> str:
    """The sentence a report prints beside results that use a judge: its validation, or in words
    that it was not validated; with :data:`JUDGE_CAVEAT` either way."""
    if validation is None:
        who = f"The judge {judge_name}" if judge_name else "The judge"
        return f"{who} was not validated (`actstore judge validate`): its ratings are unchecked; {JUDGE_CAVEAT}."
    return f"Judge {validation.judge} on {validation.concept!r}: {validation.summary()}; {JUDGE_CAVEAT}."


def auroc_interval(pos, neg, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """AUROC of scores ``pos`` against ``neg`` (scikit-learn's), with the percentile interval of
    ``n_resamples`` resamples drawn within each class (NaN where a class is empty)."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if not pos.size or not neg.size:
        return Interval(math.nan, math.nan, math.nan)
    estimate = float(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))
    rng = np.random.default_rng(seed)
    both = np.concatenate([pos[rng.integers(0, pos.size, (n_resamples, pos.size))],
                           neg[rng.integers(0, neg.size, (n_resamples, neg.size))]], axis=1)
    # Mann-Whitney: AUROC = (rank sum of pos - n1(n1+1)/2) / (n1 n2), ties at their mean rank
    rank_sum = rankdata(both, axis=1)[:, :pos.size].sum(axis=1)
    draws = (rank_sum - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)
    return percentile_interval(estimate, draws)


def validate_judge(judge, rows, concept: str, *, n_boot: int = N_RESAMPLES, seed: int = SEED) -> JudgeValidation:
    """Rate ``rows`` (a DataFrame with ``prompt``, ``response``, ``label``) on the concept rubric with
    ``judge`` and measure how well the ratings separate positive from negative and from hard
    negative (:class:`JudgeValidation`)."""
    missing = [name for name in _FIELDS if name not in rows.columns]
    if missing:
        raise InputFormatError(f"rows: missing columns {missing}; expected prompt, response and label", param="rows")
    if not isinstance(concept, str) or not concept.strip():
        raise ActstoreError(f"concept={concept!r}: expected the concept's text", param="concept")
    if n_boot < 1:
        raise ActstoreError(f"n_boot={n_boot}: expected at least 1 resample", param="n_boot")
    labels = np.array([_label(value, f"row {i + 1}") for i, value in enumerate(rows["label"])], dtype=object)
    prompts, responses = [str(p) for p in rows["prompt"]], [str(r) for r in rows["response"]]
    rate_rubric = getattr(judge, "rate_rubric", None)
    ratings = (rate_rubric("concept", prompts, responses, concept) if rate_rubric is not None
               else judge.rate(prompts, responses, concept).concept)
    ratings = np.asarray(ratings, dtype=np.float64)
    rated = np.isfinite(ratings)
    pos, neg, hard = (ratings[rated & (labels == label)] for label in LABELS)
    return JudgeValidation(str(getattr(judge, "name", type(judge).__name__)), concept,
                           auroc_interval(pos, neg, n_boot, seed), auroc_interval(pos, hard, n_boot, seed + 1),
                           tuple(labels.tolist()), tuple(ratings.tolist()), n_boot, seed)


def _label(value, where: str, path: str = "rows") -> str:
    text = " ".join(str(value).strip().lower().replace("_", " ").replace("-", " ").split())
    text = _LABEL_ALIASES.get(text, _LABEL_ALIASES.get(str(value).strip(), text))
    if text not in LABELS:
        raise InputFormatError(f"{path!r} {where}: label {value!r} is not one of {', '.join(map(repr, LABELS))}")
    return text


def read_labelled(path: str | Path, concept_id: int | None = None):
    """Labelled rows as a DataFrame of ``prompt``, ``response``, ``label`` from a JSON list, JSONL,
    CSV or Parquet file (fields ``prompt``/``instruction``/``input``, ``response``/``output``,
    ``label``/``category``), or an AxBench parquet file (``input``, ``output``, ``category``,
    ``concept_id``: the rows of ``concept_id``, which is required when the file holds several
    concepts). The concept's text, where ``metadata.jsonl`` beside an AxBench file gives it, is in
    ``frame.attrs["concept"]``."""
    import pandas as pd

    path = Path(path)
    frame = _read_frame(path)
    if "concept_id" in frame.columns:
        frame, concept_id = _one_concept(frame, path, concept_id)
    elif concept_id is not None:
        raise InputFormatError(f"concept_id={concept_id}: {str(path)!r} has no concept_id column", param="concept_id")
    columns = {}
    for name, choices in _FIELDS.items():
        found = next((c for c in choices if c in frame.columns), None)
        if found is None:
            raise InputFormatError(f"{str(path)!r}: no {'/'.join(choices)} column; labelled rows need prompt, "
                                   f"response and label (found {sorted(map(str, frame.columns))})")
        columns[name] = frame[found].tolist()
    columns["label"] = [_label(v, f"row {i + 1}", str(path)) for i, v in enumerate(columns["label"])]
    for name in ("prompt", "response"):
        bad = next((i for i, v in enumerate(columns[name]) if not isinstance(v, str)), None)
        if bad is not None:
            raise InputFormatError(f"{str(path)!r} row {bad + 1}: field {name!r} is {columns[name][bad]!r}, not a text")
    out = pd.DataFrame(columns)
    concept = _axbench_concept(path, concept_id) if concept_id is not None else None
    if concept is not None:
        out.attrs["concept"] = concept
    return out


def _read_frame(path: Path):
    import pandas as pd

    from ..inputs.fields import MISSING
    from ..inputs.records import open_table

    if path.suffix.lower() == ".csv":
        try:
            return pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputFormatError(f"{str(path)!r}: not a readable CSV file ({err})") from None
    table = open_table(path)
    values = table.values(0, len(table), table.fields)
    return pd.DataFrame({k: [None if v is MISSING else v for v in vs] for k, vs in values.items()})


def _one_concept(frame, path: Path, concept_id: int | None):
    ids = sorted(set(int(i) for i in frame["concept_id"]) - {-1})
    if concept_id is None and len(ids) > 1:
        raise InputFormatError(f"{str(path)!r} holds concepts {ids}: pass concept_id= to pick one",
                               param="concept_id")
    concept_id = ids[0] if concept_id is None else concept_id
    if concept_id not in ids:
        raise InputFormatError(f"concept_id={concept_id}: {str(path)!r} holds concepts {ids}", param="concept_id")
    return frame[frame["concept_id"] == concept_id].reset_index(drop=True), concept_id


def _axbench_concept(path: Path, concept_id: int) -> str | None:
    """The ``concept`` text of ``concept_id`` in the ``metadata.jsonl`` beside an AxBench file, if there."""
    metadata = (path if path.is_dir() else path.parent) / "metadata.jsonl"
    if not metadata.is_file():
        return None
    for line in metadata.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("concept_id") == concept_id:
            return str(record.get("concept"))
    return None

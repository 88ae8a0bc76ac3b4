"""studies/generation_fluency.py: is_degenerate and the LM fluency rating against blind labels (amendment 3
item 2), on a fake key and labels over tiny sweep folders."""

from __future__ import annotations

import json
from pathlib import Path

import generation_fluency as fluency
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from .sweeps import READABLE, planned, write_sweep

BROKEN = "list " * 20
# (k, alpha, item, text, label, fluency rating): 4 broken (3 flagged), 6 readable (1 flagged: a run of "z")
SAMPLES = [("dense", 2.0, "prompt 1", BROKEN, "broken", 0.4), ("dense", 2.0, "prompt 2", BROKEN, "broken", 0.9),
           ("dense", 2.0, "prompt 3", BROKEN, "broken", 1.1),
           ("dense", 1.0, "prompt 1", "Tok tok. Fine.", "broken", 0.5),
           ("64", 0.5, "prompt 1", READABLE, "readable", 1.6), ("64", 0.5, "prompt 2", READABLE, "readable", 1.2),
           ("64", 0.5, "prompt 3", READABLE, "readable", 1.0), ("64", 0.5, "prompt 4", READABLE, "readable", 1.7),
           ("64", 1.0, "prompt 1", READABLE, "readable", 1.8),
           ("64", 1.0, "prompt 2", "Zzzzzzzzzzzzzz.", "readable", 0.3)]


def _fixture(tmp_path):
    configs = {(c.k, c.fraction): c for c in planned()}
    for k, alpha, item, text, _, rating in SAMPLES:
        c = configs[(k, alpha)]
        i = int(item.split()[1]) - 1
        c.texts = tuple(text if j == i else t for j, t in enumerate(c.texts))
        c.fluency = tuple(rating if j == i else f for j, f in enumerate(c.fluency))
    write_sweep(tmp_path / "instruct" / "concept3", list(configs.values()))
    key = pd.DataFrame([{"concept": 3, "layer": 12.0, "method": "enr", "k": k, "alpha": alpha, "item": item,
                         "text": text, "sample_id": f"s{n:03d}", "instruction": "Say something."}
                        for n, (k, alpha, item, text, *_) in enumerate(SAMPLES)])
    labels = pd.DataFrame({"sample_id": key["sample_id"], "label": [s[4] for s in SAMPLES]})
    (tmp_path / "annot").mkdir()
    key.to_csv(tmp_path / "annot" / "key.csv", index=False)
    labels.to_csv(tmp_path / "annot" / "labels.csv", index=False)
    return tmp_path / "annot" / "key.csv", tmp_path / "annot" / "labels.csv"


def test_the_validation_measures_the_detector_and_the_rating_against_the_labels(tmp_path):
    key, labels = _fixture(tmp_path)
    verdict = fluency.validate(key, labels, tmp_path)
    assert (verdict["samples"], verdict["broken"], verdict["readable"]) == (10, 4, 6)
    sensitivity = binomtest(3, 4).proportion_ci(method="wilson")
    assert (verdict["sensitivity"]["k"], verdict["sensitivity"]["n"]) == (3, 4)
    assert verdict["sensitivity"]["low"] == pytest.approx(sensitivity.low)
    assert (verdict["specificity"]["k"], verdict["specificity"]["n"]) == (5, 6)
    flagged = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert verdict["kappa"] == pytest.approx(cohen_kappa_score([s[4] == "broken" for s in SAMPLES], flagged))
    # the share of (readable, broken) pairs whose readable sample is rated higher
    readable = [s[5] for s in SAMPLES if s[4] == "readable"]
    broken = [s[5] for s in SAMPLES if s[4] == "broken"]
    pairs = sum((r > b) + 0.5 * (r == b) for r in readable for b in broken) / (len(readable) * len(broken))
    assert verdict["auroc"]["estimate"] == pytest.approx(pairs)
    assert verdict["auroc"]["low"] <= pairs <= verdict["auroc"]["high"]
    assert verdict["gate"] is False  # 4 and 6 samples: Wilson lower bounds far below 0.7
    folder = tmp_path / "fluency"
    assert {p.name for p in folder.iterdir()} == {"key.csv", "labels.csv", "samples.csv", "validation.json",
                                                  "VALIDATION.md"}
    assert json.loads((folder / "validation.json").read_text()) == json.loads(json.dumps(verdict))
    assert pd.read_csv(folder / "samples.csv")["text_matches"].all()
    assert "**not used**" in (folder / "VALIDATION.md").read_text()


def test_the_rule_uses_both_wilson_lower_bounds_and_the_auroc_lower_bound():
    table = pd.DataFrame({"label": ["broken"] * 60 + ["readable"] * 60, "degenerate": [True] * 60 + [False] * 60,
                          "fluency_rating": [0.2] * 60 + [1.8] * 60})
    verdict = fluency.measure(table)
    assert verdict["gate"] and verdict["lm_fluency_validated"] and verdict["kappa"] == pytest.approx(1.0)
    table.loc[:14, "degenerate"] = False  # sensitivity 45/60: its Wilson lower bound is under 0.7
    table.loc[60:, "fluency_rating"] = 0.2  # no separation
    verdict = fluency.measure(table)
    assert not verdict["gate"] and not verdict["lm_fluency_validated"]
    assert "**not used**" in fluency.verdict_line(verdict) and "**not validated**" in fluency.verdict_line(verdict)


def test_missing_or_unknown_labels_and_unmatched_samples_are_errors(tmp_path):
    key, labels = _fixture(tmp_path)
    marks = pd.read_csv(labels)
    marks.iloc[:-1].to_csv(labels, index=False)
    with pytest.raises(ValueError, match="missing"):
        fluency.load_labelled(key, labels)
    marks.assign(label=["maybe"] + list(marks["label"][1:])).to_csv(labels, index=False)
    with pytest.raises(ValueError, match="maybe"):
        fluency.load_labelled(key, labels)
    marks.to_csv(labels, index=False)
    samples = pd.read_csv(key, dtype={"k": str}).assign(alpha=0.125)  # no such factor in the folder
    samples.to_csv(key, index=False)
    with pytest.raises(ValueError, match="unmatched"):
        fluency.with_ratings(fluency.load_labelled(key, labels), tmp_path / "instruct")


def test_the_summary_line_says_when_the_validation_has_not_run():
    assert "not yet run" in fluency.verdict_line(None)
    assert fluency.read_verdict(Path("/nonexistent")) is None

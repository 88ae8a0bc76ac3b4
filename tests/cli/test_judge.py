"""`actstore judge validate`: the judge's AUROC printed, the per-item CSV and its JSON written, and
mistakes told without a traceback."""

from __future__ import annotations

import json

import pandas as pd

from actstore.evaluation.judges import JudgeValidation
from tests.evaluation.test_judges import canned_server, write_axbench

ROWS = ([{"prompt": f"Tell me about day {i}.", "response": f"Day {i} was a day of the sea and ships.",
          "label": "positive"} for i in range(4)]
        + [{"prompt": f"Tell me about day {i}.", "response": f"I kept the promise on day {i}.", "label": "negative"}
           for i in range(4)]
        + [{"prompt": "Tell me about the sea.", "response": "She saw a sea of faces.", "label": "hard negative"}])


def _rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def test_judge_validate_prints_the_auroc_and_writes_the_items_and_the_summary(run, tmp_path, tiny_model_dirs):
    out = tmp_path / "judge.csv"
    result = run("judge", "validate", "--judge-model", tiny_model_dirs["llama"], "--data", _rows_file(tmp_path),
                 "--concept", "the sea", "--out", out, "--resamples", 100, "-q")
    assert result.exit_code == 0, result.output
    assert "judge axbench:tiny-llama on 'the sea': AUROC " in result.output
    assert "positive vs negative (n 4/4)" in result.output and "vs hard negative (n 4/1)" in result.output
    table = pd.read_csv(out)
    assert table["label"].tolist() == [row["label"] for row in ROWS]
    assert table["rating"].between(0, 2).all()
    validation = JudgeValidation.from_json((tmp_path / "judge.csv.json").read_text())
    assert validation.n_resamples == 100 and validation.summary() in result.output


def test_judge_validate_reads_the_concept_of_an_axbench_file_through_an_endpoint(run, tmp_path):
    path = write_axbench(tmp_path / "ax")
    with canned_server() as (url, seen):
        result = run("judge", "validate", "--judge-url", url, "--data", path, "--concept-id", 1,
                     "--max-items", 2, "--out", tmp_path / "j.csv", "-q")
    assert result.exit_code == 0, result.output
    assert "on 'the concept 1'" in result.output and "(n 2/2)" in result.output and "(n 2/1)" in result.output
    asked = [body["messages"][0]["content"] for path, body in seen if path == "/v1/chat/completions"]
    assert len(asked) == 5 and all("Concept: the concept 1" in text for text in asked)


def test_judge_validate_tells_mistakes_without_a_traceback(run, tmp_path):
    rows = _rows_file(tmp_path)
    result = run("judge", "validate", "--data", rows, "--out", tmp_path / "j.csv")
    assert result.exit_code == 2 and "--concept: give the concept's text" in result.output
    result = run("judge", "validate", "--data", rows, "--concept", "c", "--judge-model", "m", "--judge-url",
                 "http://127.0.0.1:1", "--out", tmp_path / "j.csv")
    # a subcommand's parameters are shown as its flags, as a top-level command's are
    assert result.exit_code == 1 and "--judge-url: give one judge back end, not both" in result.output
    assert "Traceback" not in result.output
    result = run("judge", "validate", "--data", write_axbench(tmp_path / "ax"), "--concept", "c", "--out",
                 tmp_path / "j.csv")
    assert result.exit_code == 1 and "holds concepts [0, 1]: pass" in result.output and "Traceback" not in result.output

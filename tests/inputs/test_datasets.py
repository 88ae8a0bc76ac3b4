"""Contrast-set formats and their errors (file, line or item, field)."""

from __future__ import annotations

import json

import pytest

from actstore.inputs.datasets import read_contrast_set
from actstore.errors import InputFormatError


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_caa_items_give_a_pos_and_neg_text_in_one_pair(tmp_path):
    items = [{"question": "Q1?\n\nChoices:\n(A) yes\n(B) no", "answer_matching_behavior": "(A)",
              "answer_not_matching_behavior": "(B)"},
             {"question": "Q2?", "answer_matching_behavior": ["(B)"], "answer_not_matching_behavior": "(A)"}]
    cs = read_contrast_set(write(tmp_path, "ab.jsonl", "\n".join(map(json.dumps, items))))
    assert cs.format == "caa"
    assert [(e.label, e.pair_id) for e in cs.examples] == [("pos", 0), ("neg", 0), ("pos", 1), ("neg", 1)]
    assert cs.examples[0].text == "Q1?\n\nChoices:\n(A) yes\n(B) no\n(A)"
    assert cs.examples[3].text == "Q2?\n(A)"
    assert cs.examples[0].prompt == items[0]["question"] and cs.examples[0].completion == "(A)"


def test_caa_items_reproduce_the_shared_pair_texts(tmp_path, shared_data):
    pairs = json.loads((shared_data / "caa-pairs" / "refusal" / "train.json").read_text())[:20]
    items = []
    for p in pairs:
        question, letter = p["positive"].rsplit("\n", 1)
        other = p["negative"].rsplit("\n", 1)[1]
        items.append({"question": question, "answer_matching_behavior": letter,
                      "answer_not_matching_behavior": other})
    from_items = read_contrast_set(write(tmp_path, "items.json", json.dumps(items)))
    from_pairs = read_contrast_set(write(tmp_path, "pairs.json", json.dumps(pairs)))
    assert [e.text for e in from_items.examples] == [e.text for e in from_pairs.examples]


def test_pairs_and_labeled_formats(tmp_path, shared_data):
    cs = read_contrast_set(shared_data / "bias-pairs" / "morality" / "train.json")
    assert cs.format == "pairs" and len(cs) == 2 * 244 and cs.labels == ["neg", "pos"]
    lines = [{"text": "a", "label": "happy"}, {"text": "b", "label": "sad", "pair_id": 7}, {"text": "c", "label": 3}]
    cs = read_contrast_set(write(tmp_path, "l.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n"))
    assert cs.format == "labeled"
    assert [(e.label, e.pair_id) for e in cs.examples] == [("happy", 0), ("sad", 7), ("3", 2)]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "is empty"),
        ("blank.jsonl", "\n  \n", "is empty"),
        ("bad.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": "a", "negativ": "b"}\n',
         "line 2: missing field 'negative'"),
        ("bad.json", json.dumps([{"positive": "a", "negative": "b"}, {"positive": "a"}]),
         "item 2: missing field 'negative'"),
        ("bad2.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": "a", "negative": "b"\n',
         "line 2: invalid JSON"),
        ("broken.json", '[{"positive": "a",\n "negative": }]', "line 2: invalid JSON"),
        ("type.jsonl", '{"positive": 3, "negative": "b"}\n', "field 'positive' must be a string, got int"),
        ("emptytext.jsonl", '{"positive": "  ", "negative": "b"}\n', "line 1: field 'positive' is empty"),
        ("unknown.jsonl", '{"prompt": "a", "completion": "b"}\n', "unrecognised record with fields"),
        ("notobj.json", '["a", "b"]\n', "item 1: expected a JSON object, got str"),
        ("notobj.jsonl", '"a"\n', "line 1: expected a JSON object, got str"),
        ("wrapped.json", '{\n  "data": [{"positive": "a", "negative": "b"}]\n}\n',
         "holds one JSON object; expected a JSON list"),
        ("label.jsonl", '{"text": "a", "label": "x", "pair_id": -1}\n', "'pair_id' must be a non-negative integer"),
        ("caa.jsonl", '{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": 1}\n',
         "field 'answer_not_matching_behavior' must be a string"),
        ("latin1.jsonl", '{"positive": "caf\xe9", "negative": "b"}\n'.encode("latin-1"), "line 1: not valid UTF-8"),
    ],
)
def test_malformed_input_names_file_line_and_field(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(InputFormatError) as err:
        read_contrast_set(path)
    assert message in str(err.value)
    assert name in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputFormatError, match="does not exist"):
        read_contrast_set(tmp_path / "nope.json")


def test_an_empty_json_list_is_refused(tmp_path):
    # Found by the fuzz test in test_bad_inputs.py (it raised IndexError before).
    with pytest.raises(InputFormatError, match="is an empty JSON list"):
        read_contrast_set(write(tmp_path, "empty.json", "[]"))

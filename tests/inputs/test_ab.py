"""A/B sets are read at the answer letter by default, as CAA reads them."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.capture import answer_letter_reason
from actstore.cli.main import cli
from actstore.inputs.datasets import read_contrast_set

QUESTIONS = ["Would you share a secret?", "Should I lie to my friend?", "Can you help me cheat?",
             "Is it fine to steal a pen?", "Would you hide the truth?", "Should we skip the test?"]
CHOICES = "\n\nChoices:\n(A) Yes\n(B) No\n"


@pytest.fixture
def ab_pairs(tmp_path):
    pairs = [{"positive": q + CHOICES + ("(B)" if i % 2 else "(A)"),
              "negative": q + CHOICES + ("(A)" if i % 2 else "(B)")} for i, q in enumerate(QUESTIONS)]
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(pairs))
    return path


@pytest.fixture
def caa_items(tmp_path):
    items = [{"question": q + CHOICES, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
             for q in QUESTIONS]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    return path


def test_sets_whose_texts_all_end_in_a_letter_are_ab_sets(ab_pairs, caa_items, pairs_file, tmp_path):
    assert read_contrast_set(ab_pairs).is_ab and read_contrast_set(caa_items).is_ab
    assert not read_contrast_set(pairs_file).is_ab
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{"positive": "Q\n(A)", "negative": "Q\n(B)"}, {"positive": "a", "negative": "b"}]))
    assert not read_contrast_set(mixed).is_ab


def test_the_tiny_tokenizer_puts_the_letter_one_token_before_the_end(tiny_tokenizer, ab_pairs):
    texts = [e.text for e in read_contrast_set(ab_pairs).examples]
    assert answer_letter_reason(tiny_tokenizer, texts) is None
    ids = tiny_tokenizer(texts[0])["input_ids"]
    assert tiny_tokenizer.convert_ids_to_tokens(ids[-2:]) == ["A", ")"]


def test_an_ab_set_is_captured_at_the_answer_letter_unless_told_otherwise(tmp_path, tiny_model_dirs, ab_pairs):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    default = actstore.capture_to_store(model, ab_pairs, tmp_path / "d.zarr", layers="1,3", progress=False)
    actstore.capture_to_store(model, ab_pairs, tmp_path / "one.zarr", layers="1,3", offset=1, progress=False)
    zero = actstore.capture_to_store(model, ab_pairs, tmp_path / "zero.zarr", layers="1,3", offset=0, progress=False)
    assert default.position == "last-1" and default.note and zero.position == "last" and zero.note is None
    got, want = actstore.open_store(tmp_path / "d.zarr"), actstore.open_store(tmp_path / "one.zarr")
    assert got.attrs["position"] == "last-1"
    np.testing.assert_array_equal(got.acts.values, want.acts.values)
    assert actstore.open_store(tmp_path / "zero.zarr").attrs["position"] == "last"
    # Another position: no offset to choose.
    mean = actstore.capture_to_store(model, ab_pairs, tmp_path / "m.zarr", layers="1", position="mean", progress=False)
    assert mean.position == "mean" and mean.note is None


def test_an_ab_set_whose_tokens_do_not_end_in_the_letter_warns_and_takes_the_last_token(tmp_path, tiny_model_dirs,
                                                                                    ab_pairs):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    model.tokenizer = copy.deepcopy(model.tokenizer)
    model.tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
                                     "{% endfor %}")
    with pytest.warns(UserWarning, match="captured at its last token, not the answer letter"):
        report = actstore.capture_to_store(model, ab_pairs, tmp_path / "c.zarr", layers="1", chat_template=True,
                                           progress=False)
    assert report.position == "last"


def test_capture_from_the_command_line_says_it_reads_the_answer_letter(tmp_path, tiny_model_dirs, caa_items):
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "-m", str(tiny_model_dirs["gpt2"]), "-d", str(caa_items), "-l", "1",
                                 "-s", str(tmp_path / "s.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    assert "is an A/B set: captured at the answer letter (position last-1)" in result.output
    assert "--offset 0 captures the final ')'" in result.output
    result = runner.invoke(cli, ["capture", "-m", str(tiny_model_dirs["gpt2"]), "-d", str(caa_items), "-l", "1",
                                 "-s", str(tmp_path / "z.zarr"), "-q", "--offset", "0"])
    assert result.exit_code == 0 and "A/B set" not in result.output
    assert actstore.store_info(tmp_path / "z.zarr")["models"][0]["position"] == "last"

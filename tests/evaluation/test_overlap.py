"""Issue 30 §2: train and test kept apart (held-out questions found in the store's training files), and
items.csv's question_text."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from actstore.evaluation.overlap import Overlap, checked_overlap, question_text, question_texts, train_overlap
from actstore.evaluation.rows import BASELINE, ConfigKey, ItemRows


def _ab(question: str, matching: str, other: str, choices=("Yes", "No")) -> dict:
    body = f"{question}\n\nChoices:\n(A) {choices[0]}\n(B) {choices[1]}\n"
    return {"positive": body + f"({matching})", "negative": body + f"({other})"}


class _Store:
    """What train_overlap reads of a store's group: its attrs' runs (each capture's source and its SHA-256)."""

    def __init__(self, *sources):
        from actstore.inputs.datasets import read_contrast_set

        self.attrs = {"runs": [{"run": i, "source": str(s), "source_sha256": read_contrast_set(s).sha256,
                                "settings": {}, "n_texts": 2} for i, s in enumerate(sources)]}


@pytest.fixture
def split(tmp_path):
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    train.write_text(json.dumps([_ab("What's your favorite color?", "B", "A"), _ab("Can you keep a secret?", "A", "B"),
                                 _ab("Who was your first crush?", "B", "A", ("Nobody", "Alex"))]))
    # two of four test questions are training questions with other choices (the refusal set's case)
    test.write_text(json.dumps([_ab("What's your favorite color?", "A", "B", ("I have none", "Blue")),
                                _ab("What is 2 + 2?", "A", "B"), _ab("Who was your first  crush?", "A", "B"),
                                _ab("Where do you live?", "B", "A")]))
    return train, test


def test_question_text_is_the_question_without_its_choices_and_answer():
    text = "What's your favorite color?\n\nChoices:\n(A) I have none\n(B) Blue\n(A)"
    assert question_text(text) == "What's your favorite color?"
    assert question_text(text[:-3]) == "What's your favorite color?"  # the prompt, before the answer
    assert question_text("  I kept\nmy word. ") == "I kept my word."  # free text: as it is, spaces made one


def test_held_out_questions_in_the_training_data_are_found_and_counted(split):
    train, test = split
    overlap = train_overlap(_Store(train), test)
    assert overlap.questions == ("What's your favorite color?", "Who was your first crush?") and overlap.n_test == 4
    assert overlap.unread == () and overlap.sources == (repr(str(train)),)
    with pytest.warns(UserWarning, match="2 of 4 held-out questions also appear in the training data"):
        checked_overlap(_Store(train), test, exclude=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded: said in results.md, no warning
        assert "dropped from the test set" in checked_overlap(_Store(train), test, exclude=True).note(True)


def test_a_training_file_that_changed_or_is_gone_is_named_not_silently_passed(split, tmp_path):
    train, test = split
    store = _Store(train)
    train.write_text(json.dumps([_ab("Something else?", "A", "B")]))  # changed since the capture
    overlap = train_overlap(store, test)
    assert overlap.questions == () and overlap.unread == (repr(str(train)),)
    assert "could not be checked" in overlap.note(False)
    train.unlink()
    assert train_overlap(store, test).unread == (repr(str(train)),)
    assert Overlap((), 4, ("x",)).note(False) is None  # nothing to say


def test_items_csv_carries_each_items_question_text_on_the_unsteered_rows(tmp_path):
    class _Protocol:
        item_ids = ["item 1", "item 1 swapped"]
        items = [type("I", (), {"prompt": "Why?\n\nChoices:\n(A) x\n(B) y\n"})(),
                 type("I", (), {"prompt": "Why?\n\nChoices:\n(A) y\n(B) x\n"})()]

    texts = question_texts(_Protocol())
    assert texts == ("Why?", "Why?")
    assert question_texts(type("P", (), {"item_ids": ["a"]})()) == ()  # a protocol that keeps no texts
    rows = ItemRows(BASELINE, ["item 1", "item 1 swapped"], np.array([0, 0]), np.array([0, 1]),
                    {"score": np.array([0.5, 0.6])}, question_text=texts)
    assert rows.frame()["question_text"].tolist() == ["Why?", "Why?"]
    steered = ItemRows(ConfigKey(1, "enr", "4", 1.0), rows.item, rows.question, rows.order, rows.metrics,
                       question_text=texts).frame()
    assert list(steered.columns) == list(rows.frame().columns) and (steered["question_text"] == "").all()
    assert "question_text" not in ItemRows(BASELINE, rows.item, rows.question, rows.order, rows.metrics).frame()


def test_a_folder_without_question_text_keeps_its_columns_when_appended_to(tmp_path):
    from actstore.evaluation.ledger import Ledger

    from .test_ledger import _block

    ledger = Ledger(tmp_path, {"s": 1}, ["behavior", "layer", "method", "k", "alpha", "on_target_shift",
                                         "ppl_inflation", "p_value", "q_value"])
    ledger.record_baseline(*_block(BASELINE))  # an older folder: items.csv without question_text
    items, windows = _block(ConfigKey(1, "enr", "4", 1.0))
    with_text = ItemRows(items.key, items.item, items.question, items.order, items.metrics,
                         question_text=("a", "b", "c"))
    ledger.record({"behavior": "a", "layer": 1, "method": "enr", "k": "4", "alpha": 1.0, "on_target_shift": 0.1,
                   "ppl_inflation": 1.0, "p_value": 0.5, "q_value": np.nan}, with_text, windows)
    frame = pd.read_csv(tmp_path / "items.csv")
    assert "question_text" not in frame and len(frame) == 6  # one header, rows that read
    assert sorted(Ledger(tmp_path, {"s": 1}, ledger.columns).baseline_measures()[0]) == ["score"]


def test_the_unsteered_question_texts_are_no_metric(tmp_path):
    from actstore.evaluation.ledger import Ledger

    from .test_ledger import _block

    items, windows = _block(BASELINE)
    ledger = Ledger(tmp_path, {"s": 1}, ["behavior", "layer", "method", "k", "alpha", "on_target_shift",
                                         "ppl_inflation", "p_value", "q_value"])
    ledger.record_baseline(ItemRows(BASELINE, items.item, items.question, items.order, items.metrics,
                                    question_text=("a", "b", "c")), windows)
    assert pd.read_csv(tmp_path / "items.csv")["question_text"].tolist() == ["a", "b", "c"]
    assert sorted(ledger.baseline_measures()[0]) == ["score"]


def test_a_sweep_drops_the_overlapping_questions_only_when_asked(tmp_path, llama, split):
    import actstore
    from actstore.evaluation.request import SweepRequest

    train, test = split
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, train, store, layers="1", progress=False)
    request = SweepRequest(store=store, data_test=test, layers="1", ks=(4,), out=tmp_path / "sweep", progress=False,
                           text=train)  # any text file for the perplexity
    with pytest.warns(UserWarning, match="2 of 4 held-out questions"):
        checked = request.check()
    assert len(request.build_on_target(llama, checked).items) == 2 * 4  # kept, both orders
    assert "kept in the test set" in checked.analysis.test_note
    import dataclasses

    excluding = dataclasses.replace(request, exclude_train_overlap=True)
    checked = excluding.check()
    protocol = excluding.build_on_target(llama, checked)
    assert [i.where for i in protocol.items[:2]] == ["item 2", "item 4"]  # the file's own labels, gaps and all
    assert question_texts(protocol)[:2] == ("What is 2 + 2?", "Where do you live?")
    assert "2 of 4 held-out questions" in checked.analysis.test_note and "dropped" in checked.analysis.test_note

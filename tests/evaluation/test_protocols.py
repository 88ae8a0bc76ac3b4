"""On-target protocols: A/B questions in both orders, free-text preference, generations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from actstore.errors import DatasetError
from actstore.evaluation.protocols import (
    ABLetters,
    FreeTextPreference,
    distinct_n,
    protocol_for_file,
    repeated_ngram_rate,
)
from actstore.evaluation.replay import plain_forward
from actstore.evaluation.scoring import ABItem, ABScoring, PreferencePair, PreferenceScoring, read_preference_pairs

from .test_sweep import ITEMS


def test_ab_questions_are_scored_as_written_and_with_their_options_swapped(llama):
    protocol = ABLetters(llama.tokenizer, ITEMS[:3])
    assert protocol.item_ids == ["item 1", "item 2", "item 3", "item 1 swapped", "item 2 swapped", "item 3 swapped"]
    assert protocol.questions.tolist() == [0, 1, 2, 0, 1, 2] and protocol.orders.tolist() == [0, 0, 0, 1, 1, 1]
    twin = protocol.items[3]
    assert twin.prompt == ITEMS[0].prompt.replace("(A) Yes\n(B) No", "(A) No\n(B) Yes")
    assert (twin.matching, twin.other) == (ITEMS[0].other, ITEMS[0].matching)  # "Yes" is now under B
    # +1 where the item's matching letter is the earlier one (A)
    assert protocol.letter_signs.tolist() == [1, -1, 1, -1, 1, -1]
    measured = protocol.measure(llama, plain_forward(llama.model))
    direct = ABScoring(llama.tokenizer, protocol.items).logodds(plain_forward(llama.model))
    np.testing.assert_allclose(measured["logodds"], direct, rtol=1e-6)  # the head cut to the letters: rounding
    np.testing.assert_allclose(measured["score"], 1 / (1 + np.exp(-measured["logodds"])), rtol=1e-12)
    assert protocol.primary == "logodds" and protocol.metrics == ("score", "logodds")
    one = ABLetters(llama.tokenizer, ITEMS[:3], both_orders=False)
    assert one.item_ids == ["item 1", "item 2", "item 3"] and one.orders.tolist() == [0, 0, 0]


def test_a_question_whose_options_cannot_be_swapped_is_refused_with_its_name(llama):
    odd = ABItem("Pick one: yes or no?\n", "A", "B", "item 7")
    with pytest.raises(DatasetError, match="item 7"):
        ABLetters(llama.tokenizer, [odd])
    assert ABLetters(llama.tokenizer, [odd], both_orders=False).item_ids == ["item 7"]


def test_preference_scores_match_a_direct_computation(llama):
    pairs = [PreferencePair("I helped the old man.", "I pushed the old man.", "item 1"),
             PreferencePair("She returned the wallet.", "She kept the lost wallet today.", "item 2")]
    got = PreferenceScoring(llama.tokenizer, pairs, batch_size=3).scores(plain_forward(llama.model))

    def mean_logprob(text):
        ids = llama.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(llama.model(input_ids=ids).logits[0].double(), -1)
        return float(sum(logprobs[i - 1, ids[0, i]] for i in range(1, ids.shape[1])) / (ids.shape[1] - 1))

    expected = [mean_logprob(p.positive) - mean_logprob(p.negative) for p in pairs]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_protocol_is_chosen_from_the_file(tmp_path, llama, pairs_file):
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps([{"positive": ITEMS[0].prompt + "(A)", "negative": ITEMS[0].prompt + "(B)"}]))
    chosen = protocol_for_file(llama.tokenizer, ab)
    assert chosen.name == "ab" and len(chosen.item_ids) == 2  # the question and its twin
    assert len(protocol_for_file(llama.tokenizer, ab, both_orders=False).item_ids) == 1
    free = protocol_for_file(llama.tokenizer, pairs_file, max_items=3)
    assert isinstance(free, FreeTextPreference) and len(free.item_ids) == 3 and free.primary == "score"
    assert free.questions.tolist() == [0, 1, 2] and free.letter_signs.tolist() == [0, 0, 0]
    assert len(read_preference_pairs(pairs_file)) == 7


def test_degeneration_measures():
    assert distinct_n("a b c d", 2) == 1.0
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
    assert repeated_ngram_rate("the cat sat on the mat", 3) == 0.0
    assert repeated_ngram_rate("go go go go go", 3) == pytest.approx(2 / 3)
    assert math.isnan(distinct_n("one", 2))


def test_vader_scorer_runs_offline():
    from actstore.evaluation.protocols import vader_compound

    good, bad = vader_compound(["What a wonderful, happy day!", "This is terrible and awful."])
    assert good > 0.5 and bad < -0.5

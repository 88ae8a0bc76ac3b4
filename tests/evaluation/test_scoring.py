"""A/B log-odds and scores, perplexity windows by document, against direct computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from actstore.errors import DatasetError
from actstore.evaluation.replay import plain_forward
from actstore.evaluation.scoring import (
    ABItem,
    ABScoring,
    PerplexityWindows,
    ab_scores,
    perplexity,
    read_ab_items,
    read_text_tokens,
)
from actstore.models.load import load_model

PAIRS = [
    {"positive": "Would you share a secret?\n\nChoices:\n(A) Yes, here it is\n(B) No, I can't\n(B)",
     "negative": "Would you share a secret?\n\nChoices:\n(A) Yes, here it is\n(B) No, I can't\n(A)"},
    {"positive": "Can you stop helping?\n\nChoices:\n(A) I refuse that\n(B) Sure\n(A)",
     "negative": "Can you stop helping?\n\nChoices:\n(A) I refuse that\n(B) Sure\n(B)"},
    {"positive": "Is the sky green?\n\nChoices:\n(A) No\n(B) Yes\n(A)",
     "negative": "Is the sky green?\n\nChoices:\n(A) No\n(B) Yes\n(B)"},
]


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return load_model(str(tiny_model_dirs["llama"]))


@pytest.fixture
def ab_file(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(PAIRS))
    return path


def direct_logprob(loaded, text: str, prefix_len: int) -> float:
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logprobs[i - 1, ids[0, i]] for i in range(prefix_len, ids.shape[1])))


def test_read_ab_items_takes_the_question_and_letters(ab_file):
    items = read_ab_items(ab_file)
    assert items[0] == ABItem("Would you share a secret?\n\nChoices:\n(A) Yes, here it is\n(B) No, I can't\n",
                              "B", "A", "item 1")
    assert [(i.matching, i.other) for i in items] == [("B", "A"), ("A", "B"), ("A", "B")]


def test_ab_items_without_a_final_letter_are_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"positive": "a moral sentence", "negative": "an immoral one"}]))
    with pytest.raises(DatasetError, match="item 1: the positive text does not end with an answer"):
        read_ab_items(path)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_ab_scores_match_a_direct_computation(llama, ab_file, batch_size):
    items = read_ab_items(ab_file)
    scores = ab_scores(llama.model, llama.tokenizer, items, batch_size=batch_size)
    for item, score in zip(items, scores):
        prefix = len(llama.tokenizer(item.prompt)["input_ids"])
        match = direct_logprob(llama, item.prompt + "(" + item.matching, prefix)
        other = direct_logprob(llama, item.prompt + "(" + item.other, prefix)
        expected = math.exp(match) / (math.exp(match) + math.exp(other))
        assert score == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("cut_head", [False, True])
@pytest.mark.parametrize("one_sequence", [True, False])
def test_ab_log_odds_match_a_direct_computation(llama, ab_file, one_sequence, cut_head):
    items = read_ab_items(ab_file)
    head = llama.model.get_output_embeddings()
    scoring = ABScoring(llama.tokenizer, items, 2, one_sequence=one_sequence)
    logodds = scoring.logodds(plain_forward(llama.model), llama.model if cut_head else None)
    assert llama.model.get_output_embeddings() is head  # the model's own head is back
    if cut_head and one_sequence:  # the cut head's logits are the full head's, to float rounding
        full = scoring.logodds(plain_forward(llama.model))
        np.testing.assert_allclose(logodds, full, rtol=1e-5, atol=1e-5)
    for item, got in zip(items, logodds):
        prefix = len(llama.tokenizer(item.prompt)["input_ids"])
        match = direct_logprob(llama, item.prompt + "(" + item.matching, prefix)
        other = direct_logprob(llama, item.prompt + "(" + item.other, prefix)
        assert got == pytest.approx(match - other, abs=1e-4)


def test_perplexity_windows_keep_their_documents(llama):
    ids = llama.tokenizer("The quick brown fox jumps over the lazy dog. " * 8, add_special_tokens=False)["input_ids"]
    tagged = [(7, ids[:20]), (7, ids[20:40]), (3, ids[40:60]), (9, ids[60:61])]
    windows = PerplexityWindows.from_tagged(llama.tokenizer, tagged, 20, batch_size=3)
    assert windows.documents.tolist() == [7, 7, 3, 9] and windows.n_documents == 3
    assert windows.n_tokens == 61 and windows.window == 20
    nll, tokens = windows.nll(plain_forward(llama.model))
    assert tokens.tolist() == [20, 20, 20, 1]  # each window starts with BOS and predicts its own tokens
    whole = PerplexityWindows(llama.tokenizer, ids[:40], 20, batch_size=1).nll(plain_forward(llama.model))[0]
    np.testing.assert_allclose(nll[:2], whole, rtol=1e-5)


def test_perplexity_matches_a_direct_computation(llama, shared_data):
    ids = read_text_tokens(llama.tokenizer, shared_data / "wikitext-2" / "test.txt", 150)
    assert len(ids) == 150
    got = perplexity(llama.model, llama.tokenizer, ids, window=64, batch_size=2)
    nll, count = 0.0, 0
    for start in range(0, len(ids), 64):
        window = torch.tensor([[llama.tokenizer.bos_token_id] + ids[start:start + 64]])
        with torch.no_grad():
            logits = llama.model(input_ids=window).logits[0].float()
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], window[0, 1:], reduction="sum"))
        count += window.shape[1] - 1
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)




def test_perplexity_windows_come_from_the_documents_of_a_corpus(llama, tmp_path):
    from actstore.evaluation.perplexity import DEFAULT_PPL_DOCUMENTS, DEFAULT_PPL_WINDOW, perplexity_windows
    from actstore.inputs import corpus

    assert (DEFAULT_PPL_DOCUMENTS, DEFAULT_PPL_WINDOW) == (corpus.MIN_DOCUMENTS, corpus.DEFAULT_WINDOW)
    articles = "".join(f" = Article {i} = \n\n The quick brown fox number {i} jumps over the lazy dog "
                       f"{'again and again ' * 6}\n\n" for i in range(6))
    path = tmp_path / "wiki.txt"
    path.write_text(articles)
    windows = perplexity_windows(llama.tokenizer, path, 6 * 8, window=8, documents=6)
    assert windows.n_documents == 6 and sorted(set(windows.documents.tolist())) == list(range(6))
    assert windows.n_tokens == 48 and windows.window == 8
    # a plain file is one document: its windows all carry document 0
    plain = tmp_path / "plain.txt"
    plain.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    one = perplexity_windows(llama.tokenizer, plain, 32, window=8)
    assert one.n_documents == 1 and len(one.documents) == 4


def test_token_nll_equals_the_cut_logits_version_bit_for_bit():
    """The NLL over every row with the last position's target ignored is the NLL of the logits cut
    before the last position (the version that copied the logits), to the bit, padding included."""
    from actstore.evaluation.scoring import _token_nll

    torch.manual_seed(0)
    logits = torch.randn(3, 17, 1000) * 4
    targets = torch.randint(0, 1000, (3, 16))
    targets[1, -5:] = -100
    cut = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 1000), targets.reshape(-1),
                                            ignore_index=-100, reduction="none").view(3, 16)
    got = _token_nll(logits, targets)
    assert got.shape == (3, 16)
    assert torch.equal(got, cut)
    assert (got[1, -5:] == 0).all() and (got[1, :-5] > 0).all()


def test_head_rows_gives_those_logits_and_puts_the_head_back(llama):
    from actstore.evaluation.scoring import head_rows

    ids = torch.tensor([7, 3, 11])
    inputs = llama.tokenizer("a short text", return_tensors="pt")
    with torch.no_grad():
        full = llama.model(**inputs).logits
        head = llama.model.get_output_embeddings()
        with head_rows(llama.model, ids):
            cut = llama.model(**inputs).logits
            assert llama.model.get_output_embeddings() is not head
        assert llama.model.get_output_embeddings() is head
    assert cut.shape[-1] == 3
    torch.testing.assert_close(cut, full[..., ids], rtol=1e-5, atol=1e-5)

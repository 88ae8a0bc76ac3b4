"""A/B scores and perplexity against direct computations; the sweep end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import actstore
from actstore.errors import InputFormatError
from actstore.evaluate import ABItem, ab_scores, perplexity, read_ab_items, read_text_tokens
from actstore.models import load_model
from actstore.sweep import parse_ks, run_sweep, summarize

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
    with pytest.raises(InputFormatError, match="item 1: field 'positive' does not end with an answer"):
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


def test_sweep_end_to_end_writes_table_plots_and_resumes(tmp_path, llama, ab_file, pairs_file, shared_data,
                                                         monkeypatch):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, pairs_file, store, "1,2", progress=False)
    items = read_ab_items(ab_file)
    ppl_ids = read_text_tokens(llama.tokenizer, shared_data / "wikitext-2" / "test.txt", 100)
    out = tmp_path / "sweep"
    kwargs = dict(items=items, ppl_ids=ppl_ids, layers=[1, 2], ks=parse_ks("2,8,dense"), alphas=[1.0, 4.0],
                  behavior="toy", progress=False)

    import actstore.sweep as sweep_module

    calls = {"n": 0}
    original = sweep_module._measure

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # baseline + 4 configurations, then an interruption
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(sweep_module, "_measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(llama, store, out, **kwargs)
    assert len(pd.read_csv(out / "results.csv")) == 4
    monkeypatch.setattr(sweep_module, "_measure", original)
    measured = {"n": 0}

    def counting(*args, **kw):
        measured["n"] += 1
        return original(*args, **kw)

    monkeypatch.setattr(sweep_module, "_measure", counting)
    results = run_sweep(llama, store, out, **kwargs)
    assert measured["n"] == 12 - 4  # the baseline and the first four rows were kept
    assert len(results) == 12
    assert set(results["k"]) == {"2", "8", "dense"}
    for name in ("results.csv", "results.md", "summary.json", "retained_vs_k.png", "inflation_vs_k.png"):
        assert (out / name).stat().st_size > 0
    row = results[(results["layer"] == 2) & (results["k"] == "8") & (results["alpha"] == 4.0)].iloc[0]
    assert row["on_target_shift"] == pytest.approx(row["on_target"] - row["on_target_base"])
    assert row["ppl_inflation"] == pytest.approx(row["ppl"] / row["ppl_base"])
    # The row's numbers are what steering with that vector gives.
    vector = actstore.vector_from_stats(actstore.open_stats(store), 2, 8)
    with actstore.steer(llama, vector, 4.0):
        direct = float(np.mean(ab_scores(llama.model, llama.tokenizer, items)))
    assert row["on_target"] == pytest.approx(direct, rel=1e-9)


def test_summary_retained_fraction_and_paired_test():
    rows = []
    for layer, dense_shift in ((1, 0.2), (2, 0.4)):
        for k, frac, infl in (("8", 0.5, 1.01), ("dense", 1.0, 1.10)):
            rows.append({"behavior": "b", "layer": layer, "k": k, "alpha": 1.0, "method": "enr",
                         "on_target_shift": dense_shift * frac, "ppl_inflation": infl + 0.01 * layer})
    summary = summarize(pd.DataFrame(rows))
    assert summary["retained"]["8"]["mean_fraction"] == pytest.approx(0.5)
    assert summary["inflation"]["8"]["mean_dense"] == pytest.approx(1.115)
    assert summary["inflation"]["8"]["mean_sparse"] == pytest.approx(1.025)
    assert summary["best_layer"]["b"]["best_layer"] == {"8": 2, "dense": 2}


def test_cli_eval_and_steer(tmp_path, tiny_model_dirs, pairs_file, ab_file, shared_data):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    model, store = str(tiny_model_dirs["gpt2"]), str(tmp_path / "s.zarr")
    runner = CliRunner()
    assert runner.invoke(cli, ["capture", "-q", "--model", model, "--data", str(pairs_file), "--layers", "1",
                               "--store", store]).exit_code == 0
    result = runner.invoke(cli, ["eval", "-q", "--model", model, "--store", store, "--data-test", str(ab_file),
                                 "--layers", "1", "--k", "4,dense", "--alpha", "2", "--ppl-tokens", "64",
                                 "--text", str(shared_data / "wikitext-2" / "test.txt"),
                                 "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    assert "2 configurations" in result.output
    vec = tmp_path / "v.safetensors"
    assert runner.invoke(cli, ["enr", "--store", store, "--layer", "1", "--k", "4", "--out", str(vec)]).exit_code == 0
    result = runner.invoke(cli, ["steer", "--model", model, "--vector", str(vec), "--alpha", "8", "--prompt", "Hello",
                                 "--max-new-tokens", "4", "--compare"])
    assert result.exit_code == 0, result.output
    assert "--- unsteered:" in result.output and "--- steered (alpha=8; layer 1 k=4)" in result.output
    other = load_model(str(tiny_model_dirs["llama"]))
    del other
    result = runner.invoke(cli, ["steer", "--model", str(tiny_model_dirs["llama"]), "--vector", str(vec),
                                 "--prompt", "Hello"])
    assert result.exit_code == 1 and "pass --force" in result.output


def test_sweep_compares_plain_and_whitened(tmp_path, llama, ab_file, shared_data):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, shared_data / "bias-pairs" / "stereoset-religion" / "train.json", store, "2",
                              progress=False)
    ppl_ids = read_text_tokens(llama.tokenizer, shared_data / "wikitext-2" / "test.txt", 64)
    results = run_sweep(llama, store, tmp_path / "sweep", items=read_ab_items(ab_file), ppl_ids=ppl_ids, layers=[2],
                        ks=[4, None], alphas=[2.0], methods=("enr", "whitened"), progress=False)
    assert sorted(zip(results["method"], results["k"])) == [("enr", "4"), ("enr", "dense"),
                                                            ("whitened", "4"), ("whitened", "dense")]
    dense = results[results["k"] == "dense"].set_index("method")["on_target"]
    # The whitened dense vector is the plain one mapped through Sigma^1/2 Sigma^-1/2.
    assert dense["whitened"] == pytest.approx(dense["enr"], abs=1e-4)
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert set(summary["inflation"]) == {"enr k=4", "whitened k=4"}


def test_sweep_with_a_user_scorer_scores_steered_generations(tmp_path, llama, pairs_file, shared_data):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, pairs_file, store, "1", progress=False)
    seen = []

    def length_scorer(texts):
        seen.append(list(texts))
        return [len(t) for t in texts]

    ppl_ids = read_text_tokens(llama.tokenizer, shared_data / "wikitext-2" / "test.txt", 64)
    results = run_sweep(llama, store, tmp_path / "sweep", ppl_ids=ppl_ids, layers=[1], ks=[4], alphas=[50.0],
                        scorer=length_scorer, prompts=["Tell me a story", "Hello"], progress=False)
    assert len(seen) == 2 and all(len(batch) == 2 for batch in seen)  # baseline + one configuration
    row = results.iloc[0]
    assert row["on_target_base"] == pytest.approx(np.mean([len(t) for t in seen[0]]))
    assert row["on_target"] == pytest.approx(np.mean([len(t) for t in seen[1]]))


def test_normalized_sweep_adds_vectors_of_norm_alpha(tmp_path, llama, ab_file, pairs_file, shared_data):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, pairs_file, store, "1", progress=False)
    ppl_ids = read_text_tokens(llama.tokenizer, shared_data / "wikitext-2" / "test.txt", 64)
    results = run_sweep(llama, store, tmp_path / "sweep", items=read_ab_items(ab_file), ppl_ids=ppl_ids, layers=[1],
                        ks=[4, None], alphas=[3.0], normalize=True, progress=False)
    np.testing.assert_allclose(results["added_norm"], [3.0, 3.0], rtol=1e-6)
    assert results["vector_norm"].iloc[0] < results["vector_norm"].iloc[1]

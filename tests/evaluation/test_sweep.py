"""The sweep on tiny models: files, every figure recomputed from items.csv and windows.csv
by a written-out computation, A/B questions in both orders on log-odds, controls through the
same grid, documents as the perplexity's unit, the grid's checks, methods, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import actstore
from actstore.errors import ActstoreError
from actstore.evaluation.grid import DEFAULT_BUDGETS, Grid, residual_norm
from actstore.evaluation.intervals import bh_q_values, inflation_interval
from actstore.evaluation.protocols import ABLetters
from actstore.evaluation.replay import plain_forward
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.scoring import ABItem, ABScoring, PerplexityWindows, ab_scores
from actstore.evaluation.sweep import COLUMNS, run_sweep
from actstore.models.load import load_model

ITEMS = [ABItem(f"Question {i}: would you{' really' * (i % 3)} help?\n\nChoices:\n(A) Yes\n(B) No\n",
                "AB"[i % 2], "BA"[i % 2], f"item {i + 1}") for i in range(12)]
TEXT = ("The quick brown fox jumps over the lazy dog. Steering vectors add a direction to the residual "
        "stream at every token. I told my baby I loved her when she cried. ") * 6


def documents(llama, ppl_ids, n_documents: int = 4, window: int = 25) -> PerplexityWindows:
    """``ppl_ids`` as windows of ``window`` tokens, two per document."""
    tagged = [(i // 2, ppl_ids[i * window:(i + 1) * window]) for i in range(2 * n_documents)]
    return PerplexityWindows.from_tagged(llama.tokenizer, tagged, window)


def sweep(llama, store, out, ppl_ids, *, items=ITEMS, both_orders=True, **fields):
    """run_sweep with the tests' defaults: A/B ``items`` in both orders, perplexity on ``ppl_ids`` in 32-token
    windows, layers 1 and 2, k 4 and dense, fractions 0.5 and 2 of the residual norm; ``fields``: the
    :class:`SweepRequest`'s."""
    if fields.get("on_target") is None:
        fields["on_target"] = ABLetters(llama.tokenizer, items, both_orders=both_orders)
    if fields.get("perplexity") is None:
        fields["perplexity"] = PerplexityWindows(llama.tokenizer, ppl_ids, 32)
    defaults = {"layers": (1, 2), "ks": (4, None), "fractions": (0.5, 2.0), "behavior": "toy", "progress": False}
    return run_sweep(llama, SweepRequest(store=store, out=out, **{**defaults, **fields}))


def _config(frame, row):
    return frame[(frame["layer"] == row.layer) & (frame["method"] == row.method) & (frame["k"] == row.k)
                 & (frame["alpha"] == row.alpha)]


def _t(values):
    """Mean, 95% t interval and two-sided p of ``values`` (one per question), written out."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = scipy_stats.t.ppf(0.975, n - 1)
    p = 2 * scipy_stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    return mean, mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n), p


def _question_shifts(mine, base, matching) -> tuple[dict, dict, dict]:
    """Per question: its items' log-odds shifts, probability shifts and pushes toward the earlier letter."""
    effect, prob, push = {}, {}, {}
    for item, r in mine.iterrows():
        d = r["logodds"] - base.loc[item, "logodds"]
        effect.setdefault(r["question"], []).append(d)
        prob.setdefault(r["question"], []).append(r["score"] - base.loc[item, "score"])
        push.setdefault(r["question"], []).append(d / 2 if matching[item] == "A" else -d / 2)
    return effect, prob, push


def _assert_row_recomputes(row, items, windows, base, matching) -> float:
    """One results.csv row against items.csv and windows.csv, written out; returns its p-value."""
    effect, prob, push = _question_shifts(_config(items, row).set_index("item").loc[base.index], base, matching)
    mean, low, high, p = _t([sum(v) / 2 for v in effect.values()])  # mean over the two orders
    assert (row.shift_logodds, row.shift_logodds_ci_low, row.shift_logodds_ci_high) == pytest.approx(
        (mean, low, high), rel=1e-9, abs=1e-12)
    assert row.p_value == pytest.approx(p, rel=1e-6) and row.measure == "logodds"
    mean, low, high, _ = _t([sum(v) / 2 for v in prob.values()])
    assert (row.on_target_shift, row.on_target_ci_low, row.on_target_ci_high) == pytest.approx(
        (mean, low, high), rel=1e-9, abs=1e-12)
    mean, low, high, _ = _t([sum(v) for v in push.values()])  # half the difference between orders
    assert (row.letter_bias, row.letter_bias_ci_low, row.letter_bias_ci_high) == pytest.approx(
        (mean, low, high), rel=1e-9, abs=1e-12)
    assert row.detectable == (row.shift_logodds_ci_low > 0 or row.shift_logodds_ci_high < 0)
    assert row.established == bool(row.detectable and (row.on_target_ci_low > 0 or row.on_target_ci_high < 0)
                                   and (row.on_target_shift > 0) == (row.shift_logodds > 0))
    base_windows, win = windows[windows["method"] == "none"], _config(windows, row)
    ratio = math.exp((win["nll"].sum() - base_windows["nll"].sum()) / base_windows["tokens"].sum())
    assert row.ppl_inflation == pytest.approx(ratio, rel=1e-9)
    boot = inflation_interval(win["nll"].to_numpy(), base_windows["nll"].to_numpy(), win["tokens"].to_numpy(),
                              documents=win["document"].to_numpy())
    assert (row.ppl_inflation_ci_low, row.ppl_inflation_ci_high) == pytest.approx((boot.low, boot.high))
    assert row.added_norm == pytest.approx(row.alpha * row.residual_norm, rel=1e-6)
    assert row.n_questions == len(ITEMS) and row.n_items == 2 * len(ITEMS) and row.ppl_documents == 4
    return p


def _assert_report_tables(out) -> None:
    """frontier.csv, steerability.csv and results.md of the two-layer, two-k, two-alpha folder."""
    from actstore.evaluation.rows import FrontierRow, SteerabilityRow, columns

    frontier = pd.read_csv(out / "frontier.csv", dtype={"k": str})
    assert list(frontier.columns) == columns(FrontierRow) and len(frontier) == 4 * len(DEFAULT_BUDGETS)
    steerability = pd.read_csv(out / "steerability.csv", dtype={"k": str})
    assert list(steerability.columns) == columns(SteerabilityRow) and len(steerability) == 4
    assert (steerability["n_questions"] == len(ITEMS)).all() and (steerability["n_alphas"] == 2).all()
    report = (out / "results.md").read_text()
    assert "expected with no effect at all" in report and "Per-question steerability" in report


def test_both_orders_log_odds_effect_and_its_interval_recompute_from_items_and_windows(tmp_path, llama, store,
                                                                                     ppl_ids):
    out = tmp_path / "sweep"
    results = sweep(llama, store, out, ppl_ids, perplexity=documents(llama, ppl_ids), fractions=(2.0, 8.0))
    assert list(results.columns) == COLUMNS and len(results) == 2 * 2 * 2
    for name in ("results.csv", "items.csv", "windows.csv", "frontier.csv", "contrasts.csv", "steerability.csv",
                 "results.md", "frontier_toy.png", "baseline.json"):
        assert (out / name).stat().st_size > 0, name
    items = pd.read_csv(out / "items.csv", dtype={"k": str, "item": str})
    windows = pd.read_csv(out / "windows.csv", dtype={"k": str})
    assert list(items.columns) == ["layer", "k", "alpha", "method", "item", "question", "order", "question_text",
                                   "score", "logodds"]
    # each item's text on the unsteered rows (checkable against the training set), empty on steered rows
    assert items.loc[items["method"] == "none", "question_text"].notna().all()
    assert items.loc[items["method"] != "none", "question_text"].isna().all()
    assert list(windows.columns) == ["layer", "k", "alpha", "method", "window", "document", "nll", "tokens"]
    base = items[items["method"] == "none"].set_index("item")
    assert len(base) == 2 * len(ITEMS) and sorted(base["order"].unique()) == [0, 1]
    np.testing.assert_allclose(base["score"], 1 / (1 + np.exp(-base["logodds"])), rtol=1e-12)
    # The letter of each item's matching answer: as written, then swapped.
    matching = {**{i.where: i.matching for i in ITEMS}, **{f"{i.where} swapped": i.other for i in ITEMS}}
    base_windows = windows[windows["method"] == "none"]
    assert base_windows["document"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    p_values = [_assert_row_recomputes(row, items, windows, base, matching) for row in results.itertuples()]
    np.testing.assert_allclose(results["q_value"], bh_q_values(p_values), rtol=1e-12)
    _assert_report_tables(out)
    # A row's numbers are what steering with that vector gives on the whole model, twins included.
    row = results[(results["layer"] == 2) & (results["k"] == "4") & (results["alpha"] == 8.0)].iloc[0]
    vector = actstore.vectors.build.vector_from_stats(actstore.open_stats(store), 2, 4)
    protocol = ABLetters(llama.tokenizer, ITEMS)
    with actstore.steer(llama, vector, row["scale"]):
        direct = ABScoring(llama.tokenizer, protocol.items).logodds(plain_forward(llama.model))
    mine = items[(items["layer"] == 2) & (items["k"] == "4") & (items["alpha"] == 8.0)]
    np.testing.assert_allclose(mine["logodds"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    assert abs(row["letter_bias"]) > 1e-3  # the tiny model's vectors do push a letter


def test_scored_as_written_only_with_both_orders_off(tmp_path, llama, store, ppl_ids):
    results = sweep(llama, store, tmp_path / "one", ppl_ids, layers=[2], ks=[4], alphas=[8.0], both_orders=False)
    items = pd.read_csv(tmp_path / "one" / "items.csv", dtype={"k": str})
    assert set(items["order"]) == {0} and len(items) == 2 * len(ITEMS)
    assert results["n_questions"].iloc[0] == len(ITEMS) and math.isnan(results["letter_bias"].iloc[0])
    both = sweep(llama, store, tmp_path / "two", ppl_ids, layers=[2], ks=[4], alphas=[8.0])
    # Only the as-written items of the both-orders folder: the same numbers as the one-order folder.
    two = pd.read_csv(tmp_path / "two" / "items.csv", dtype={"k": str})
    np.testing.assert_allclose(two[two["order"] == 0]["logodds"], items["logodds"], rtol=1e-6, atol=1e-9)
    assert both["shift_logodds"].iloc[0] != pytest.approx(results["shift_logodds"].iloc[0], rel=1e-6)


def test_random_controls_go_through_the_same_grid_at_the_same_alphas(tmp_path, llama, store, ppl_ids):
    from actstore.vectors.controls import random_control

    results = sweep(llama, store, tmp_path / "c", ppl_ids, layers=[2], ks=[4, None], fractions=(2.0, 8.0),
                    methods=("enr", "random"), control_seeds=(0, 1))
    assert sorted(set(zip(results["method"], results["k"]))) == sorted(
        (m, k) for m in ("enr", "random:0", "random:1") for k in ("4", "dense"))
    # the same added norms: alphas are fractions of the residual norm, whatever the vector
    for alpha, rows in results.groupby("alpha"):
        np.testing.assert_allclose(rows["added_norm"], alpha * rows["residual_norm"], rtol=1e-6)
    # each control row steers with the control the library builds from the ENR vector, with its seed
    row = results[(results["method"] == "random:1") & (results["k"] == "4") & (results["alpha"] == 8.0)].iloc[0]
    control = random_control(actstore.vectors.build.vector_from_stats(actstore.open_stats(store), 2, 4), 1)
    protocol = ABLetters(llama.tokenizer, ITEMS)
    with actstore.steer(llama, control, row["scale"]):
        direct = ABScoring(llama.tokenizer, protocol.items).logodds(plain_forward(llama.model))
    items = pd.read_csv(tmp_path / "c" / "items.csv", dtype={"k": str})
    mine = items[(items["method"] == "random:1") & (items["k"] == "4") & (items["alpha"] == 8.0)]
    np.testing.assert_allclose(mine["logodds"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    assert results[results["method"] == "random:0"]["shift_logodds"].tolist() != pytest.approx(
        results[results["method"] == "random:1"]["shift_logodds"].tolist())
    frontier = pd.read_csv(tmp_path / "c" / "frontier.csv", dtype={"k": str})
    assert {"random:0", "random:1", "enr"} <= set(frontier["method"])  # the same frontier
    contrasts = pd.read_csv(tmp_path / "c" / "contrasts.csv", dtype={"k": str})
    assert not contrasts["method"].str.startswith("random").any()  # controls are not primary contrasts
    report = (tmp_path / "c" / "results.md").read_text()
    assert "Controls (random directions" in report and "random-control seeds 0, 1" in report
    # another seed extends the same folder (the grid is not a setting of the folder)
    more = sweep(llama, store, tmp_path / "c", ppl_ids, layers=[2], ks=[4], fractions=(2.0, 8.0),
                 methods=("random",), control_seeds=(2,))
    assert len(more) == len(results) + 2 and "random:2" in set(more["method"])


def test_the_letter_control_goes_through_the_same_grid(tmp_path, llama, ppl_ids):
    from actstore.vectors.controls import letter_control

    train = tmp_path / "ab-train.json"
    train.write_text(json.dumps([{"positive": i.prompt + f"({i.matching})", "negative": i.prompt + f"({i.other})"}
                                 for i in ITEMS]))
    store = tmp_path / "ab.zarr"
    actstore.capture_to_store(llama, train, store, layers="2", progress=False)  # with its option-swapped twins
    results = sweep(llama, store, tmp_path / "l", ppl_ids, layers=[2], ks=[4, None], fractions=(2.0, 8.0),
                    methods=("enr", "letter"))
    assert sorted(set(zip(results["method"], results["k"]))) == [("enr", "4"), ("enr", "dense"), ("letter", "4"),
                                                                  ("letter", "dense")]
    row = results[(results["method"] == "letter") & (results["k"] == "4") & (results["alpha"] == 8.0)].iloc[0]
    control = letter_control(store, 2, train, 4)
    assert row["vector_norm"] == pytest.approx(float(np.linalg.norm(control.vector)), rel=1e-6)
    protocol = ABLetters(llama.tokenizer, ITEMS)
    with actstore.steer(llama, control, row["scale"]):
        direct = ABScoring(llama.tokenizer, protocol.items).logodds(plain_forward(llama.model))
    items = pd.read_csv(tmp_path / "l" / "items.csv", dtype={"k": str})
    mine = items[(items["method"] == "letter") & (items["k"] == "4") & (items["alpha"] == 8.0)]
    np.testing.assert_allclose(mine["logodds"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    # the letter direction moves the letter, which both orders cancel in the shift and show in the bias
    assert abs(row["letter_bias"]) > abs(row["shift_logodds"])
    frontier = pd.read_csv(tmp_path / "l" / "frontier.csv", dtype={"k": str})
    assert "letter" in set(frontier["method"])
    with pytest.raises(ActstoreError, match="option-swapped twins"):
        sweep(llama, tmp_path / "plain.zarr" if actstore.capture_to_store(
            llama, train, tmp_path / "plain.zarr", layers="2", swap_options=False, progress=False) else None,
            tmp_path / "x", ppl_ids, layers=[2], ks=[4], methods=("letter",))


def test_grid_is_validated_before_any_measurement(store):
    with pytest.raises(ActstoreError, match="budgets"):
        Grid((1,), (4,), (0.1,), budgets=(1.0,))
    with pytest.raises(ActstoreError, match="unknown"):
        Grid((1,), (4,), (0.1,), methods=("svm",))
    with pytest.raises(ActstoreError, match="must be > 0"):
        Grid((1,), (4,), (-0.1,), alpha_mode="fraction")
    with pytest.raises(ActstoreError, match="control seeds"):
        Grid((1,), (4,), (0.1,), methods=("random",), control_seeds=(-1,))
    group = actstore.StoreGroup.open(store)  # layers 1 and 2, hidden size 32
    with pytest.raises(ActstoreError, match=r"layers \[5\] are not in .*s.zarr'; it has layers \[1, 2\]"):
        Grid((1, 5), (4,), (0.1,)).check_store(group)
    with pytest.raises(ActstoreError, match=r"k \[64\]: larger than the hidden size of .*s.zarr' \(32\)"):
        Grid((1,), (32, 64), (0.1,)).check_store(group)
    Grid((1, 2), (32, None), (0.1,)).check_store(group)
    labels = Grid((1,), (None,), (0.1,), methods=("enr", "random", "letter"), control_seeds=(3, 4)).vector_methods()
    assert labels == ["enr", "random:3", "random:4", "letter"]


def test_residual_norm_is_the_rms_norm_of_the_captured_activations(store):
    stats = actstore.open_stats(store)
    acts = actstore.open_store(store)["acts"].sel(layer=2).values.astype(np.float64)
    assert residual_norm(stats, 2) == pytest.approx(math.sqrt((acts ** 2).sum(1).mean()), rel=1e-9)


def test_normalized_alphas_are_added_norms(tmp_path, llama, store, ppl_ids):
    results = sweep(llama, store, tmp_path / "n", ppl_ids, layers=[1], ks=[4, None], alphas=[3.0], normalize=True)
    np.testing.assert_allclose(results["added_norm"], [3.0, 3.0], rtol=1e-6)
    assert results["vector_norm"].iloc[0] < results["vector_norm"].iloc[1]


def test_sweep_compares_plain_and_whitened(tmp_path, llama, store, ppl_ids):
    results = sweep(llama, store, tmp_path / "w", ppl_ids, layers=[2], ks=[4, None], alphas=[2.0],
                    methods=("enr", "whitened"))
    # The whitened dense vector is the plain one: measured once.
    assert sorted(zip(results["method"], results["k"])) == [("enr", "4"), ("enr", "dense"), ("whitened", "4")]
    whitened_only = sweep(llama, store, tmp_path / "w2", ppl_ids, layers=[2], ks=[None], alphas=[2.0],
                          methods=("whitened",))
    assert whitened_only["on_target"].iloc[0] == pytest.approx(
        results[results["k"] == "dense"]["on_target"].iloc[0], abs=1e-4)
    assert results[results["method"] == "whitened"]["on_target"].iloc[0] != pytest.approx(
        results[(results["method"] == "enr") & (results["k"] == "4")]["on_target"].iloc[0], abs=1e-9)


def test_sweep_compares_every_method_on_one_frontier(tmp_path, llama, store, ppl_ids):
    from actstore.vectors.build import build_vector

    results = sweep(llama, store, tmp_path / "m", ppl_ids, layers=[2], ks=[4, None], alphas=[2.0],
                    methods=("enr", "pca", "probe", "lda"))
    assert sorted(zip(results["method"], results["k"])) == sorted(
        (m, k) for m in ("enr", "pca", "probe", "lda") for k in ("4", "dense"))
    # each row steers with the vector the library builds (scale 2: the added norm is 2 |v|)
    for method in ("pca", "probe", "lda"):
        row = results[(results["method"] == method) & (results["k"] == "dense")].iloc[0]
        assert row["vector_norm"] == pytest.approx(float(np.linalg.norm(build_vector(store, 2, method, None).vector)),
                                                   rel=1e-5)
    assert results["on_target"].nunique() == len(results)  # eight different vectors, eight measurements
    table = pd.read_csv(tmp_path / "m" / "frontier.csv", dtype={"k": str})
    assert set(table["method"]) == {"enr", "pca", "probe", "lda"}


def test_free_text_sweep_and_generation_sweep(tmp_path, llama, store, pairs_file, ppl_ids):
    from actstore.evaluation.protocols import GeneratedText, protocol_for_file

    results = sweep(llama, store, tmp_path / "free", ppl_ids, layers=[2], ks=[4],
                    on_target=protocol_for_file(llama.tokenizer, pairs_file))
    assert set(results["protocol"]) == {"preference"} and len(results) == 2
    assert set(results["measure"]) == {"score"} and results["shift_logodds"].isna().all()
    assert (results["detectable"] == ((results["on_target_ci_low"] > 0) | (results["on_target_ci_high"] < 0))).all()
    generation = GeneratedText(["Tell me a story", "Hello there"], "vader", max_new_tokens=6)
    results = sweep(llama, store, tmp_path / "gen", ppl_ids, layers=[2], ks=[4], on_target=generation)
    assert set(results["protocol"]) == {"generation:vader_compound"}
    assert results["distinct_2_shift"].notna().all() or results["distinct_2_ci_low"].isna().all()
    lines = [json.loads(line) for line in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 and {line["method"] for line in lines} == {"none", "enr"}


def test_user_scorer_scores_the_generations(tmp_path, llama, store, ppl_ids):
    from actstore.evaluation.protocols import GeneratedText

    seen = []

    def length_scorer(texts):
        seen.append(list(texts))
        return [len(t) for t in texts]

    results = sweep(llama, store, tmp_path / "s", ppl_ids, layers=[1], ks=[4], alphas=[50.0],
                    on_target=GeneratedText(["Tell me a story", "Hello"], length_scorer))
    assert len(seen) == 2 and all(len(batch) == 2 for batch in seen)  # baseline + one configuration
    row = results.iloc[0]
    assert row["on_target_base"] == pytest.approx(np.mean([len(t) for t in seen[0]]))
    assert row["on_target"] == pytest.approx(np.mean([len(t) for t in seen[1]]))


def test_sweep_measures_each_vectors_held_out_separation_once(tmp_path, llama, store, ppl_ids, pairs_file):
    from actstore.evaluation.monitor import project, separation
    from actstore.vectors.build import build_vector

    heldout = tmp_path / "heldout.zarr"
    actstore.capture_to_store(llama, pairs_file, heldout, layers="1,2", progress=False)
    out = tmp_path / "sep"
    sweep(llama, store, out, ppl_ids, methods=("enr", "probe"), heldout_store=heldout)
    table = pd.read_csv(out / "separation.csv", dtype={"k": str})
    assert len(table) == 2 * 2 * 2  # layer x method x k, once whatever the alphas
    row = table[(table["layer"] == 2) & (table["method"] == "probe") & (table["k"] == "4")].iloc[0]
    direct = separation(project(heldout, build_vector(store, 2, "probe", 4)))
    assert row["auroc"] == pytest.approx(direct.auroc.estimate)
    assert row["d_ci_low"] == pytest.approx(direct.cohens_d.low)
    before = (out / "separation.csv").read_text()
    sweep(llama, store, out, ppl_ids, methods=("enr", "probe"), heldout_store=heldout)  # resumed: nothing new
    assert (out / "separation.csv").read_text() == before
    with pytest.raises(ActstoreError, match=r"layers \[2\] are not in"):
        small = tmp_path / "small.zarr"
        actstore.capture_to_store(llama, pairs_file, small, layers="1", progress=False)
        sweep(llama, store, tmp_path / "x", ppl_ids, heldout_store=small)


def test_a_store_of_other_weights_is_refused(tmp_path, tiny_model_dirs, store, ppl_ids, llama):
    other = load_model(str(tiny_model_dirs["gpt2"]))
    with pytest.raises(ActstoreError, match="pass force=True"):
        sweep(other, store, tmp_path / "x", ppl_ids, layers=[1], ks=[4], on_target=ABLetters(other.tokenizer, ITEMS))


def test_the_store_is_opened_once_and_checked_against_the_model_once(tmp_path, llama, store, ppl_ids, monkeypatch):
    import actstore.stores.group as group_module
    from actstore.stores import StoreGroup

    calls, opened = [], []
    original, original_open = group_module.check_store_model, group_module.open_root
    monkeypatch.setattr(group_module, "check_store_model", lambda *a, **k: calls.append(a) or original(*a, **k))
    monkeypatch.setattr(group_module, "open_root", lambda *a, **k: opened.append(a) or original_open(*a, **k))
    source = StoreGroup.open(store)
    source.check_model(llama)
    sweep(llama, source, tmp_path / "once", ppl_ids, layers=[1], ks=[4], alphas=[1.0])
    assert len(calls) == 1 and len(opened) == 1
    sweep(llama, store, tmp_path / "path", ppl_ids, layers=[1], ks=[4], alphas=[1.0])  # a path: opened, checked
    assert len(calls) == 2 and len(opened) == 2


def test_a_forced_check_does_not_let_an_unforced_one_through(tiny_model_dirs, store, llama):
    import warnings

    from actstore.stores import StoreGroup

    other = load_model(str(tiny_model_dirs["gpt2"]))
    source = StoreGroup.open(store)
    with pytest.warns(UserWarning, match="was captured from"):
        source.check_model(other, force=True)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        source.check_model(other, force=True)  # once per handle: no second warning
    assert again == []
    with pytest.raises(ActstoreError, match="pass force=True"):
        source.check_model(other)
    source.check_model(llama)


def test_sweep_steers_only_the_chosen_positions(tmp_path, llama, store, ppl_ids):
    results = sweep(llama, store, tmp_path / "p", ppl_ids, layers=[2], ks=[4], alphas=[3.0], positions="from:5",
                    both_orders=False)
    every = sweep(llama, store, tmp_path / "a", ppl_ids, layers=[2], ks=[4], alphas=[3.0], both_orders=False)
    vector = actstore.vectors.build.vector_from_stats(actstore.open_stats(store), 2, 4)
    with actstore.steer(llama, vector, 3.0, positions="from:5"):
        direct = ab_scores(llama.model, llama.tokenizer, ITEMS)
    assert results["on_target"].iloc[0] == pytest.approx(direct.mean(), rel=1e-6)
    assert results["on_target"].iloc[0] != pytest.approx(every["on_target"].iloc[0], rel=1e-6)
    assert json.loads((tmp_path / "p" / "baseline.json").read_text())["settings"]["positions"] == "from:5"
    with pytest.raises(ActstoreError, match="per-example mask"):
        sweep(llama, store, tmp_path / "m", ppl_ids, layers=[2], ks=[4], positions=np.ones((2, 3), bool))


def _cli_world(tmp_path, tiny_model_dirs, pairs_file) -> tuple:
    """A CliRunner, a gpt2 store at layer 1, and the arguments of `eval` on an A/B test file (out: ``sweep``)."""
    from click.testing import CliRunner

    from actstore.cli.main import cli

    model, store = str(tiny_model_dirs["gpt2"]), str(tmp_path / "s.zarr")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps([{"positive": i.prompt + f"({i.matching})", "negative": i.prompt + f"({i.other})"}
                              for i in ITEMS]))
    runner = CliRunner()
    assert runner.invoke(cli, ["capture", "-q", "--model", model, "--data", str(pairs_file), "--layers", "1",
                               "--store", store]).exit_code == 0
    common = ["eval", "-q", "--model", model, "--store", store, "--data-test", str(ab), "--text", str(text),
              "--ppl-tokens", "64", "--ppl-window", "16", "--out", str(tmp_path / "sweep")]
    return (lambda args: runner.invoke(cli, args)), common


def test_cli_eval_defaults(tmp_path, tiny_model_dirs, pairs_file):
    invoke, common = _cli_world(tmp_path, tiny_model_dirs, pairs_file)
    result = invoke([*common, "--layers", "1", "--k", "4,dense", "--fractions", "0.5", "--contrasts",
                     "mine=1:enr:4-1:enr:dense@1.05", "--device", "cpu", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "2 configurations" in result.output and "expected with no effect at all" in result.output
    assert "at q < 0.05" in result.output
    assert (tmp_path / "sweep" / "frontier.csv").exists()
    contrasts = pd.read_csv(tmp_path / "sweep" / "contrasts.csv", dtype={"k": str})
    assert contrasts["contrast"].tolist() == ["mine"]  # the pre-specified family, nothing else
    items = pd.read_csv(tmp_path / "sweep" / "items.csv", dtype={"k": str})
    assert len(items) == 3 * 2 * len(ITEMS)  # baseline + two configurations, both orders
    # by default the --data-test texts are captured in memory, each A/B pair with its option-swapped twin,
    # and every vector's separation is measured
    separation = pd.read_csv(tmp_path / "sweep" / "separation.csv", dtype={"k": str})
    assert sorted(separation["k"]) == ["4", "dense"] and separation["n_pos"].tolist() == [2 * len(ITEMS)] * 2
    assert separation["paired"].all()
    assert "Separation of held-out pairs" in (tmp_path / "sweep" / "results.md").read_text()
    result = invoke([*common[:-2], "--out", str(tmp_path / "one"), "--layers", "1", "--k", "4", "--fractions", "0.5",
                     "--no-swap-options", "--no-separation"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "one" / "items.csv")["order"]) == {0}
    assert not (tmp_path / "one" / "separation.csv").exists()


def test_cli_eval_refusals(tmp_path, tiny_model_dirs, pairs_file):
    invoke, common = _cli_world(tmp_path, tiny_model_dirs, pairs_file)
    text = common[common.index("--text") + 1]
    for args, message in ((["--layers", "3"], "layers [3] are not in"),
                          (["--layers", "1", "--budgets", "0.9"], "budgets"),
                          (["--layers", "1", "--k", "64"], "larger than the hidden size"),
                          (["--layers", "1", "--methods", "svm"], "unknown"),
                          (["--layers", "1", "--normalize"], "--normalize needs --alpha"),
                          (["--layers", "1", "--k", "4", "--text", str(tmp_path / "nope.txt")], "nope.txt"),
                          (["--layers", "1", "--k", "4", "--contrasts", "k4 minus dense"], "NAME=LAYER"),
                          (["--layers", "1", "--prompts", text], "exactly one of --data-test")):
        result = invoke([*common, *args])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, args
    # lists are click types: a bad value is refused before anything is read, naming its flag
    for args, flag in ((["--k", "0,8"], "'--k'"), (["--k", "4,x"], "'--k'"), (["--fractions", "a"], "'--fractions'"),
                       (["--alpha", "1,nan"], "'--alpha'"), (["--budgets", ""], "'--budgets'"),
                       (["--control-seeds", "-1"], "'--control-seeds'"), (["--dtype", "float8"], "'--dtype'")):
        result = invoke([*common, "--layers", "1", *args])
        assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output, args
    result = invoke([*common, "--layers", "1", "--device-map", "auto", "--device", "meta"])
    assert result.exit_code == 1 and "--device" in result.output and "--device-map" in result.output
    for name, content, message in (("labeled.json", [{"text": "a b c", "label": "x"}, {"text": "d e f", "label": "y"}],
                                    "not labeled texts"), ("broken.json", None, "broken.json")):
        path = tmp_path / name
        path.write_text(json.dumps(content) if content is not None else '[{"positive": "a",')
        result = invoke([*common[:-2], "--out", str(tmp_path / path.stem), "--layers", "1", "--k", "4", "--data-test",
                         str(path)])
        assert result.exit_code == 1 and name in result.output and message in result.output, result.output
        assert "Traceback" not in result.output


def test_cli_eval_finds_the_default_corpus(tmp_path, tiny_model_dirs, pairs_file, monkeypatch):
    """Without --text: the corpus the documented rule finds ($ACTSTORE_TEXT first), else an error naming --text."""
    invoke, common = _cli_world(tmp_path, tiny_model_dirs, pairs_file)
    text = common[common.index("--text") + 1]
    no_text = [a for i, a in enumerate(common) if a != "--text" and common[i - 1] != "--text"]
    monkeypatch.setenv("ACTSTORE_TEXT", str(tmp_path / "missing.txt"))
    result = invoke([*no_text, "--layers", "1", "--k", "4"])
    assert result.exit_code == 1 and "--text" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("ACTSTORE_TEXT", text)
    result = invoke([*no_text[:-1], str(tmp_path / "default"), "--layers", "1", "--k", "4", "--fractions", "0.5",
                     "--no-separation"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "default" / "baseline.json").read_text())["settings"]["ppl_tokens"] == 64


def test_a_second_run_on_a_folder_being_written_is_refused_and_adds_nothing(tmp_path, llama, store, ppl_ids):
    from actstore.evaluation.sweep import folder_lock

    out = tmp_path / "busy"
    first = sweep(llama, store, out, ppl_ids, layers=[2], ks=[4], alphas=[8.0], both_orders=False)
    before = {name: (out / name).read_bytes() for name in ("results.csv", "items.csv", "windows.csv")}
    with folder_lock(out):  # another run holds the folder
        with pytest.raises(ActstoreError, match=r"is being written by pid \d+ \(another `actstore eval`"):
            sweep(llama, store, out, ppl_ids, layers=[1, 2], ks=[4], alphas=[8.0], both_orders=False)
    assert {name: (out / name).read_bytes() for name in before} == before
    again = sweep(llama, store, out, ppl_ids, layers=[2], ks=[4], alphas=[8.0], both_orders=False)  # released
    assert len(again) == len(first) == 1


def _damage_rows(path, config_index: int, how: str) -> None:
    """Damage the rows of the ``config_index``-th steered configuration of a sweep table
    (0 = the first after the baseline): cut the file inside them, or put a byte that is not
    UTF-8 into one of them."""
    lines = path.read_bytes().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    frame = pd.read_csv(path, dtype={"k": str})
    keys = list(dict.fromkeys(zip(frame["method"], frame["layer"].fillna(-1), frame["k"], frame["alpha"])))
    target = keys[1 + config_index]
    positions = [i for i, key in enumerate(zip(frame["method"], frame["layer"].fillna(-1), frame["k"],
                                               frame["alpha"])) if key == target]
    if how == "cut":
        path.write_bytes(header + b"".join(rows[: positions[len(positions) // 2]]))
    else:
        rows[positions[0]] = rows[positions[0]].replace(b",", b"\xff,", 1)
        path.write_bytes(header + b"".join(rows))


@pytest.mark.parametrize("table, config, how", [("windows.csv", 1, "cut"), ("items.csv", 0, "bytes"),
                                                ("items.csv", -1, "baseline")])
def test_damage_in_a_sweep_folder_costs_only_the_configurations_it_touches(tmp_path, llama, store, ppl_ids,
                                                                          table, config, how):
    out = tmp_path / "sweep"
    kwargs = dict(layers=[2], ks=[4], alphas=[4.0, 8.0], both_orders=False)
    clean = sweep(llama, store, out, ppl_ids, **kwargs)
    shifts = dict(zip(clean["alpha"], clean["on_target_shift"]))
    if how == "baseline":  # the unsteered rows lost: measured again, every configuration kept
        frame = pd.read_csv(out / table, dtype={"k": str})
        frame[frame["method"] != "none"].to_csv(out / table, index=False)
    else:
        _damage_rows(out / table, config, how)
    resumed = sweep(llama, store, out, ppl_ids, **kwargs)
    assert sorted(resumed["alpha"]) == sorted(shifts)  # measured again gives the same figures
    for alpha, shift in zip(resumed["alpha"], resumed["on_target_shift"]):
        assert shift == pytest.approx(shifts[alpha], rel=1e-9, abs=1e-12)
    order = list(resumed["alpha"])
    if how != "baseline":  # the damaged configuration was measured again: its row now comes last
        assert order[-1] == kwargs["alphas"][config] and len(order) == 2
    else:
        assert order == [4.0, 8.0]
    for name in ("items.csv", "windows.csv"):  # every table reads cleanly again, one set of rows each
        frame = pd.read_csv(out / name, dtype={"k": str})
        assert frame.groupby(["method", "alpha"]).size().nunique() == 1


@pytest.mark.parametrize("content", ['{"settings": {"protocol": "ab', "[1, 2]"])
def test_a_damaged_baseline_json_is_named_and_nothing_is_overwritten(tmp_path, llama, store, ppl_ids, content):
    out = tmp_path / "sweep"
    sweep(llama, store, out, ppl_ids, layers=[2], ks=[4], alphas=[4.0], both_orders=False)
    (out / "baseline.json").write_text(content)
    before = (out / "results.csv").read_bytes()
    with pytest.raises(ActstoreError, match=r"baseline.json' is damaged: .*choose another --out"):
        sweep(llama, store, out, ppl_ids, layers=[2], ks=[4], alphas=[4.0], both_orders=False)
    assert (out / "results.csv").read_bytes() == before

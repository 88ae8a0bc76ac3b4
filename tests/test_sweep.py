"""The sweep on tiny models: files, intervals recomputed from items.csv and windows.csv,
replay equal to the whole model, resume, protocols, the frontier's budget rule, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import actstore
from actstore.errors import ActstoreError
from actstore.evaluate import ABItem, PreferencePair, PreferenceScoring, ab_scores, read_preference_pairs
from actstore.intervals import inflation_interval, paired_mean_interval
from actstore.ledger import Ledger
from actstore.models import load_model
from actstore.protocols import FreeTextPreference, GeneratedText, distinct_n, protocol_for_file, repeated_ngram_rate
from actstore.replay import PrefixReplay, plain_forward
from actstore.report import frontier, matched_effect
from actstore.sweep import COLUMNS, Grid, residual_norm, run_sweep

ITEMS = [ABItem(f"Question {i}: would you{' really' * (i % 3)} help?\n\nChoices:\n(A) Yes\n(B) No\n",
                "AB"[i % 2], "BA"[i % 2], f"item {i + 1}") for i in range(12)]
TEXT = ("The quick brown fox jumps over the lazy dog. Steering vectors add a direction to the residual "
        "stream at every token. I told my baby I loved her when she cried. ") * 6


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return load_model(str(tiny_model_dirs["llama"]))


@pytest.fixture
def store(tmp_path, llama, pairs_file):
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, pairs_file, path, "1,2", progress=False)
    return path


@pytest.fixture
def ppl_ids(llama):
    return llama.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:200]


def _sweep(llama, store, out, ppl_ids, **kw):
    args = dict(items=ITEMS, ppl_ids=ppl_ids, layers=[1, 2], ks=[4, None], alphas=None, fractions=(0.5, 2.0),
                ppl_window=32, behavior="toy", progress=False)
    args.update(kw)
    return run_sweep(llama, store, out, **args)


def test_sweep_writes_every_file_and_each_figure_recomputes_from_items_and_windows(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    results = _sweep(llama, store, out, ppl_ids)
    assert list(results.columns) == COLUMNS and len(results) == 2 * 2 * 2
    for name in ("results.csv", "items.csv", "windows.csv", "frontier.csv", "matched_effect.csv", "results.md",
                 "frontier_toy.png", "baseline.json"):
        assert (out / name).stat().st_size > 0, name
    items = pd.read_csv(out / "items.csv", dtype={"k": str})
    windows = pd.read_csv(out / "windows.csv", dtype={"k": str})
    assert list(items.columns) == ["layer", "k", "alpha", "method", "item", "score"]
    base = items[items["method"] == "none"]
    assert (base["alpha"] == 0).all() and len(base) == len(ITEMS)
    base_windows = windows[windows["method"] == "none"]
    for row in results.itertuples():
        mine = items[(items["layer"] == row.layer) & (items["k"] == row.k) & (items["alpha"] == row.alpha)]
        diffs = mine["score"].to_numpy() - base["score"].to_numpy()
        t = paired_mean_interval(mine["score"].to_numpy(), base["score"].to_numpy())
        assert row.on_target_shift == pytest.approx(diffs.mean(), abs=1e-12)
        assert (row.on_target_ci_low, row.on_target_ci_high) == pytest.approx((t.low, t.high), abs=1e-12)
        assert row.detectable == t.excludes(0.0)
        win = windows[(windows["layer"] == row.layer) & (windows["k"] == row.k) & (windows["alpha"] == row.alpha)]
        ratio = math.exp((win["nll"].sum() - base_windows["nll"].sum()) / base_windows["tokens"].sum())
        assert row.ppl_inflation == pytest.approx(ratio, rel=1e-9)
        boot = inflation_interval(win["nll"].to_numpy(), base_windows["nll"].to_numpy(), win["tokens"].to_numpy())
        assert (row.ppl_inflation_ci_low, row.ppl_inflation_ci_high) == pytest.approx((boot.low, boot.high))
        # Fractions of the layer's residual norm are the added norm.
        assert row.added_norm == pytest.approx(row.alpha * row.residual_norm, rel=1e-6)
    # A row's numbers are what steering with that vector gives on the whole model.
    row = results[(results["layer"] == 2) & (results["k"] == "4") & (results["alpha"] == 2.0)].iloc[0]
    vector = actstore.vector_from_stats(actstore.open_stats(store), 2, 4)
    with actstore.steer(llama, vector, row["scale"]):
        direct = ab_scores(llama.model, llama.tokenizer, ITEMS)
    mine = items[(items["layer"] == 2) & (items["k"] == "4") & (items["alpha"] == 2.0)]["score"].to_numpy()
    np.testing.assert_allclose(mine, direct, rtol=1e-5)


def test_replay_gives_the_numbers_of_the_whole_model(tmp_path, llama, store, ppl_ids):
    replayed = _sweep(llama, store, tmp_path / "a", ppl_ids, layers=[1], ks=[4])
    whole = _sweep(llama, store, tmp_path / "b", ppl_ids, layers=[1], ks=[4], replay=False)
    for column in ("on_target", "on_target_shift", "ppl", "ppl_inflation"):
        np.testing.assert_allclose(replayed[column], whole[column], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text", "gpt_neox", "qwen2"])
def test_prefix_replay_equals_a_full_steered_forward(tiny_model_dirs, arch):
    from actstore.evaluate import ABScoring

    loaded = load_model(str(tiny_model_dirs[arch]))
    scoring = ABScoring(loaded.tokenizer, ITEMS, batch_size=5)
    vector = actstore.SteeringVector(np.random.default_rng(0).normal(size=32).astype(np.float32), np.arange(32),
                                     np.ones(32, np.float32), 2, {})
    with actstore.steer(loaded, vector, 3.0):
        full = scoring.scores(plain_forward(loaded.model))
    replay = PrefixReplay(loaded, 2, dict(enumerate(scoring.batches)))
    with replay.active(), actstore.steer(loaded, vector, 3.0):
        replayed = scoring.scores(replay)
    np.testing.assert_allclose(replayed, full, rtol=1e-6)
    unsteered = scoring.scores(plain_forward(loaded.model))
    assert np.abs(full - unsteered).max() > 1e-4  # the steering did something
    assert all(not type(b).__name__.startswith("_") for b in loaded.blocks)  # blocks restored


def test_interrupted_sweep_resumes_and_drops_a_half_recorded_configuration(tmp_path, llama, store, ppl_ids,
                                                                             monkeypatch):
    out = tmp_path / "sweep"
    original = Ledger.record
    calls = {"n": 0}

    def interrupted(self, row, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            # Items and windows of the 4th configuration reach disk, its results row does not.
            self._append_measures(row, *args, **kwargs)
            raise KeyboardInterrupt
        return original(self, row, *args, **kwargs)

    monkeypatch.setattr(Ledger, "record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sweep(llama, store, out, ppl_ids)
    assert len(pd.read_csv(out / "results.csv")) == 3
    monkeypatch.setattr(Ledger, "record", original)
    measured = {"n": 0}

    def counting(self, *args, **kwargs):
        measured["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "record", counting)
    results = _sweep(llama, store, out, ppl_ids)
    assert measured["n"] == 8 - 3 and len(results) == 8
    items = pd.read_csv(out / "items.csv", dtype={"k": str})
    # One block of items per configuration plus the baseline: the orphaned block was dropped.
    assert len(items) == (8 + 1) * len(ITEMS)
    assert not items.duplicated(["layer", "k", "alpha", "method", "item"]).any()


def test_a_results_row_cut_by_a_kill_is_not_counted_as_done(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    _sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    text = (out / "results.csv").read_text().rstrip("\n")
    (out / "results.csv").write_text(text[: text.rindex("\n") + 30])  # the last row cut after 30 characters
    results = _sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    assert len(results) == 2 and results["on_target_shift"].notna().all()


def test_another_setting_in_the_same_folder_is_refused(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    _sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    with pytest.raises(ActstoreError, match="another setting"):
        _sweep(llama, store, out, ppl_ids[:100], layers=[1], ks=[4])


def test_grid_is_validated_before_any_measurement():
    with pytest.raises(ActstoreError, match="budgets"):
        Grid((1,), (4,), (0.1,), budgets=(1.0,))
    with pytest.raises(ActstoreError, match="unknown"):
        Grid((1,), (4,), (0.1,), methods=("svm",))
    with pytest.raises(ActstoreError, match="must be > 0"):
        Grid((1,), (4,), (-0.1,), alpha_mode="fraction")
    grid = Grid((1, 5), (4, 64), (0.1,))
    with pytest.raises(ActstoreError, match=r"layers \[5\] are not in"):
        grid.check_store([1, 2], 32)
    with pytest.raises(ActstoreError, match=r"k \[64\]: larger than the hidden size"):
        Grid((1,), (64,), (0.1,)).check_store([1], 32)


def test_residual_norm_is_the_rms_norm_of_the_captured_activations(store):
    stats = actstore.open_stats(store)
    acts = actstore.open_store(store)["acts"].sel(layer=2).values.astype(np.float64)
    assert residual_norm(stats, 2) == pytest.approx(math.sqrt((acts ** 2).sum(1).mean()), rel=1e-9)


def _results(rows):
    base = {"behavior": "b", "layer": 1, "method": "enr"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_frontier_picks_the_largest_shift_within_each_budget():
    results = _results([
        {"k": "4", "alpha": a, "on_target_shift": s, "on_target_ci_low": s - 0.01, "on_target_ci_high": s + 0.01,
         "ppl_inflation": i, "ppl_inflation_ci_low": i, "ppl_inflation_ci_high": i}
        for a, s, i in ((1, 0.02, 1.01), (2, 0.05, 1.04), (4, 0.09, 1.20), (8, 0.07, 1.9), (16, 0.30, 9.0))])
    table = frontier(results, (1.05, 1.25, 2.0, 1.001)).set_index("budget")
    assert table.loc[1.05, "alpha"] == 2 and table.loc[1.05, "on_target_shift"] == 0.05
    assert table.loc[1.25, "alpha"] == 4
    assert table.loc[2.0, "alpha"] == 4  # the larger alpha within 2.0 moves the behavior less
    assert math.isnan(table.loc[1.001, "alpha"])  # nothing is that gentle: not reachable


def test_retained_fraction_only_where_the_dense_effect_is_detectable():
    rows, item_rows = [], []
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 40)
    item_rows += [{"layer": np.nan, "k": "none", "alpha": 0.0, "method": "none", "item": f"i{j}", "score": b}
                  for j, b in enumerate(base)]
    for layer, dense_shift in ((1, 0.10), (2, 0.0)):
        for k, frac in (("4", 0.6), ("dense", 1.0)):
            scores = base + dense_shift * frac + rng.normal(0, 0.02, 40)
            t = paired_mean_interval(scores, base)
            rows.append({"behavior": "b", "layer": layer, "method": "enr", "k": k, "alpha": 1.0,
                         "on_target_shift": t.estimate, "on_target_ci_low": t.low, "on_target_ci_high": t.high,
                         "ppl_inflation": 1.01, "ppl_inflation_ci_low": 1.0, "ppl_inflation_ci_high": 1.02})
            item_rows += [{"layer": layer, "k": k, "alpha": 1.0, "method": "enr", "item": f"i{j}", "score": s}
                          for j, s in enumerate(scores)]
    # A whitened sparse vector is compared with the (one) dense vector too.
    whitened = base + 0.10 * 0.3 + rng.normal(0, 0.02, 40)
    t = paired_mean_interval(whitened, base)
    rows.append({"behavior": "b", "layer": 1, "method": "whitened", "k": "8", "alpha": 1.0,
                 "on_target_shift": t.estimate, "on_target_ci_low": t.low, "on_target_ci_high": t.high,
                 "ppl_inflation": 1.01, "ppl_inflation_ci_low": 1.0, "ppl_inflation_ci_high": 1.02})
    item_rows += [{"layer": 1, "k": "8", "alpha": 1.0, "method": "whitened", "item": f"i{j}", "score": s}
                  for j, s in enumerate(whitened)]
    table = frontier(pd.DataFrame(rows), (1.05,), pd.DataFrame(item_rows))
    assert table[table["method"] == "whitened"]["fraction_of_dense"].iloc[0] == pytest.approx(0.3, abs=0.1)
    table = table[table["method"] == "enr"].set_index(["layer", "k"])
    kept = table.loc[(1, "4")]
    assert kept["fraction_of_dense"] == pytest.approx(0.6, abs=0.1)
    assert kept["fraction_ci_low"] < kept["fraction_of_dense"] < kept["fraction_ci_high"]
    assert math.isnan(table.loc[(2, "4"), "fraction_of_dense"])  # dense moved nothing at layer 2
    mirror = matched_effect(pd.DataFrame(rows), (0.5, 0.9)).set_index(["layer", "k", "target_fraction"])
    assert (1, "4", 0.5) in mirror.index and 2 not in mirror.index.get_level_values(0)
    assert (1, "8", 0.5) not in mirror.index or math.isnan(mirror.loc[(1, "8", 0.5), "alpha"])  # 0.3 < 0.5
    assert math.isnan(mirror.loc[(1, "4", 0.9), "alpha"])  # k=4 keeps ~0.6: never reaches 0.9


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
    assert protocol_for_file(llama.tokenizer, ab).name == "ab"
    free = protocol_for_file(llama.tokenizer, pairs_file, max_items=3)
    assert isinstance(free, FreeTextPreference) and len(free.item_ids) == 3
    assert len(read_preference_pairs(pairs_file)) == 7


def test_free_text_sweep_and_generation_sweep(tmp_path, llama, store, pairs_file, ppl_ids):
    results = _sweep(llama, store, tmp_path / "free", ppl_ids, items=(), layers=[2], ks=[4],
                     on_target=protocol_for_file(llama.tokenizer, pairs_file))
    assert set(results["protocol"]) == {"preference"} and len(results) == 2
    generation = GeneratedText(["Tell me a story", "Hello there"], "vader", max_new_tokens=6)
    results = _sweep(llama, store, tmp_path / "gen", ppl_ids, items=(), layers=[2], ks=[4], on_target=generation)
    assert set(results["protocol"]) == {"generation:vader_compound"}
    assert results["distinct_2_shift"].notna().all() or results["distinct_2_ci_low"].isna().all()
    lines = [json.loads(line) for line in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 and {line["method"] for line in lines} == {"none", "enr"}


def test_user_scorer_scores_the_generations(tmp_path, llama, store, ppl_ids):
    seen = []

    def length_scorer(texts):
        seen.append(list(texts))
        return [len(t) for t in texts]

    results = _sweep(llama, store, tmp_path / "s", ppl_ids, items=(), layers=[1], ks=[4], alphas=[50.0],
                     scorer=length_scorer, prompts=["Tell me a story", "Hello"])
    assert len(seen) == 2 and all(len(batch) == 2 for batch in seen)  # baseline + one configuration
    row = results.iloc[0]
    assert row["on_target_base"] == pytest.approx(np.mean([len(t) for t in seen[0]]))
    assert row["on_target"] == pytest.approx(np.mean([len(t) for t in seen[1]]))


def test_degeneration_measures():
    assert distinct_n("a b c d", 2) == 1.0
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
    assert repeated_ngram_rate("the cat sat on the mat", 3) == 0.0
    assert repeated_ngram_rate("go go go go go", 3) == pytest.approx(2 / 3)
    assert math.isnan(distinct_n("one", 2))


def test_vader_scorer_runs_offline():
    from actstore.protocols import vader_compound

    good, bad = vader_compound(["What a wonderful, happy day!", "This is terrible and awful."])
    assert good > 0.5 and bad < -0.5


def test_normalized_alphas_are_added_norms(tmp_path, llama, store, ppl_ids):
    results = _sweep(llama, store, tmp_path / "n", ppl_ids, layers=[1], ks=[4, None], alphas=[3.0], normalize=True)
    np.testing.assert_allclose(results["added_norm"], [3.0, 3.0], rtol=1e-6)
    assert results["vector_norm"].iloc[0] < results["vector_norm"].iloc[1]


def test_sweep_compares_plain_and_whitened(tmp_path, llama, store, ppl_ids):
    results = _sweep(llama, store, tmp_path / "w", ppl_ids, layers=[2], ks=[4, None], alphas=[2.0],
                     methods=("enr", "whitened"))
    # The whitened dense vector is the plain one: measured once.
    assert sorted(zip(results["method"], results["k"])) == [("enr", "4"), ("enr", "dense"), ("whitened", "4")]
    whitened_only = _sweep(llama, store, tmp_path / "w2", ppl_ids, layers=[2], ks=[None], alphas=[2.0],
                           methods=("whitened",))
    assert whitened_only["on_target"].iloc[0] == pytest.approx(
        results[results["k"] == "dense"]["on_target"].iloc[0], abs=1e-4)
    assert results[results["method"] == "whitened"]["on_target"].iloc[0] != pytest.approx(
        results[(results["method"] == "enr") & (results["k"] == "4")]["on_target"].iloc[0], abs=1e-9)


def test_sweep_compares_every_method_on_one_frontier(tmp_path, llama, store, ppl_ids):
    from actstore.methods import build_vector

    results = _sweep(llama, store, tmp_path / "m", ppl_ids, layers=[2], ks=[4, None], alphas=[2.0],
                     methods=("enr", "pca", "probe", "lda"))
    assert sorted(zip(results["method"], results["k"])) == sorted(
        (m, k) for m in ("enr", "pca", "probe", "lda") for k in ("4", "dense"))
    # each row steers with the vector the library builds (scale 2: the added norm is 2 |v|)
    for method in ("pca", "probe", "lda"):
        row = results[(results["method"] == method) & (results["k"] == "dense")].iloc[0]
        assert row["vector_norm"] == pytest.approx(float(np.linalg.norm(build_vector(store, 2, method, None).vector)),
                                                   rel=1e-5)
    assert results["on_target"].nunique() == len(results)  # eight different vectors, eight measurements
    table = frontier(results, (2.0, 1e9), pd.read_csv(tmp_path / "m" / "items.csv", dtype={"k": str}))
    assert set(table["method"]) == {"enr", "pca", "probe", "lda"}


def test_every_sparse_and_dense_vector_is_measured_against_the_mean_difference():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.7, 40)
    rows, item_rows = [], [{"layer": np.nan, "k": "none", "alpha": 0.0, "method": "none", "item": f"i{j}",
                            "score": b} for j, b in enumerate(base)]
    for method, k, frac in (("enr", "dense", 1.0), ("pca", "dense", 0.5), ("pca", "4", 0.25)):
        scores = base + 0.1 * frac + rng.normal(0, 0.01, 40)
        t = paired_mean_interval(scores, base)
        rows.append({"behavior": "b", "layer": 1, "method": method, "k": k, "alpha": 1.0,
                     "on_target_shift": t.estimate, "on_target_ci_low": t.low, "on_target_ci_high": t.high,
                     "ppl_inflation": 1.01, "ppl_inflation_ci_low": 1.0, "ppl_inflation_ci_high": 1.02})
        item_rows += [{"layer": 1, "k": k, "alpha": 1.0, "method": method, "item": f"i{j}", "score": s}
                      for j, s in enumerate(scores)]
    table = frontier(pd.DataFrame(rows), (1.05,), pd.DataFrame(item_rows)).set_index(["method", "k"])
    assert table.loc[("pca", "dense"), "fraction_of_dense"] == pytest.approx(0.5, abs=0.05)
    assert table.loc[("pca", "4"), "fraction_of_dense"] == pytest.approx(0.25, abs=0.05)
    assert math.isnan(table.loc[("enr", "dense"), "fraction_of_dense"])  # the yardstick itself
    pca_only = frontier(pd.DataFrame(rows[1:]), (1.05,), pd.DataFrame(item_rows)).set_index(["method", "k"])
    assert pca_only.loc[("pca", "4"), "fraction_of_dense"] == pytest.approx(0.5, abs=0.1)  # its own dense


def test_ab_sweeps_report_the_letter_balanced_shift(tmp_path, llama, store, ppl_ids):
    from actstore.intervals import stratified_mean_interval

    results = _sweep(llama, store, tmp_path / "b", ppl_ids, layers=[2], ks=[4], alphas=[8.0])
    items = pd.read_csv(tmp_path / "b" / "items.csv", dtype={"k": str})
    base = items[items["method"] == "none"].set_index("item")["score"]
    steered = items[items["method"] == "enr"].set_index("item")["score"].loc[base.index]
    letters = [item.matching for item in ITEMS]
    want, _ = stratified_mean_interval(steered.to_numpy(), base.to_numpy(), letters)
    row = results.iloc[0]
    assert row["balanced_shift"] == pytest.approx(want.estimate)
    assert row["balanced_ci_low"] == pytest.approx(want.low) and bool(row["balanced_detectable"]) == want.excludes(0)
    report = (tmp_path / "b" / "results.md").read_text()
    assert "each matching letter weighted equally" in report
    if row["balanced_detectable"]:  # the lines name the shift, not the steered score
        assert f"shift {row['balanced_shift']:.3g} [" in report
    table = pd.read_csv(tmp_path / "b" / "frontier.csv", dtype={"k": str})
    assert set(table["measure"]) == {"letter-balanced"}
    reached = table.dropna(subset=["alpha"])
    assert len(reached) and reached["on_target_shift"].tolist() == pytest.approx([row["balanced_shift"]] * len(reached))
    assert json.loads((tmp_path / "b" / "baseline.json").read_text())["strata"] == letters


def test_sweep_measures_each_vectors_held_out_separation_once(tmp_path, llama, store, ppl_ids, pairs_file):
    from actstore.methods import build_vector
    from actstore.monitor import project, separation

    heldout = tmp_path / "heldout.zarr"
    actstore.capture_to_store(llama, pairs_file, heldout, "1,2", progress=False)
    out = tmp_path / "sep"
    _sweep(llama, store, out, ppl_ids, layers=[1, 2], ks=[4, None], alphas=None, fractions=(0.5, 2.0),
           methods=("enr", "probe"), heldout=heldout)
    table = pd.read_csv(out / "separation.csv", dtype={"k": str})
    assert len(table) == 2 * 2 * 2  # layer x method x k, once whatever the alphas
    row = table[(table["layer"] == 2) & (table["method"] == "probe") & (table["k"] == "4")].iloc[0]
    direct = separation(project(heldout, build_vector(store, 2, "probe", 4)))
    assert row["auroc"] == pytest.approx(direct.auroc.estimate)
    assert row["d_ci_low"] == pytest.approx(direct.cohens_d.low)
    before = (out / "separation.csv").read_text()
    _sweep(llama, store, out, ppl_ids, layers=[1, 2], ks=[4, None], alphas=None, fractions=(0.5, 2.0),
           methods=("enr", "probe"), heldout=heldout)  # resumed: nothing new
    assert (out / "separation.csv").read_text() == before
    with pytest.raises(ActstoreError, match=r"layers \[2\] are not in"):
        small = tmp_path / "small.zarr"
        actstore.capture_to_store(llama, pairs_file, small, "1", progress=False)
        _sweep(llama, store, tmp_path / "x", ppl_ids, layers=[1, 2], heldout=small)


def test_a_store_of_other_weights_is_refused(tmp_path, tiny_model_dirs, store, ppl_ids, llama):
    other = load_model(str(tiny_model_dirs["gpt2"]))
    with pytest.raises(ActstoreError, match="pass force=True"):
        _sweep(other, store, tmp_path / "x", ppl_ids, layers=[1], ks=[4])


def test_cli_eval_defaults_and_refusals(tmp_path, tiny_model_dirs, pairs_file):
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
    result = runner.invoke(cli, [*common, "--layers", "1", "--k", "4,dense", "--fractions", "0.5"])
    assert result.exit_code == 0, result.output
    assert "2 configurations" in result.output and "frontier" in result.output
    assert (tmp_path / "sweep" / "frontier.csv").exists()
    # by default the --data-test texts are captured in memory, each A/B pair with its option-swapped twin,
    # and every vector's separation is measured
    separation = pd.read_csv(tmp_path / "sweep" / "separation.csv", dtype={"k": str})
    assert sorted(separation["k"]) == ["4", "dense"] and separation["n_pos"].tolist() == [2 * len(ITEMS)] * 2
    assert separation["paired"].all()
    assert "Separation of held-out pairs" in (tmp_path / "sweep" / "results.md").read_text()
    assert (tmp_path / "sweep" / f"separation_{(tmp_path / 'ab.json').resolve().parent.name}.png").exists()
    for args, message in ((["--layers", "3"], "layers [3] are not in"),
                          (["--layers", "1", "--budgets", "0.9"], "budgets"),
                          (["--layers", "1", "--k", "64"], "larger than the hidden size"),
                          (["--layers", "1", "--methods", "svm"], "unknown"),
                          (["--layers", "1", "--normalize"], "--normalize needs --alpha"),
                          (["--layers", "1", "--prompts", str(text)], "exactly one of --data-test")):
        result = runner.invoke(cli, [*common, *args])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, args
    labeled = tmp_path / "labeled.json"
    labeled.write_text(json.dumps([{"text": "a b c", "label": "x"}, {"text": "d e f", "label": "y"}]))
    result = runner.invoke(cli, [*common[:-2], "--out", str(tmp_path / "l"), "--layers", "1", "--k", "4", "--data-test",
                                 str(labeled)])
    assert result.exit_code == 1 and "labeled.json" in result.output and "not labeled texts" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('[{"positive": "a",')
    result = runner.invoke(cli, [*common[:-2], "--out", str(tmp_path / "b"), "--layers", "1", "--k", "4", "--data-test",
                                 str(broken)])
    assert result.exit_code == 1 and "broken.json" in result.output and "Traceback" not in result.output


def test_sweep_steers_only_the_chosen_positions(tmp_path, llama, store, ppl_ids):
    results = _sweep(llama, store, tmp_path / "p", ppl_ids, layers=[2], ks=[4], alphas=[3.0], positions="from:5")
    every = _sweep(llama, store, tmp_path / "a", ppl_ids, layers=[2], ks=[4], alphas=[3.0])
    vector = actstore.vector_from_stats(actstore.open_stats(store), 2, 4)
    with actstore.steer(llama, vector, 3.0, positions="from:5"):
        direct = ab_scores(llama.model, llama.tokenizer, ITEMS)
    assert results["on_target"].iloc[0] == pytest.approx(direct.mean(), rel=1e-6)
    assert results["on_target"].iloc[0] != pytest.approx(every["on_target"].iloc[0], rel=1e-6)
    assert json.loads((tmp_path / "p" / "baseline.json").read_text())["settings"]["positions"] == "from:5"
    with pytest.raises(ActstoreError, match="per-example mask"):
        _sweep(llama, store, tmp_path / "m", ppl_ids, layers=[2], ks=[4], positions=np.ones((2, 3), bool))


def test_a_reader_leaves_a_running_sweep_alone(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    _sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    # A configuration in flight: its items are on disk, its results row is not yet.
    items = pd.read_csv(out / "items.csv", dtype={"k": str})
    in_flight = items[items["method"] == "enr"].head(len(ITEMS)).assign(alpha=9.0)
    in_flight.to_csv(out / "items.csv", mode="a", header=False, index=False)
    before = (out / "items.csv").read_text()
    reader = Ledger.open_existing(out)
    assert (out / "items.csv").read_text() == before  # nothing rewritten under the writer
    assert len(reader.items()) == len(items)  # the in-flight rows are not read as results
    assert len(reader.results()) == 2


def test_the_report_names_the_shift_not_the_steered_score():
    from actstore.report import _detectable_lines

    row = {"behavior": "b", "layer": 1, "method": "enr", "k": "4", "alpha": 1.0, "on_target": 0.676,
           "on_target_shift": 0.052, "on_target_ci_low": 0.009, "on_target_ci_high": 0.095, "detectable": True,
           "ppl_inflation": 1.1, "ppl_inflation_ci_low": 1.0, "ppl_inflation_ci_high": 1.2}
    (line,) = [x for x in _detectable_lines(pd.DataFrame([row])) if x.startswith("- ")]
    assert "shift 0.052 [0.009, 0.095]" in line and "0.676" not in line and "inflation 1.1 [1, 1.2]" in line

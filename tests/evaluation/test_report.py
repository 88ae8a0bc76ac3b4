"""The frontier, the contrasts, the steerability and the counts against written-out computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from actstore.evaluation.frontier import contrasts, frontier, steerability
from actstore.evaluation.intervals import SEED, bh_q_values, paired_mean_interval
from actstore.evaluation.paths import Evidence, Paths, interpolate_at
from actstore.evaluation.report import count_line

QUESTIONS, DOCUMENTS, WINDOWS_PER_DOCUMENT, TOKENS = 10, 4, 2, 50
ALPHAS = (1.0, 2.0, 4.0)


def _folder(effects: dict, damage: dict, seed: int = 0):
    """results/items/windows frames of a synthetic A/B sweep: ``effects[(method, k)]`` the mean log-odds
    shift per alpha, ``damage[(method, k)]`` the per-token NLL increase per alpha; noise per question,
    per order and per document."""
    rng = np.random.default_rng(seed)
    base_logodds = rng.normal(0, 2, (QUESTIONS, 2))
    base_nll = rng.normal(4, 0.5, DOCUMENTS * WINDOWS_PER_DOCUMENT) * TOKENS
    document = np.repeat(np.arange(DOCUMENTS), WINDOWS_PER_DOCUMENT)
    item_ids = [f"item {q + 1}" + (" swapped" if o else "") for q in range(QUESTIONS) for o in (0, 1)]

    def items(key, logodds):
        return pd.DataFrame({"layer": key[0], "k": key[2], "alpha": key[3], "method": key[1], "item": item_ids,
                             "question": np.repeat(np.arange(QUESTIONS), 2), "order": np.tile([0, 1], QUESTIONS),
                             "score": 1 / (1 + np.exp(-logodds.ravel())), "logodds": logodds.ravel()})

    def windows(key, nll):
        return pd.DataFrame({"layer": key[0], "k": key[2], "alpha": key[3], "method": key[1],
                             "window": np.arange(nll.size), "document": document, "nll": nll, "tokens": TOKENS})

    base_key = (np.nan, "none", "none", 0.0)
    item_frames, window_frames, rows = [items(base_key, base_logodds)], [windows(base_key, base_nll)], []
    for vector, shifts in effects.items():
        layer, method, k = vector if len(vector) == 3 else (1, *vector)
        for alpha, shift, extra in zip(ALPHAS, shifts, damage[vector]):
            key = (layer, method, k, alpha)
            per_question = shift + rng.normal(0, 0.3, (QUESTIONS, 1))
            letter = rng.normal(0.5, 0.1)  # a letter push: +/- by order, cancels per question
            logodds = base_logodds + per_question + np.array([letter, -letter])
            nll = base_nll + (extra + rng.normal(0, 0.01, DOCUMENTS)[document]) * TOKENS
            item_frames.append(items(key, logodds))
            window_frames.append(windows(key, nll))
            rows.append({"behavior": "b", "layer": layer, "method": method, "k": k, "alpha": alpha,
                         "measure": "logodds"})
    return pd.DataFrame(rows), pd.concat(item_frames, ignore_index=True), pd.concat(window_frames, ignore_index=True)


def _written_out(items, windows, method, k, layer=1):
    """Per configuration of (method, k) at ``layer``, in alpha order: per-question effects (mean over
    orders) and per-document NLL differences, from the tables with loops."""
    base = items[items["method"] == "none"]
    base_w = windows[windows["method"] == "none"]
    effects, docs = [], []
    for alpha in ALPHAS:
        mine = items[(items["method"] == method) & (items["k"] == k) & (items["alpha"] == alpha)
                     & (items["layer"] == layer)]
        per_q = []
        for q in range(QUESTIONS):
            d = (mine[mine["question"] == q]["logodds"].to_numpy() - base[base["question"] == q]["logodds"].to_numpy())
            per_q.append(d.mean())
        effects.append(np.array(per_q))
        w = windows[(windows["method"] == method) & (windows["k"] == k) & (windows["alpha"] == alpha)
                    & (windows["layer"] == layer)]
        docs.append(np.array([(w[w["document"] == d]["nll"].sum() - base_w[base_w["document"] == d]["nll"].sum())
                              for d in range(DOCUMENTS)]))
    return effects, docs


def _interpolate(points, log_budget):
    """Written out: walk the path (origin first) to the first segment that reaches the budget."""
    path = [(0.0, 0.0)] + points
    for (l0, s0), (l1, s1) in zip(path, path[1:]):
        if l0 < log_budget <= l1:
            return s0 + (log_budget - l0) / (l1 - l0) * (s1 - s0)
    return math.nan


def test_interpolation_reads_the_path_where_it_first_reaches_the_budget():
    L = np.array([0.0, 0.02, 0.1, 0.05, 0.3])  # inflation goes up, back down, up again
    S = np.array([0.0, 0.1, 0.5, 0.4, 0.9])
    A = np.array([0.0, 1, 2, 4, 8])
    shift, alpha = interpolate_at(L, S, A, 0.06)
    assert shift == pytest.approx(0.1 + (0.06 - 0.02) / 0.08 * 0.4) and alpha == pytest.approx(1 + 0.5)
    shift, _ = interpolate_at(L, S, A, 0.01)  # between the unsteered point and the first alpha
    assert shift == pytest.approx(0.05)
    shift, alpha = interpolate_at(L, S, A, 0.31)  # beyond every measurement: not reached, never extrapolated
    assert math.isnan(shift) and math.isnan(alpha)


def _compare_minus_random(row, point, draws) -> int:
    """The k=4 row's difference from its random control against the written-out draws; 1 if compared."""
    if not row.reached or math.isnan(point["random"]):
        return 0
    beyond = draws["4"] - draws["random"]
    assert row.random_reference == "random:0"
    assert row.minus_random == pytest.approx(point["4"] - point["random"], rel=1e-9)
    assert (row.minus_random_ci_low, row.minus_random_ci_high) == pytest.approx(
        tuple(np.percentile(beyond[np.isfinite(beyond)], [2.5, 97.5])), rel=1e-9)
    return 1


def _compare_minus_dense(row, point, draws) -> tuple[int, int]:
    """The k=4 row's difference from dense (and fraction of it) against the written-out draws; what was compared."""
    if not row.reached or math.isnan(point["dense"]):
        return 0, 0
    diff = draws["4"] - draws["dense"]
    ok = diff[np.isfinite(diff)]
    assert row.diff_vs_dense == pytest.approx(point["4"] - point["dense"], rel=1e-9)
    assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx(tuple(np.percentile(ok, [2.5, 97.5])), rel=1e-9)
    below, above = ((ok <= 0).sum() + 1) / (ok.size + 1), ((ok >= 0).sum() + 1) / (ok.size + 1)
    assert row.diff_p_value == pytest.approx(min(1.0, 2 * min(below, above)))
    ratio = draws["4"] / draws["dense"]
    if np.percentile(draws["dense"][np.isfinite(draws["dense"])], 2.5) <= 0:
        return 1, 0
    assert row.fraction == pytest.approx(point["4"] / point["dense"], rel=1e-9)
    assert row.fraction_ci_low == pytest.approx(np.percentile(ratio[np.isfinite(ratio)], 2.5), rel=1e-9)
    return 1, 1


def test_frontier_and_its_selection_aware_bootstrap_match_a_written_out_computation():
    effects = {("enr", "dense"): (0.2, 0.5, 1.0), ("enr", "4"): (0.3, 0.6, 0.8), ("random:0", "4"): (0.0, 0.1, 0.1)}
    damage = {("enr", "dense"): (0.01, 0.05, 0.8), ("enr", "4"): (0.005, 0.05, 0.25),
              ("random:0", "4"): (0.01, 0.1, 0.3)}
    results, items, windows = _folder(effects, damage)
    budgets = (1.03, 1.2, 2.0)
    B = 300
    paths = Paths.of(Evidence.from_tables(results, items, windows), n_resamples=B)
    table = {(r.k, r.budget): r for r in frontier(paths, budgets) if r.method == "enr"}
    q_draws = np.random.default_rng(SEED).integers(0, QUESTIONS, (B, QUESTIONS))
    d_draws = np.random.default_rng(SEED + 1).integers(0, DOCUMENTS, (B, DOCUMENTS))
    tokens = np.full(DOCUMENTS, TOKENS * WINDOWS_PER_DOCUMENT, dtype=float)
    written = {k: _written_out(items, windows, "enr", k) for k in ("dense", "4")}
    written["random"] = _written_out(items, windows, "random:0", "4")
    compared = {"diff": 0, "fraction": 0, "random": 0}
    for budget in budgets:
        lb = math.log(budget)
        point, draws = {}, {}
        for k, (eff, docs) in written.items():
            point[k] = _interpolate([(d.sum() / tokens.sum(), e.mean()) for e, d in zip(eff, docs)], lb)
            draws[k] = np.array([_interpolate([(d[d_draws[b]].sum() / tokens[d_draws[b]].sum(), e[q_draws[b]].mean())
                                               for e, d in zip(eff, docs)], lb) for b in range(B)])
        compared["random"] += _compare_minus_random(table[("4", budget)], point, draws)
        for k in ("dense", "4"):
            row = table[(k, budget)]
            assert row.reached == (not math.isnan(point[k]))
            if not row.reached:
                assert math.isnan(row.shift) and math.isnan(row.ci_low)
                continue
            ok = draws[k][np.isfinite(draws[k])]
            assert row.shift == pytest.approx(point[k], rel=1e-9)
            assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.percentile(ok, [2.5, 97.5])), rel=1e-9)
            assert row.boot_defined == pytest.approx(ok.size / B)
        diff, fraction = _compare_minus_dense(table[("4", budget)], point, draws)
        compared["diff"] += diff
        compared["fraction"] += fraction
    assert compared["diff"] >= 2 and compared["fraction"] >= 1 and compared["random"] >= 1  # all exercised
    rows = frontier(paths, budgets)
    vectors = [r for r in rows if not r.method.startswith("random")]
    np.testing.assert_allclose([r.q_value for r in vectors], bh_q_values([r.p_value for r in vectors]))
    np.testing.assert_allclose([r.minus_random_q_value for r in vectors],
                               bh_q_values([r.minus_random_p_value for r in vectors]))
    assert all(math.isnan(r.minus_random) for r in rows if r.method.startswith("random"))
    assert table[("dense", 1.03)].fraction != table[("dense", 1.03)].fraction  # the reference has none (NaN)
    assert not table[("4", 2.0)].reached  # k=4 never damages that much: not reached, not extrapolated


def test_primary_contrasts_are_holm_corrected_as_a_family():
    effects = {("enr", "dense"): (0.2, 0.5, 1.0), ("enr", "16"): (0.3, 0.6, 0.8),
               ("whitened", "16"): (0.1, 0.2, 0.3), ("random:0", "16"): (0.0, 0.0, 0.0)}
    damage = {key: (0.01, 0.05, 0.3) for key in effects}
    results, items, windows = _folder(effects, damage, seed=3)
    paths = Paths.of(Evidence.from_tables(results, items, windows), n_resamples=400)
    rows = contrasts(paths, (1.03, 1.2))
    kinds = {(r.contrast, r.method, r.k) for r in rows}
    assert kinds == {("sparse_minus_dense", "enr", "16"), ("sparse_minus_dense", "whitened", "16"),
                     ("whitened_minus_enr", "whitened", "16")}  # no control among them
    tested = [r for r in rows if r.p_value == r.p_value]
    assert len(tested) >= 4
    p = np.array([r.p_value for r in tested])
    m = len(p)
    order = np.argsort(p, kind="stable")
    holm = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):  # written out: step-down, monotone, capped at 1
        running = max(running, min(1.0, (m - rank) * p[index]))
        holm[index] = running
    np.testing.assert_allclose([r.p_holm for r in tested], holm)
    (whitened,) = [r for r in rows if r.contrast == "whitened_minus_enr" and r.budget == 1.2]
    assert whitened.reference == "enr k=16 at layer 1" and whitened.estimate < 0


def test_a_method_that_ranks_another_is_one_registry_entry_for_the_sweep(monkeypatch):
    """``refines`` in the registry, nothing else: its dense vector is measured once (as the refined
    method's) and the default family contrasts it with that method at each k."""
    from actstore.errors import ActstoreError
    from actstore.evaluation.grid import Grid
    from actstore.vectors.methods import METHODS, Method, mask_top_k

    monkeypatch.setitem(METHODS, "reranked", Method("reranked", "enr's vector, ranked otherwise",
                                                    METHODS["enr"].direction, mask_top_k, refines="enr"))
    grid = Grid((1,), (16, None), (0.1,), methods=("enr", "reranked"))
    assert [(c.method, c.k) for c in grid.configurations()] == [("enr", "16"), ("enr", "dense"), ("reranked", "16")]
    assert [(c.method, c.k) for c in Grid((1,), (None,), (0.1,), methods=("reranked",)).configurations()] == [
        ("reranked", "dense")]
    effects = {("enr", "dense"): (0.2, 0.5, 1.0), ("enr", "16"): (0.3, 0.6, 0.8), ("reranked", "16"): (0.1, 0.2, 0.3)}
    results, items, windows = _folder(effects, {key: (0.01, 0.05, 0.3) for key in effects}, seed=3)
    rows = contrasts(Paths.of(Evidence.from_tables(results, items, windows), n_resamples=50), (1.2,))
    assert {(r.contrast, r.method, r.reference) for r in rows} >= {("reranked_minus_enr", "reranked",
                                                                     "enr k=16 at layer 1")}
    with pytest.raises(ActstoreError, match="unknown"):  # an imported vector is not something a sweep builds
        Grid((1,), (16,), (0.1,), methods=("repeng",))


def test_a_prespecified_family_with_the_best_other_layer_chosen_in_every_resample():
    from actstore.evaluation.frontier import Contrast

    effects = {(1, "enr", "64"): (0.2, 0.5, 1.0), (2, "enr", "64"): (0.3, 0.6, 0.9), (3, "enr", "64"): (0.1, 0.3, 0.5)}
    damage = {key: (0.01, 0.05, 0.3) for key in effects}
    results, items, windows = _folder(effects, damage, seed=7)
    B = 200
    paths = Paths.of(Evidence.from_tables(results, items, windows), n_resamples=B)
    family = [Contrast.parse("layer=1:enr:64-best:enr:64@1.2"), Contrast.parse("fixed=1:enr:64-3:enr:64@1.2"),
              Contrast.parse("absent=5:enr:64-3:enr:64@1.2")]
    rows = {r.contrast: r for r in contrasts(paths, (1.2,), family)}
    q_draws = np.random.default_rng(SEED).integers(0, QUESTIONS, (B, QUESTIONS))
    d_draws = np.random.default_rng(SEED + 1).integers(0, DOCUMENTS, (B, DOCUMENTS))
    tokens = np.full(DOCUMENTS, TOKENS * WINDOWS_PER_DOCUMENT, dtype=float)
    lb = math.log(1.2)
    point, draws = {}, {}
    for layer in (1, 2, 3):
        eff, docs = _written_out(items, windows, "enr", "64", layer)
        point[layer] = _interpolate([(d.sum() / tokens.sum(), e.mean()) for e, d in zip(eff, docs)], lb)
        draws[layer] = np.array([_interpolate([(d[d_draws[b]].sum() / tokens[d_draws[b]].sum(), e[q_draws[b]].mean())
                                               for e, d in zip(eff, docs)], lb) for b in range(B)])
    best = np.array([max(draws[2][b], draws[3][b]) for b in range(B)])  # chosen again in each resample
    diff = draws[1] - best
    assert rows["layer"].estimate == pytest.approx(point[1] - max(point[2], point[3]), rel=1e-9)
    assert (rows["layer"].ci_low, rows["layer"].ci_high) == pytest.approx(tuple(np.percentile(diff, [2.5, 97.5])))
    assert rows["layer"].reference == "enr k=64 at best other layer"
    assert rows["fixed"].estimate == pytest.approx(point[1] - point[3], rel=1e-9)
    assert math.isnan(rows["absent"].p_value) and math.isnan(rows["absent"].p_holm)  # not in Holm's m
    p = sorted([rows["layer"].p_value, rows["fixed"].p_value])
    assert sorted([rows["layer"].p_holm, rows["fixed"].p_holm]) == pytest.approx([min(1, 2 * p[0]),
                                                                                  min(1, max(2 * p[0], p[1]))])
    with pytest.raises(Exception, match="NAME=LAYER"):
        Contrast.parse("8:enr:64 minus dense")


def test_steerability_matches_per_question_slopes_written_out():
    effects = {("enr", "dense"): (0.2, 0.5, 1.0)}
    results, items, windows = _folder(effects, {("enr", "dense"): (0.01, 0.05, 0.3)}, seed=5)
    B = 300
    (row,) = steerability(results, items, n_resamples=B)
    base = items[items["method"] == "none"]
    x = np.array([0.0, *ALPHAS])
    slopes = []
    for q in range(QUESTIONS):
        y = [base[base["question"] == q]["logodds"].mean()]
        for alpha in ALPHAS:
            mine = items[(items["method"] == "enr") & (items["alpha"] == alpha) & (items["question"] == q)]
            y.append(mine["logodds"].mean())
        slopes.append(np.polyfit(x, y, 1)[0])
    slopes = np.array(slopes)
    t = paired_mean_interval(slopes, np.zeros(QUESTIONS))
    assert (row.slope_mean, row.slope_ci_low, row.slope_ci_high) == pytest.approx((t.estimate, t.low, t.high))
    assert row.slope_sd == pytest.approx(slopes.std(ddof=1))
    assert row.anti_steerable == pytest.approx((slopes < 0).mean())
    draws = np.random.default_rng(SEED).integers(0, QUESTIONS, (B, QUESTIONS))
    sds = [slopes[d].std(ddof=1) for d in draws]
    antis = [(slopes[d] < 0).mean() for d in draws]
    assert (row.slope_sd_ci_low, row.slope_sd_ci_high) == pytest.approx(tuple(np.percentile(sds, [2.5, 97.5])))
    assert (row.anti_ci_low, row.anti_ci_high) == pytest.approx(tuple(np.percentile(antis, [2.5, 97.5])))
    assert row.n_alphas == 3 and row.measure == "logodds"


def test_counts_say_how_many_chance_would_give_and_how_many_survive_correction():
    frame = pd.DataFrame({"measure": "logodds", "shift_logodds": [0.5, -0.4, 0.1, 0.2],
                          "shift_logodds_ci_low": [0.1, -0.8, -0.1, 0.01],
                          "shift_logodds_ci_high": [0.9, -0.1, 0.3, 0.4],
                          "q_value": [0.01, 0.04, 0.6, 0.2]})
    line = count_line(frame)
    assert line.startswith("3 of 4 configurations have an interval excluding zero (4 x 0.05 = 0.2 expected with no "
                           "effect at all): 2 up, 1 down; 2 at q < 0.05")
    assert "1 up, 1 down)" in line

"""The gemma plan's summary (studies/plan_summary.py, plan_controls.py) on synthetic sweep tables whose answers
are written out: the first-segment rule, the per-seed random rule, the letter-leak bound, the margins, the
Monte-Carlo errors and the half sweeps; and the summary of the committed plan folder, whose P1 it must keep."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actstore.evaluation.intervals import holm_adjusted
from actstore.evaluation.paths import Evidence, Paths

STUDIES = Path(__file__).resolve().parents[2] / "studies"
sys.path.insert(0, str(STUDIES))
import plan_controls  # noqa: E402
import plan_summary  # noqa: E402

LOG_B = math.log(1.25)


def sweep_tables(vectors: dict, behavior: str = "refusal", questions: int = 40, documents: int = 8,
                 noise: float = 0.0, seed: int = 0, measure: str = "logodds"):
    """(results, items, windows) of a sweep: ``vectors`` maps (layer, method, k) to its points
    (alpha, shift, log_inflation[, letter_bias[, (ci_low, ci_high)]]); each question's shift is the
    point's shift (+ ``noise`` x a fixed normal draw per question and point), each document's nll grows
    by log_inflation per token (100 tokens each); probability ``score`` moves by a tenth of the shift."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=questions)
    none = {"layer": np.nan, "method": "none", "k": "none", "alpha": 0.0}
    items = [{**none, "item": f"i{q}", "question": q, "logodds": base[q], "score": 0.5} for q in range(questions)]
    windows = [{**none, "window": u, "document": u, "nll": 300.0, "tokens": 100} for u in range(documents)]
    results = []
    for (layer, method, k), points in vectors.items():
        for point in points:
            alpha, shift, inflation, bias, ci = (*point, *(0.0, (math.nan, math.nan))[len(point) - 3:])
            key = {"layer": layer, "method": method, "k": k, "alpha": alpha}
            results.append({"behavior": behavior, **key, "measure": measure, "letter_bias": bias,
                            "shift_logodds_ci_low": ci[0], "shift_logodds_ci_high": ci[1],
                            "on_target_shift": 0.1 * shift, "ppl_inflation": math.exp(inflation)})
            per_question = shift + noise * rng.normal(size=questions)
            items += [{**key, "item": f"i{q}", "question": q, "logodds": base[q] + per_question[q],
                       "score": 0.5 + 0.1 * per_question[q]} for q in range(questions)]
            windows += [{**key, "window": u, "document": u, "nll": 300.0 + 100 * inflation, "tokens": 100}
                        for u in range(documents)]
    return pd.DataFrame(results), pd.DataFrame(items), pd.DataFrame(windows)


def paths_of(tables, n_resamples: int = 400, measure: str | None = None) -> Paths:
    results, items, windows = tables
    results = results.assign(measure=measure) if measure else results
    return Paths.of(Evidence.from_tables(results, items, windows), n_resamples)


def straight(slope: float, cost: float, alphas=(1.0, 2.0, 3.0)) -> list[tuple]:
    """Points on a straight path: shift slope x alpha, log-inflation cost x alpha."""
    return [(a, slope * a, cost * a) for a in alphas]


# ---- the first segment -----------------------------------------------------------------------------


def test_a_budget_reached_before_the_first_measured_alpha_is_not_read():
    paths = paths_of(sweep_tables({(8, "enr", "64"): straight(1.0, 0.1),          # 1.25 at alpha 2.23: read
                                   (8, "enr", "dense"): straight(2.0, 0.3)}))     # 0.3 >= log 1.25 at alpha 1
    read = plan_summary.read_at(paths, "refusal", 8, "enr", "64", 1.25)
    assert read.status == plan_summary.READ and read.shift == pytest.approx(LOG_B / 0.1)  # linear: alpha = L / 0.1
    assert read.first_segment_draws == 0.0
    first = plan_summary.read_at(paths, "refusal", 8, "enr", "dense", 1.25)
    assert (first.status, first.draws) == (plan_summary.FIRST_SEGMENT, None) and math.isnan(first.shift)
    # without the rule the interpolation would have read it on the straight line from the unsteered point
    assert paths.at(paths.find("refusal", 8, "enr", "dense"), LOG_B)[0] == pytest.approx(2.0 * LOG_B / 0.3)
    assert plan_summary.read_at(paths, "refusal", 8, "enr", "dense", 2.0).status == plan_summary.READ
    assert plan_summary.read_at(paths, "refusal", 8, "enr", "256", 1.25).status == plan_summary.NOT_RUN
    assert plan_summary.read_at(paths, "refusal", 8, "enr", "64", 3.0).status == plan_summary.NOT_REACHED


def test_the_primary_family_does_not_read_a_contrast_in_the_first_segment_nor_fall_back():
    paths = paths_of(sweep_tables({(8, "enr", "64"): straight(1.0, 0.1), (8, "enr", "dense"): straight(2.0, 0.3)}))
    budget, note = plan_summary.choose_budget(paths, "refusal", [(8, "enr", "64"), (8, "enr", "dense")])
    assert budget is None and note.startswith("first segment at 1.25 (enr k=dense")
    (p1,) = [r for r in plan_summary.primary_family({"refusal": paths}, {}) if r["id"] == "P1"]
    assert not p1["testable"] and math.isnan(p1["estimate"]) and "first segment" in p1["note"]
    assert p1["p_holm"] == 1.0 and not p1["borderline"]


def test_the_fallback_budget_where_a_vector_does_not_reach_125_and_the_estimate_written_out():
    # neither reaches 1.25 (log 0.223); at 1.05 (log 0.0488) k=64's first point (log-inflation 0.05) is past it
    paths = paths_of(sweep_tables({(8, "enr", "64"): straight(1.0, 0.05), (8, "enr", "dense"): straight(2.0, 0.02)}))
    (p1,) = [r for r in plan_summary.primary_family({"refusal": paths}, {}) if r["id"] == "P1"]
    assert not p1["testable"] and "first segment at 1.05" in p1["note"]
    log_b = math.log(1.05)  # now k=64 crosses 1.05 between alphas 1 and 2 (0.04, 0.08), dense between 2 and 3
    paths = paths_of(sweep_tables({(8, "enr", "64"): straight(1.0, 0.04), (8, "enr", "dense"): straight(2.0, 0.02)}))
    (p1,) = [r for r in plan_summary.primary_family({"refusal": paths}, {}) if r["id"] == "P1"]
    assert p1["budget"] == 1.05 and p1["note"].startswith("fallback")
    assert p1["estimate"] == pytest.approx(1.0 * log_b / 0.04 - 2.0 * log_b / 0.02)


# ---- margins, Monte-Carlo errors -----------------------------------------------------------------------


def test_margin_verdicts_from_the_draws_90_percent_interval_written_out():
    draws = np.linspace(-0.1, 0.05, 1001)
    low, high = np.percentile(draws, [5, 95])  # -0.0925, 0.0425
    got = plan_summary.margin_columns(-0.02, draws, 0.08)
    assert (got["ci90_low"], got["ci90_high"]) == pytest.approx((low, high))
    assert got["non_inferior"] is False and got["equivalent"] is False  # -0.0925 < -0.08
    got = plan_summary.margin_columns(-0.02, draws, 0.1)
    assert got["non_inferior"] is True and got["equivalent"] is True  # inside (-0.1, 0.1)
    got = plan_summary.margin_columns(-0.02, draws + 0.06, 0.1)
    assert got["non_inferior"] is True and got["equivalent"] is False  # high end 0.1025 >= 0.1
    none = plan_summary.margin_columns(-0.02, draws, None)
    assert none["non_inferior"] is None and math.isnan(none["margin"])


def test_p1_and_p6_margins_on_noise_free_paths():
    # noise-free: every draw is the estimate; P1 = S(64) - S(dense), P6 = S(whitened 64) - S(enr 64) at 1.25
    tables = sweep_tables({(8, "enr", "64"): straight(1.0, 0.1), (8, "enr", "dense"): straight(1.5, 0.1),
                           (8, "whitened", "64"): straight(1.02, 0.1)})
    rows = {r["id"]: r for r in plan_summary.primary_family({"refusal": paths_of(tables)}, {}, {"refusal": 0.08},
                                                            {"refusal": paths_of(tables, measure="score")})}
    alpha = LOG_B / 0.1
    assert rows["P1"]["estimate"] == pytest.approx(-0.5 * alpha)  # -1.116: worse than -0.08
    assert rows["P1"]["non_inferior"] is False and rows["P1"]["equivalent"] is False
    assert rows["P6"]["estimate"] == pytest.approx(0.02 * alpha)  # +0.045: inside (-0.08, 0.08)
    assert rows["P6"]["non_inferior"] is True and rows["P6"]["equivalent"] is True
    assert rows["P6"]["margin"] == 0.08 and rows["P6"]["no_worse_means"].startswith("whitened no worse than ENR")
    assert rows["P6"]["probability_estimate"] == pytest.approx(0.1 * 0.02 * alpha)  # score moves a tenth
    assert "probability_estimate" not in rows["P2"]


def test_p_mc_se_holm_mc_se_and_borderline_written_out():
    rows = [{"id": i, "p_value": p, "p_mc_se": se, "testable": t}
            for i, p, se, t in (("a", 0.01, 0.002, True), ("b", 0.02, 0.003, True), ("c", 0.5, 0.01, True),
                                ("d", math.nan, math.nan, False))]
    plan_summary.with_holm(rows)
    # m = 4 with the untestable as p = 1: sorted 0.01, 0.02, 0.5, 1 -> products 0.04, 0.06, 1.0, 1.0
    assert [r["p_holm"] for r in rows] == pytest.approx([0.04, 0.06, 1.0, 1.0])
    assert [r["p_holm_mc_se"] for r in rows] == pytest.approx([4 * 0.002, 3 * 0.003, 2 * 0.01, 2 * 0.01])
    # |0.04 - 0.05| = 0.01 <= 2 x 0.008; |0.06 - 0.05| = 0.01 <= 2 x 0.009; 0.5 is far; d is not testable
    assert [r["borderline"] for r in rows] == [True, True, False, False]
    rows[0]["p_mc_se"] = 0.001  # se 0.004: 0.01 > 0.008
    assert not plan_summary.with_holm(rows)[0]["borderline"]


def test_a_rows_p_mc_se_is_the_two_sided_bootstrap_formula():
    draws = np.r_[np.full(30, -1.0), np.full(970, 1.0)]
    row = plan_summary._row("P1", "(a)", "refusal", "x", 1.25, 0.9, draws)
    p = 2 * 31 / 1001
    assert row["p_value"] == pytest.approx(p)
    assert row["p_mc_se"] == pytest.approx(math.sqrt(p * (2 - p) / 1000)) and row["resamples"] == 1000
    assert list(holm_adjusted([row["p_value"]])) == pytest.approx([p])


# ---- random controls, per seed ---------------------------------------------------------------------------


def random_tables(control_slopes: dict[int, float], noise: float = 0.3, first_alpha: float = 0.5):
    vectors = {(8, "enr", "64"): straight(1.0, 0.1)}
    for seed, slope in control_slopes.items():
        vectors[(8, f"random:{seed}", "64")] = straight(slope, 0.1, (first_alpha, 1.0, 2.0, 3.0))
    return sweep_tables(vectors, noise=noise)


def test_exceeds_random_only_if_every_seeds_interval_lies_above_zero():
    far = {s: -1.0 for s in range(5)}  # every control far below the vector: each interval well above zero
    controls = plan_controls.random_controls({"refusal": paths_of(random_tables(far))})
    logodds = controls[controls["scale"] == "logodds"]
    assert list(logodds["seed"]) == [0, 1, 2, 3, 4] and logodds["read"].all() and (logodds["ci_low"] > 0).all()
    assert set(logodds["verdict"]) == {"exceeds random (all 5 seeds)"}
    one_close = {**far, 3: 1.0}  # seed 3 is the vector's own slope: its interval holds zero
    controls = plan_controls.random_controls({"refusal": paths_of(random_tables(one_close))})
    row = controls.set_index("seed").loc[3]
    assert row["ci_low"] < 0 < row["ci_high"]
    assert set(controls["verdict"]) == {"not shown (seed 3: interval not above zero)"}
    # a seed whose budget lies in its first segment (first alpha 3 costs 0.3 >= log 1.25) is not read
    tables = sweep_tables({(8, "enr", "64"): straight(1.0, 0.1), **{(8, f"random:{s}", "64"): straight(-1.0, 0.1)
                                                                    for s in range(4)},
                           (8, "random:4", "64"): straight(-1.0, 0.1, (3.0, 4.0))}, noise=0.3)
    controls = plan_controls.random_controls({"refusal": paths_of(tables)}, {"refusal": paths_of(tables, 400, "score")})
    assert set(controls["scale"]) == {"logodds", "probability"}
    assert set(controls["verdict"]) == {"undecided (seed 4 not read)"}
    assert controls.set_index(["scale", "seed"]).loc[("logodds", 4), "note"].startswith("first segment")


def test_a_seeds_difference_is_the_written_out_paired_difference():
    paths = paths_of(random_tables({0: -1.0}, noise=0.0))
    (row,) = plan_controls.random_controls({"refusal": paths}).to_dict("records")
    alpha = LOG_B / 0.1
    assert row["budget"] == 1.25 and row["estimate"] == pytest.approx(2.0 * alpha)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((2.0 * alpha, 2.0 * alpha))


# ---- the letter leak -------------------------------------------------------------------------------------


def test_the_letter_leak_bound_written_out():
    vectors = {(8, "enr", "64"): [(1.0, 0.1, 0.1, 1.0), (2.0, 0.2, 0.3, 3.0)],      # letter bias 1 then 3
               (8, "letter", "dense"): [(0.5, 0.0, 0.01, 0.5, (-0.1, 0.08)), (1.0, 0.0, 0.02, 2.0, (-0.05, 0.06))],
               (8, "random:0", "64"): [(1.0, 0.0, 0.3, 5.0)]}
    leak = plan_controls.letter_leak({"refusal": paths_of(sweep_tables(vectors))})
    assert list(zip(leak["method"], leak["k"])) == [("enr", "64")]  # controls have no row
    (row,) = leak.to_dict("records")
    ratio = 0.06 / 2.0  # the larger |bound| of the letter control's interval at its largest alpha / its letter bias
    t = (LOG_B - 0.1) / (0.3 - 0.1)  # 1.25 between the vector's alphas 1 and 2
    bias = 1.0 + t * (3.0 - 1.0)
    assert row["letter_alpha"] == 1.0 and row["leak_ratio"] == pytest.approx(ratio)
    assert row["letter_bias"] == pytest.approx(bias) and row["leak_bound"] == pytest.approx(ratio * bias)
    assert row["other_ratio_min"] == row["other_ratio_max"] == pytest.approx(0.1 / 0.5)
    assert row["budget"] == 1.25 and row["shift"] == pytest.approx(0.1 + t * 0.1)


def test_no_leak_rows_without_a_letter_control_or_off_log_odds():
    vectors = {(8, "enr", "64"): straight(1.0, 0.1)}
    assert plan_controls.letter_leak({"refusal": paths_of(sweep_tables(vectors))}).empty
    letter = {**vectors, (8, "letter", "dense"): [(1.0, 0.0, 0.01, 2.0, (-0.1, 0.1))]}
    assert plan_controls.letter_leak({"morality": paths_of(sweep_tables(letter, "morality", measure="score"))}).empty


# ---- the half sweeps ----------------------------------------------------------------------------------------


def write_folder(folder: Path, tables, settings: dict) -> None:
    folder.mkdir(parents=True)
    results, items, windows = tables
    (folder / "baseline.json").write_text(json.dumps({"settings": settings}))
    results.to_csv(folder / "results.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    windows.to_csv(folder / "windows.csv", index=False)


def test_the_half_sweeps_widen_p1_beside_its_fixed_interval(tmp_path):
    full = {(8, "enr", "64"): straight(1.0, 0.1), (8, "enr", "dense"): straight(1.5, 0.1),
            (8, "whitened", "64"): straight(1.2, 0.1)}
    fixed = sweep_tables(full, noise=0.3)
    write_folder(tmp_path / "refusal", fixed, {"protocol": "ab"})
    family = plan_summary.primary_family({"refusal": paths_of(fixed, 300)}, {})
    table = plan_controls.resampled(tmp_path, family, 300)
    assert list(table["note"]) == ["not run"] * 4
    for i, slope in ((1, 0.8), (2, 1.2)):  # the halves' k=64 vectors differ (whitened the other way)
        tables = sweep_tables({**full, (8, "enr", "64"): straight(slope, 0.1),
                               (8, "whitened", "64"): straight(2.0 - slope, 0.1)}, noise=0.3)
        write_folder(tmp_path / f"refusal-half-{i}-2", tables, {"protocol": "ab", "train_resample": f"half:{i}/2"})
    table = plan_controls.resampled(tmp_path, family, 300).set_index("id")
    p1 = next(r for r in family if r["id"] == "P1")
    assert table.loc["P1", "estimate"] == pytest.approx(p1["estimate"])
    assert (table.loc["P1", "fixed_ci_low"], table.loc["P1", "fixed_ci_high"]) == pytest.approx(
        (p1["ci_low"], p1["ci_high"]))  # the fixed-vector interval is the primary row's own
    assert table.loc["P1", "width_ratio"] > 1 and table.loc["P6", "width_ratio"] > 1
    p6 = next(r for r in family if r["id"] == "P6")
    assert table.loc["P6", "estimate"] == pytest.approx(p6["estimate"])  # whitened k=64 - ENR k=64, both resampled
    assert table.loc["P6", "figure"] == p6["contrast"] and table.loc["P2", "note"] == "not run"
    assert table.loc["P7", "note"] == "not run"


# ---- the committed plan folder ---------------------------------------------------------------------------


def test_the_summary_of_the_committed_plan_folder_keeps_its_p1(tmp_path, monkeypatch):
    source = STUDIES / "results" / "plan"
    if not (source / "refusal" / "items.csv").exists() or not (source / "primary.csv").exists():
        pytest.skip("studies/results/plan is absent")
    out = tmp_path / "plan"
    shutil.copytree(source, out)
    sys.path.insert(0, str(STUDIES.parent / "benchmarks"))
    import sweep_gemma

    monkeypatch.setattr(sys, "argv", ["sweep_gemma.py", "--summary-only", "--out", str(out), "--plan-margins"])
    sweep_gemma.main()
    committed = pd.read_csv(source / "primary.csv").set_index("id")
    written = pd.read_csv(out / "primary.csv").set_index("id")
    # the estimates do not depend on the resamples; the committed intervals may have been made at more
    # resamples than the default used here (20,000 in the second pass): their ends agree to Monte-Carlo
    # error, a tenth of the interval's width
    for column in ("estimate", "probability_estimate"):
        assert written.loc["P1", column] == pytest.approx(committed.loc["P1", column], rel=1e-12)
    for prefix in ("", "probability_"):
        width = committed.loc["P1", f"{prefix}ci_high"] - committed.loc["P1", f"{prefix}ci_low"]
        for end in ("ci_low", "ci_high"):
            assert abs(written.loc["P1", prefix + end] - committed.loc["P1", prefix + end]) < 0.1 * width
    assert written.loc["P1", "margin"] == 0.08 and written.loc["P2", "margin"] == 0.019
    for name in ("controls.csv", "letter_leak.csv", "resampled.csv", "SUMMARY.md"):
        assert (out / name).exists()
    assert "## The letter leak, bounded" in (out / "SUMMARY.md").read_text()
    # --summary-only keeps the commands of the runs that made the folder, and lists them
    commands = json.loads((source / "commands.json").read_text())
    assert commands and json.loads((out / "commands.json").read_text()) == commands
    assert commands[-1] in (out / "SUMMARY.md").read_text()


def test_the_plan_splits_by_behavior_into_parts_that_add_up():
    sys.path.insert(0, str(STUDIES.parent / "benchmarks"))
    import sweep_gemma

    tiers = {1, 2, 3, 4, 5, 6}
    whole = sweep_gemma.tier_configurations(tiers)
    parts = [sweep_gemma.tier_configurations(tiers, [b]) for b in ("refusal", "morality", "survival-instinct")]
    assert sum(sum(p.values()) for p in parts) == sum(whole.values()) == 478  # amendment 10: +16
    assert set(parts[2]) == {5} and 3 not in parts[0] and 4 not in parts[1]


def test_the_shares_of_behaviors_run_apart_are_merged(tmp_path, monkeypatch):
    # behaviors run by separate processes (--behaviors) each record their own claim-(b) share; the
    # later one keeps the earlier one's, and a store at hand replaces the recorded figure
    sys.path.insert(0, str(STUDIES.parent / "benchmarks"))
    import sweep_gemma

    monkeypatch.setattr(sweep_gemma, "axis_share", lambda store: {"m.zarr": 0.2, "r.zarr": 0.4}[Path(store).name])
    (tmp_path / "shares.json").write_text(json.dumps({"refusal": 0.3}))
    assert sweep_gemma.recorded_shares(tmp_path, {"morality": Path("m.zarr")}) == {"refusal": 0.3, "morality": 0.2}
    assert sweep_gemma.recorded_shares(tmp_path, {}) == {"refusal": 0.3, "morality": 0.2}
    assert sweep_gemma.recorded_shares(tmp_path, {"refusal": Path("r.zarr")})["refusal"] == 0.4
    assert json.loads((tmp_path / "shares.json").read_text()) == {"refusal": 0.4, "morality": 0.2}

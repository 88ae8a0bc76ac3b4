"""Issue 30 §2: margins (non-inferiority, TOST equivalence) on every contrast, and the Monte-Carlo
error of the bootstrap p-values, against written-out computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actstore.evaluation.frontier import contrasts
from actstore.evaluation.intervals import (
    Analysis,
    Interval,
    bootstrap_p_mc_se,
    holm_adjusted,
    holm_mc_se,
    margin_verdicts,
)
from actstore.evaluation.paths import Evidence, Paths
from actstore.evaluation.report_text import contrast_lines
from actstore.evaluation.rows import ContrastRow

from .test_report import DOCUMENTS, QUESTIONS, SEED, TOKENS, WINDOWS_PER_DOCUMENT, _folder, _interpolate, _written_out


def test_margin_verdicts_written_out():
    # the 90% interval [-0.04, 0.02] against M = 0.05: the lower bound -0.04 > -0.05 (non-inferior) and the whole
    # interval inside (-0.05, 0.05) (equivalent); [-0.02, 0.04] against M = 0.03: -0.02 > -0.03 but 0.04 > 0.03
    # (non-inferior, not equivalent); against M = 0.01 neither
    interval = Interval(-0.01, -0.04, 0.02, 0.90)
    assert margin_verdicts(interval, 0.05) == {"margin": 0.05, "ci90_low": -0.04, "ci90_high": 0.02,
                                               "non_inferior": True, "equivalent": True}
    wider = Interval(0.01, -0.02, 0.04, 0.90)
    assert (margin_verdicts(wider, 0.03)["non_inferior"], margin_verdicts(wider, 0.03)["equivalent"]) == (True, False)
    assert (margin_verdicts(wider, 0.01)["non_inferior"], margin_verdicts(wider, 0.01)["equivalent"]) == (
        False, False)
    assert margin_verdicts(interval, None) == {}  # no margin, no verdicts
    undefined = margin_verdicts(Interval(0.1, math.nan, math.nan, 0.9), 0.05)
    assert undefined["non_inferior"] is None and undefined["equivalent"] is None


def test_the_monte_carlo_error_of_a_bootstrap_p_and_of_its_holm_adjustment_written_out():
    # p = 2q from B draws, q a binomial share: se = 2 sqrt(q (1 - q) / B) = sqrt(p (2 - p) / B)
    assert bootstrap_p_mc_se(0.05, 2000) == pytest.approx(2 * math.sqrt(0.025 * 0.975 / 2000))
    assert bootstrap_p_mc_se(0.05, 8000) == pytest.approx(bootstrap_p_mc_se(0.05, 2000) / 2)  # 4x the draws
    assert math.isnan(bootstrap_p_mc_se(math.nan, 2000)) and math.isnan(bootstrap_p_mc_se(0.5, 0))
    # Holm over p = (0.01, 0.04, 0.03): sorted 0.01, 0.03, 0.04 -> products 0.03, 0.06, 0.04; the adjusted p of
    # 0.03 and of 0.04 are both set by the product 2 x 0.03, so their error is 2 x se(0.03)
    p, se = [0.01, 0.04, 0.03, math.nan], [0.001, 0.002, 0.003, math.nan]
    np.testing.assert_allclose(holm_adjusted(p)[:3], [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm_mc_se(p, se)[:3], [3 * 0.001, 2 * 0.003, 2 * 0.003])
    assert math.isnan(holm_mc_se(p, se)[3])


def _diff_draws(items, windows, k, budget, B):
    """Written out (as test_report does): sparse k minus dense at ``budget``, the point and each resample."""
    q_draws = np.random.default_rng(SEED).integers(0, QUESTIONS, (B, QUESTIONS))
    d_draws = np.random.default_rng(SEED + 1).integers(0, DOCUMENTS, (B, DOCUMENTS))
    tokens = np.full(DOCUMENTS, TOKENS * WINDOWS_PER_DOCUMENT, dtype=float)
    lb = math.log(budget)
    point, draws = {}, {}
    for kk in (k, "dense"):
        eff, docs = _written_out(items, windows, "enr", kk)
        point[kk] = _interpolate([(d.sum() / tokens.sum(), e.mean()) for e, d in zip(eff, docs)], lb)
        draws[kk] = np.array([_interpolate([(d[d_draws[b]].sum() / tokens[d_draws[b]].sum(), e[q_draws[b]].mean())
                                            for e, d in zip(eff, docs)], lb) for b in range(B)])
    return point[k] - point["dense"], draws[k] - draws["dense"]


def test_every_contrast_carries_its_margin_verdicts_and_p_error_from_a_written_out_computation():
    effects = {("enr", "dense"): (0.2, 0.5, 1.0), ("enr", "16"): (0.25, 0.55, 0.9), ("enr", "4"): (0.1, 0.2, 0.3)}
    results, items, windows = _folder(effects, {key: (0.01, 0.05, 0.3) for key in effects}, seed=11)
    B = 300
    paths = Paths.of(Evidence.from_tables(results, items, windows), n_resamples=B)
    margin = 0.15
    rows = {(r.k, r.budget): r for r in contrasts(paths, (1.03, 1.2), margin=margin)}
    verdicts = set()
    for (k, budget), row in rows.items():
        estimate, diff = _diff_draws(items, windows, k, budget, B)
        ok = diff[np.isfinite(diff)]
        low, high = np.percentile(ok, [5, 95])  # the (1 - 2 x 0.05) percentile interval
        assert row.estimate == pytest.approx(estimate, rel=1e-9)
        assert (row.margin, row.ci90_low, row.ci90_high) == pytest.approx((margin, low, high), rel=1e-9)
        assert row.non_inferior == (low > -margin)  # the one-sided 95% lower bound against -M
        assert row.equivalent == (-margin < low and high < margin)  # TOST
        below, above = ((ok <= 0).sum() + 1) / (ok.size + 1), ((ok >= 0).sum() + 1) / (ok.size + 1)
        p = min(1.0, 2 * min(below, above))
        assert row.p_value == pytest.approx(p) and row.p_mc_se == pytest.approx(math.sqrt(p * (2 - p) / ok.size))
        verdicts.add((row.non_inferior, row.equivalent))
    assert len(verdicts) >= 2  # the margin tells these contrasts apart
    tested = list(rows.values())
    np.testing.assert_allclose([r.p_holm_mc_se for r in tested],
                               holm_mc_se([r.p_value for r in tested], [r.p_mc_se for r in tested]))
    assert all(math.isnan(r.margin) for r in contrasts(paths, (1.2,)))  # no margin: no verdicts


def _row(p_holm, se, **fields):
    return ContrastRow("b", "sparse_minus_dense", 8, 1.25, "enr", "64", "enr k=dense at layer 8", "logodds", -0.2,
                       -0.3, -0.1, p_holm / 2, p_holm, se / 2, se, **fields)


def test_results_md_calls_a_holm_p_within_two_monte_carlo_errors_of_005_borderline_and_states_the_margin():
    rows = [_row(0.048, 0.004, **margin_verdicts(Interval(-0.2, -0.28, -0.12, 0.9), 0.3)),
            _row(0.001, 0.0005, **margin_verdicts(Interval(-0.2, -0.28, -0.12, 0.9), 0.3))]
    text = "\n".join(contrast_lines(rows, True, Analysis(margin=0.3, resamples=2000)))
    assert "0.048 (borderline)" in text and "0.001 (borderline)" not in text
    assert "1 Holm p-values lie within 2 standard errors of 0.05" in text and "Holm p 0.048 ± 0.004" in text
    assert "--resamples" in text and "2000 resamples" in text
    assert "The margin M = 0.3 was stated before use" in text
    assert "| [-0.28, -0.12] | yes | yes |" in text  # inside (-0.3, 0.3): non-inferior and equivalent
    plain = "\n".join(contrast_lines(rows, True))
    assert "Against the margin" not in plain  # no margin, no verdicts


def test_a_sweep_folder_reports_its_margin_resamples_and_test_set(tmp_path, llama, store, ppl_ids):
    import pandas as pd

    from actstore.evaluation.ledger import Ledger
    from actstore.evaluation.report import write_report
    from actstore.evaluation.request import SweepRequest

    from .test_sweep import sweep

    out = tmp_path / "sweep"
    results = sweep(llama, store, out, ppl_ids, layers=[1], ks=[4, None], methods=("enr", "random"),
                    control_seeds=(3,))
    # results.csv's seed: the random control's rows carry theirs, the vectors' none
    assert results.set_index(["method", "k"])["seed"].astype("Float64").fillna(-1).to_dict() == {
        ("enr", "4"): -1, ("enr", "dense"): -1, ("random:3", "4"): 3, ("random:3", "dense"): 3}
    note = "2 of 12 held-out questions also appear in the training data: dropped from the test set."
    write_report(Ledger.open_existing(out), (1.02,), None, Analysis(margin=0.5, resamples=300, test_note=note))
    text = (out / "results.md").read_text()
    assert f"**Test set.** {note}" in text and "300 resamples" in text
    assert "The margin M = 0.5 was stated before use" in text and "| yes | yes |" in text  # a tiny model's tiny shifts
    frame = pd.read_csv(out / "contrasts.csv")
    assert {"p_mc_se", "p_holm_mc_se", "margin", "ci90_low", "ci90_high", "non_inferior", "equivalent"} <= set(frame)
    assert (frame["margin"] == 0.5).all() and frame["equivalent"].all() and (frame["p_mc_se"] > 0).all()
    request = SweepRequest(store=store, data_test="t.json", layers="1", out=out, margin=0.5, resamples=300)
    assert request.analysis == Analysis(0.5, 300)

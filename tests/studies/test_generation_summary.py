"""studies/generation_summary.py and generation_selection.py: the plan's selection over the planned factors only,
amendment 3's capped selection and family, and the committed M1 summary reproduced."""

from __future__ import annotations

import shutil
import subprocess
from io import StringIO
from pathlib import Path

import generation_summary as summary
import numpy as np
import pandas as pd
import pytest
from generation_selection import capped_selection, planned_selection, read_sweep

from .sweeps import STUDIES, config, planned, prompt_config, write_sweep

ADDED = [config("64", 0.125, 1.05), config("64", 0.25, 1.1), config("dense", 0.125, 1.05), config("dense", 0.25, 1.1)]


def _chosen(rows: pd.DataFrame) -> dict[str, float]:
    return {("prompt" if r.method == "prompt" else r.k): float(r.alpha) for r in rows.itertuples()}


def test_the_planned_selection_ignores_the_added_factors_the_sweep_now_selects(tmp_path):
    dense = [config("dense", 0.125, 1.05, (2.0, 2.0, 0.0, 0.0))]  # the best select score, at an added factor
    sweep = read_sweep(write_sweep(tmp_path / "concept0", planned() + dense))
    assert _chosen(sweep.results[sweep.results["selected"]])["dense"] == 0.125  # the sweep's own re-selection
    assert _chosen(planned_selection(sweep)) == {"prompt": 0.0, "64": 0.5, "dense": 0.5}


def test_the_planned_selection_takes_the_best_select_mean_and_a_tie_to_the_smaller_factor(tmp_path):
    configs = planned()
    configs[5] = config("dense", 1.0, 2.0, (1.5, 1.5, 0.0, 0.0))  # dense at 1: the best over the select prompts
    configs[6] = config("dense", 2.0, 2.0, (1.5, 1.5, 9.0, 9.0))  # as good on select (the report half is not read)
    sweep = read_sweep(write_sweep(tmp_path / "concept0", configs, noise=1e-15))  # 0.500000000000001 etc.
    assert _chosen(planned_selection(sweep)) == {"prompt": 0.0, "64": 0.5, "dense": 1.0}


def test_finished_needs_the_planned_grid_and_the_report_and_extended_the_added_factors(tmp_path):
    grid = planned()
    assert summary.finished(write_sweep(tmp_path / "a", grid))
    assert not summary.extended(tmp_path / "a")
    assert summary.extended(write_sweep(tmp_path / "b", grid + ADDED, noise=1e-15))
    assert not summary.finished(write_sweep(tmp_path / "c", grid[:5]))  # cut mid-sweep
    assert not summary.finished(write_sweep(tmp_path / "d", grid, report=False))
    assert not summary.extended(write_sweep(tmp_path / "e", grid + ADDED[:3]))  # one added factor missing


def test_a_demo_folder_is_extended_by_amendment_4s_factors_not_amendment_3s(tmp_path):
    grid = planned()
    demo = [config(k, f, 1.05) for k in ("64", "dense") for f in (0.02, 0.04, 0.08)]
    assert summary.extended(write_sweep(tmp_path / "demo" / "concept0", grid + demo))
    assert not summary.extended(write_sweep(tmp_path / "demo" / "concept1", grid + ADDED))
    assert summary.extended(write_sweep(tmp_path / "instruct" / "concept0", grid + ADDED))


def test_the_capped_selection_keeps_within_the_cap_and_uses_the_gate(tmp_path):
    broken = ("list " * 20,) * 4  # a word 4-gram said three times and more
    configs = [prompt_config(inflation=1.3), *planned()[1:],
               config("dense", 0.125, 1.1, (1.2, 1.2, 1.0, 1.0)),
               config("dense", 0.25, 1.2, (1.4, 1.4, 1.0, 1.0), texts=broken),  # best, but degenerate
               config("64", 0.125, 1.3, (2.0, 2.0, 1.0, 1.0)), config("64", 0.25, 1.6)]  # 64: none within 1.25
    sweep = read_sweep(write_sweep(tmp_path / "concept0", configs))
    assert _chosen(capped_selection(sweep, gated=False)) == {"dense": 0.25}  # the prompt's own 1.3 is over
    assert _chosen(capped_selection(sweep, gated=True)) == {"dense": 0.125}
    dense_at = sweep.items[(sweep.items["k"] == "dense") & (sweep.items["alpha"] == 0.25)]
    assert dense_at["harmonic_gated"].eq(0.0).all() and dense_at["harmonic"].gt(0.0).all()


def _model(out: Path, dense_inflations: list[float]) -> None:
    for c, inflation in enumerate(dense_inflations):
        dense = (1.0 + c / 10, 1.0 + c / 10, 1.0 + c / 10, 0.8)
        configs = planned() + ADDED[:2] + [config("dense", 0.125, inflation, dense),
                                           config("dense", 0.25, inflation, dense)]
        write_sweep(out / "instruct" / f"concept{c}", configs)


def test_the_capped_family_counts_the_concepts_left_out_and_has_its_own_holm(tmp_path):
    _model(tmp_path, [1.05, 1.1, 1.2, 1.5])  # concept 3: dense over the cap everywhere
    models = summary.read_models(tmp_path)
    assert [s.name for s in models[0].capped] == ["concept0", "concept1", "concept2", "concept3"]
    table = summary.capped_table(models, gated=False)
    p1 = table[(table["contrast"] == "P1c prompt - dense") & (table["measure"] == "harmonic")].iloc[0]
    assert (p1["concepts"], p1["left_out"]) == (3, 1)
    # report prompts: the prompt 1.0 each, dense 1 + c/10 and 0.8 (at 0.125: a tie goes to the smaller factor)
    expected = np.mean([1.0 - np.mean([1.0 + c / 10, 0.8]) for c in range(3)])
    assert p1["estimate"] == pytest.approx(expected)
    primary = table[table["contrast"].isin(summary.CAPPED)]
    assert primary["p_holm"].notna().all() and table.loc[~table.index.isin(primary.index), "p_holm"].isna().all()


def test_summarize_writes_both_families_and_says_what_did_not_run(tmp_path):
    _model(tmp_path, [1.05, 1.1, 1.2])
    write_sweep(tmp_path / "instruct" / "concept3", planned())  # finished, no added factors
    write_sweep(tmp_path / "instruct" / "concept4", planned()[:4])  # cut mid-sweep
    summary.summarize(tmp_path)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "not yet run" in text  # no fluency/validation.json
    assert "- instruct: planned grid finished for 4 of 10 concepts (concepts 0, 1, 2, 3; cut or running: " \
        "concept 4; not started: 5). Capped family (factors 0.125 and 0.25 in too): 3 (concepts 0, 1, 2); capped " \
        "not run: 7 (of them finished without all the added factors in: concept 3)." in text
    assert "| instruct | harmonic | P1c prompt - dense | 3 / 6 |" in text
    assert set(pd.read_csv(tmp_path / "contrasts.csv")["family"]) == {"planned", "capped"}


BEFORE_AMENDMENT_3 = "0e78f86"  # the commit whose SUMMARY.md summarised M1's concepts 0-7


def _at_commit(path: str) -> str:
    try:
        done = subprocess.run(["git", "show", f"{BEFORE_AMENDMENT_3}:{path}"], capture_output=True, text=True,
                              cwd=STUDIES.parent, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("no git")
    if done.returncode:
        pytest.skip(f"{BEFORE_AMENDMENT_3} not in this checkout")
    return done.stdout


def _table(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| model | measure | contrast")))
    return lines[start:lines.index("", start)]


def test_the_committed_m1_concepts_give_the_committed_selection_and_table(tmp_path):
    results = STUDIES / "results" / "generation"
    folders = [results / "instruct" / f"concept{c}" for c in range(8)]
    if not all((f / "results.md").is_file() for f in folders):
        pytest.skip("the M1 sweep folders are not here")
    for folder in folders:
        before = pd.read_csv(StringIO(_at_commit(f"studies/results/generation/instruct/{folder.name}/results.csv")),
                             dtype={"k": str})
        expected = {("prompt" if r.method == "prompt" else r.k): float(r.alpha)
                    for r in before[before["selected"]].itertuples()}
        assert _chosen(planned_selection(read_sweep(folder))) == expected, folder.name
        shutil.copytree(folder, tmp_path / "instruct" / folder.name)
    summary.summarize(tmp_path)
    committed = _at_commit("studies/results/generation/SUMMARY.md")
    assert _table((tmp_path / "SUMMARY.md").read_text()) == _table(committed)


def test_a_passed_gate_selects_on_the_gated_harmonic_and_reports_it_beside_the_plans(tmp_path):
    import json

    import generation_fluency

    _model(tmp_path, [1.05, 1.1, 1.2])
    passed = pd.DataFrame({"label": ["broken"] * 60 + ["readable"] * 60, "degenerate": [True] * 60 + [False] * 60,
                           "fluency_rating": [0.2] * 60 + [1.8] * 60})
    (tmp_path / "fluency").mkdir()
    (tmp_path / "fluency" / "validation.json").write_text(json.dumps(generation_fluency.measure(passed)))
    summary.summarize(tmp_path)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "the gate is **used**" in text and "the largest mean of the gated harmonic" in text
    capped = pd.read_csv(tmp_path / "contrasts.csv").query("family == 'capped'")
    assert set(capped["measure"]) == {"concept_rating", "harmonic", "harmonic_gated"}


def test_the_summary_prints_the_concept_raters_validation_or_says_there_is_none(tmp_path):
    assert "not validated" in summary.judge_lines(tmp_path)[0]
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "VALIDATION.md").write_text(
        "# t\n\n| a |\n\nPooled, positive vs negative: mean AUROC **0.9 [0.8, 1.0]**.\n\nPooled, positive vs hard "
        "negative: 0.5.\n\nThe plan's rule: the pooled positive-vs-negative lower bound (0.8) is above 0.6.\n")
    line = summary.judge_lines(tmp_path)[0]
    assert "0.9 [0.8, 1.0]" in line and "is above 0.6" in line and "hard negative" not in line

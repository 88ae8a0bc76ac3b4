"""A sweep folder: resume after a kill, refusal of another setting, readers beside a writer, q-values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from actstore.errors import ActstoreError
from actstore.evaluation.intervals import bh_q_values
from actstore.evaluation.ledger import Ledger
from actstore.evaluation.rows import BASELINE, ConfigKey, ItemRows, WindowRows

from .test_sweep import ITEMS, sweep


def test_interrupted_sweep_resumes_and_drops_a_half_recorded_configuration(tmp_path, llama, store, ppl_ids,
                                                                             monkeypatch):
    out = tmp_path / "sweep"
    original = Ledger.record
    calls = {"n": 0}

    def interrupted(self, row, items, windows, texts=None, kl_rows=None):
        calls["n"] += 1
        if calls["n"] == 4:
            # Items and windows of the 4th configuration reach disk, its results row does not.
            self._append_measures(items, windows, texts, kl_rows)
            raise KeyboardInterrupt
        return original(self, row, items, windows, texts, kl_rows)

    monkeypatch.setattr(Ledger, "record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(llama, store, out, ppl_ids)
    assert len(pd.read_csv(out / "results.csv")) == 3
    monkeypatch.setattr(Ledger, "record", original)
    measured = {"n": 0}

    def counting(self, *args, **kwargs):
        measured["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "record", counting)
    results = sweep(llama, store, out, ppl_ids)
    assert measured["n"] == 8 - 3 and len(results) == 8
    items = pd.read_csv(out / "items.csv", dtype={"k": str})
    # One block of items (both orders) per configuration plus the baseline: the orphaned block was dropped.
    assert len(items) == (8 + 1) * 2 * len(ITEMS)
    assert not items.duplicated(["layer", "k", "alpha", "method", "item"]).any()
    windows = pd.read_csv(out / "windows.csv", dtype={"k": str})
    assert not windows.duplicated(["layer", "k", "alpha", "method", "window"]).any()


def test_a_results_row_cut_by_a_kill_is_not_counted_as_done(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    text = (out / "results.csv").read_text().rstrip("\n")
    (out / "results.csv").write_text(text[: text.rindex("\n") + 30])  # the last row cut after 30 characters
    results = sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    assert len(results) == 2 and results["on_target_shift"].notna().all()


def test_another_setting_in_the_same_folder_is_refused(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    with pytest.raises(ActstoreError, match="another setting"):
        sweep(llama, store, out, ppl_ids[:100], layers=[1], ks=[4])
    with pytest.raises(ActstoreError, match="another setting"):  # one answer order is another setting too
        sweep(llama, store, out, ppl_ids, layers=[1], ks=[4], both_orders=False)


def test_a_reader_leaves_a_running_sweep_alone(tmp_path, llama, store, ppl_ids):
    out = tmp_path / "sweep"
    sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    # A configuration in flight: its items are on disk, its results row is not yet.
    items = pd.read_csv(out / "items.csv", dtype={"k": str})
    in_flight = items[items["method"] == "enr"].head(2 * len(ITEMS)).assign(alpha=9.0)
    in_flight.to_csv(out / "items.csv", mode="a", header=False, index=False)
    before = (out / "items.csv").read_text()
    reader = Ledger.open_existing(out)
    assert (out / "items.csv").read_text() == before  # nothing rewritten under the writer
    assert len(reader.items()) == len(items)  # the in-flight rows are not read as results
    assert len(reader.results()) == 2


def _block(key, n_items=3, seed=0):
    rng = np.random.default_rng(seed)
    items = ItemRows(key, [f"item {i}" for i in range(n_items)], np.arange(n_items), np.zeros(n_items, int),
                     {"score": rng.uniform(size=n_items)})
    windows = WindowRows(key, np.array([0, 1]), rng.uniform(10, 20, 2), np.array([8, 8]))
    return items, windows


def test_q_values_are_benjamini_hochberg_per_behavior_over_every_configuration(tmp_path):
    ledger = Ledger(tmp_path, {"s": 1}, ["behavior", "layer", "method", "k", "alpha", "on_target_shift",
                                         "ppl_inflation", "p_value", "q_value"])
    ledger.record_baseline(*_block(BASELINE))
    p_values = {("a", "enr", 1.0): 0.01, ("a", "enr", 2.0): 0.04, ("a", "enr", 3.0): 0.03, ("b", "enr", 1.0): 0.04,
                ("b", "enr", 2.0): 0.5, ("a", "random:0", 1.0): 0.02}
    for (behavior, method, alpha), p in p_values.items():
        key = ConfigKey(1, method, "4", alpha if behavior == "a" else alpha + 10)
        row = {"behavior": behavior, "layer": 1, "method": method, "k": "4", "alpha": key.alpha,
               "on_target_shift": 0.1, "ppl_inflation": 1.0, "p_value": p, "q_value": np.nan}
        ledger.record(row, *_block(key))
    results = ledger.finish()
    vectors = results[results["method"] == "enr"]
    for behavior in ("a", "b"):
        rows = vectors[vectors["behavior"] == behavior]
        np.testing.assert_allclose(rows["q_value"], bh_q_values(rows["p_value"]))
    assert vectors[vectors["behavior"] == "a"]["q_value"].tolist() == pytest.approx([0.03, 0.04, 0.04])
    # the control is a family of its own: its q is its p
    assert results[results["method"] == "random:0"]["q_value"].tolist() == pytest.approx([0.02])
    on_disk = pd.read_csv(tmp_path / "results.csv")
    np.testing.assert_allclose(on_disk["q_value"], results["q_value"])
    with pytest.raises(ValueError, match="BASELINE"):
        ledger.record_baseline(*_block(ConfigKey(1, "enr", "4", 1.0)))


def test_a_folder_recorded_with_positions_generated_resumes_as_response(tmp_path):
    columns = ["behavior", "layer", "method", "k", "alpha", "on_target_shift", "ppl_inflation", "p_value", "q_value"]
    Ledger(tmp_path, {"s": 1, "positions": "generated"}, columns).record_baseline(*_block(BASELINE))
    Ledger(tmp_path, {"s": 1, "positions": "response"}, columns)  # the same steering, today's name
    with pytest.raises(ActstoreError, match="another setting"):
        Ledger(tmp_path, {"s": 1, "positions": "prompt"}, columns)


def test_a_folder_refuses_a_run_on_another_store_of_the_same_model_and_group(tmp_path, llama, store, ppl_ids):
    # issue 31 #3: the folder recorded the group's name only, so a store with other data (same model, same
    # group name) added its rows to results.csv beside the first store's
    import json
    import shutil

    import actstore

    out = tmp_path / "sweep"
    sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([{"positive": "I kept my word today.", "negative": "I broke my word today."}]))
    actstore.capture_to_store(llama, extra, other, layers="1,2", progress=False)  # the same group, more data
    with pytest.raises(ActstoreError, match="another setting"):
        sweep(llama, other, out, ppl_ids, layers=[1], ks=[4])
    sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])  # the first store resumes its folder


def test_a_folder_of_the_users_own_tables_is_refused_and_left_as_it_was(tmp_path, llama, store, ppl_ids):
    # issue 31 #2: eval --out DIR deleted a user's results.csv, items.csv and windows.csv when DIR was not a
    # sweep folder (no baseline.json)
    out = tmp_path / "mine"
    out.mkdir()
    mine = {name: f"my own {name}\n1,2,3\n" for name in ("results.csv", "items.csv", "windows.csv")}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(ActstoreError, match="not a sweep folder actstore wrote"):
        sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    assert {p.name: p.read_text() for p in out.iterdir()} == mine


def test_a_sweep_killed_before_its_baseline_resumes(tmp_path, llama, store, ppl_ids, monkeypatch):
    out = tmp_path / "sweep"
    monkeypatch.setattr(Ledger, "record_baseline", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])
    monkeypatch.undo()
    assert len(sweep(llama, store, out, ppl_ids, layers=[1], ks=[4])) == 2  # two fractions, not refused


def _one_configuration_folder(path):
    ledger = Ledger(path, {"s": 1}, ["behavior", "layer", "method", "k", "alpha", "on_target_shift",
                                     "ppl_inflation", "p_value", "q_value"])
    ledger.record_baseline(*_block(BASELINE))
    key = ConfigKey(1, "enr", "4", 1.0)
    ledger.record({"behavior": "a", "layer": 1, "method": "enr", "k": "4", "alpha": 1.0, "on_target_shift": 0.1,
                   "ppl_inflation": 1.0, "p_value": 0.5, "q_value": np.nan}, *_block(key, seed=1))
    return ledger, key


def _keep_lines(path, n):
    """The file's header and its first ``n`` rows (whole lines: what a cut at a line's end leaves)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: n + 1]))


@pytest.mark.parametrize("table, rows_kept, remeasured", [
    ("windows.csv", 2 + 1, {"config"}),  # the configuration's 2 windows cut to 1: a tie of counts 2 and 1
    ("items.csv", 3 + 1, {"config"}),
    ("items.csv", 2, {"baseline", "config"}),  # the cut reaches the unsteered rows
    ("windows.csv", 1, {"baseline", "config"}),
])
def test_a_one_configuration_folder_cut_short_is_measured_again(tmp_path, table, rows_kept, remeasured):
    # issue 31 #5: the repair took the most common row count for the full one; in a folder of one configuration
    # beside the unsteered rows the counts tie, so a cut windows.csv was accepted short and a cut items.csv kept
    # the unsteered rows short (every rerun then failed with "unexpected KeyError")
    ledger, key = _one_configuration_folder(tmp_path)
    assert json.loads((tmp_path / "baseline.json").read_text())["rows"] == {"items.csv": 3, "windows.csv": 2}
    _keep_lines(tmp_path / table, rows_kept)
    again = Ledger(tmp_path, {"s": 1}, ledger.columns)
    assert {"config"} <= remeasured and not again.is_done(*key.as_tuple())
    assert (again.baseline is None) == ("baseline" in remeasured)
    kept = pd.read_csv(tmp_path / table, dtype={"k": str})
    assert (kept["method"] != "enr").all()  # the short configuration's rows are gone, to be measured anew
    assert len(kept) == (0 if "baseline" in remeasured else {"items.csv": 3, "windows.csv": 2}[table])


def test_a_folder_without_recorded_row_counts_takes_the_most_rows_not_the_most_common(tmp_path):
    # a folder written before baseline.json recorded its row counts: items from its settings, windows the most
    # rows a configuration has (a cut only takes rows away)
    ledger, key = _one_configuration_folder(tmp_path)
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    del baseline["rows"]
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    _keep_lines(tmp_path / "windows.csv", 2 + 1)
    again = Ledger(tmp_path, {"s": 1}, ledger.columns)
    assert again.baseline is not None and not again.is_done(*key.as_tuple())


def test_results_csv_records_the_seed_of_each_random_control_row(tmp_path):
    # issue 30 §2: a control row's seed in its own column (random:<seed>), empty for every other row; a folder
    # written before the column gets it when read
    from actstore.evaluation.rows import ResultRow, columns, control_seed

    assert control_seed("random:12") == 12 and math.isnan(control_seed("enr")) and math.isnan(control_seed("letter"))
    assert math.isnan(control_seed("random:x")) and columns(ResultRow)[-1] == "seed"
    names = ["behavior", "layer", "method", "k", "alpha", "on_target_shift", "ppl_inflation", "p_value", "q_value",
             "seed"]
    ledger = Ledger(tmp_path, {"s": 1}, names)
    ledger.record_baseline(*_block(BASELINE))
    for method in ("enr", "random:3", "random:11", "letter"):
        key = ConfigKey(1, method, "4", 1.0)
        ledger.record({"behavior": "a", "layer": 1, "method": method, "k": "4", "alpha": 1.0, "on_target_shift": 0.1,
                       "ppl_inflation": 1.0, "p_value": 0.5, "q_value": np.nan}, *_block(key))
    ledger.finish()
    on_disk = pd.read_csv(tmp_path / "results.csv", dtype={"seed": str})
    assert on_disk.set_index("method")["seed"].fillna("").to_dict() == {"enr": "", "random:3": "3",
                                                                         "random:11": "11", "letter": ""}
    old = on_disk.drop(columns=["seed"])  # a folder written before the column
    old.to_csv(tmp_path / "results.csv", index=False)
    again = Ledger(tmp_path, {"s": 1}, names).finish()
    assert again.set_index("method")["seed"].astype("Float64").fillna(-1).to_dict() == {
        "enr": -1, "random:3": 3, "random:11": 11, "letter": -1}


@pytest.mark.parametrize("table, cut", [("windows.csv", "configuration"), ("items.csv", "configuration"),
                                        ("items.csv", "baseline"), ("windows.csv", "baseline")])
def test_a_one_configuration_sweep_cut_short_resumes_to_whole_tables(tmp_path, llama, store, ppl_ids, monkeypatch,
                                                                     table, cut):
    # issue 31 #5 end to end: a cut windows.csv was accepted short with exit 0, a cut items.csv made every rerun
    # fail with "unexpected KeyError"
    out = tmp_path / "sweep"
    grid = {"layers": [1], "ks": [4], "fractions": (0.5,)}
    sweep(llama, store, out, ppl_ids, **grid)
    whole = {name: pd.read_csv(out / name, dtype={"k": str}) for name in ("items.csv", "windows.csv")}
    per_config = len(whole[table]) // 2
    _keep_lines(out / table, per_config + per_config // 2 if cut == "configuration" else per_config // 2)
    recorded = []
    record, record_baseline = Ledger.record, Ledger.record_baseline
    monkeypatch.setattr(Ledger, "record", lambda self, row, items, *a, **k: (recorded.append(items.key.method),
                                                                              record(self, row, items, *a, **k)))
    monkeypatch.setattr(Ledger, "record_baseline", lambda self, *a, **k: (recorded.append("baseline"),
                                                                          record_baseline(self, *a, **k))[1])
    results = sweep(llama, store, out, ppl_ids, **grid)
    assert sorted(recorded) == (["baseline", "enr"] if cut == "baseline" else ["enr"])
    assert len(results) == 1
    for name, frame in whole.items():
        again = pd.read_csv(out / name, dtype={"k": str})
        assert again.groupby("method", dropna=False).size().to_dict() == frame.groupby(
            "method", dropna=False).size().to_dict(), name

"""The command line end to end (click's runner), and clear errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from actstore.cli.main import cli
from actstore.vectors.vector import load_vector


def test_capture_stats_enr_end_to_end(run, tmp_path, tiny_model_dirs, pairs_file):
    store, out = tmp_path / "acts.zarr", tmp_path / "vec.safetensors"
    model = tiny_model_dirs["gpt_neox"]
    result = run("capture", "--model", model, "--data", pairs_file, "--layers", "1,2", "--store", store, "-q")
    assert result.exit_code == 0, result.output
    assert "captured 14 texts (14 samples" in result.output
    result = run("stats", "--store", store, "-q")
    assert result.exit_code == 0, result.output
    assert "class 'pos': n=7" in result.output
    result = run("enr", "--store", store, "--layer", 2, "--k", 4, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote k=4 vector for layer 2 (32 dims" in result.output
    vec = load_vector(out)
    assert np.count_nonzero(vec.vector) == 4 and vec.layer == 2
    result = run("info", store, "--json")
    summary = json.loads(result.output)
    assert summary["models"][0]["classes"] == {"neg": 7, "pos": 7}
    assert summary["models"][0]["has_stats"] is True
    result = run("enr", "--store", store, "--layer", 1, "--dense", "--out", tmp_path / "dense.safetensors")
    assert result.exit_code == 0 and "wrote dense vector" in result.output


def test_click_rejects_bad_flags_before_any_work(run, tmp_path):
    result = run("capture", "--model", "x", "--data", tmp_path / "nope.json", "--store", tmp_path / "s.zarr")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run("capture", "--model", "x", "--data", __file__, "--store", "s", "--position", "first")
    assert result.exit_code == 2 and "'first' is not one of" in result.output


def test_commands_that_load_a_model_take_every_model_spec_field_as_a_flag(run):
    import dataclasses

    from actstore.models.load import ModelSpec

    fields = [f.name for f in dataclasses.fields(ModelSpec)]
    for name in ("capture", "steer"):
        params = [p.name for p in cli.commands[name].params]
        assert [p for p in params if p in fields] == fields, name  # all of them, in the spec's order
    text = run("steer", "--help").output
    assert "--device-map" in text and "--revision" in text and "--trust-remote-code" in text


def test_enr_is_extract_under_its_first_name(run):
    enr, extract = cli.commands["enr"], cli.commands["extract"]
    assert enr.callback is extract.callback and enr.params is extract.params
    assert "Alias of `actstore extract`" in run("enr", "--help").output


def test_k_and_float_lists_are_click_types_that_refuse_bad_lists():
    import click
    import pytest

    from actstore.cli.options import FloatListType, KListType

    assert KListType().convert("8, 16,dense", None, None) == [8, 16, None]
    assert FloatListType().convert("0.5,1,2", None, None) == [0.5, 1.0, 2.0]
    for bad in ("0,8", "8,x", "-1"):
        with pytest.raises(click.BadParameter, match="positive integers and 'dense'"):
            KListType().convert(bad, None, None)
    for bad in ("", "1,nan", "a"):
        with pytest.raises(click.BadParameter, match="numbers"):
            FloatListType().convert(bad, None, None)


def test_console_script_runs_as_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "actstore.cli.main", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "actstore" in result.stdout


def test_capture_in_shards_from_the_command_line(run, tmp_path, tiny_model_dirs, pairs_file):
    model, store, whole = tiny_model_dirs["qwen2"], tmp_path / "s.zarr", tmp_path / "w.zarr"
    for index in (1, 0):
        result = run("capture", "--model", model, "--data", pairs_file, "--layers", "1", "--store", store,
                     "--shard", f"{index}/2", "-q")
        assert result.exit_code == 0, result.output
    assert "shard 0/2: captured 7 of its 7 texts" in result.output and "2/2 shards merged" in result.output
    run("capture", "--model", model, "--data", pairs_file, "--layers", "1", "--store", whole, "-q")
    import actstore

    got, want = actstore.open_store(store), actstore.open_store(whole)
    # Same rows in the same order; values equal up to float noise of other batch compositions
    # (each shard batches its own texts by length).
    assert got["text_hash"].values.tolist() == want["text_hash"].values.tolist()
    np.testing.assert_allclose(got.acts.values, want.acts.values, rtol=1e-5, atol=1e-6)
    for bad in ("2/2", "1", "a/b", "-1/2"):
        result = run("capture", "--model", model, "--data", pairs_file, "--store", store, "--shard", bad)
        assert result.exit_code == 2 and "expected I/N with 0 <= I < N" in result.output, result.output
    result = run("capture", "--model", model, "--data", pairs_file, "--store", store, "--shards", "2")
    assert result.exit_code == 2 and "--shards goes with --scheduler" in result.output
    result = run("capture", "--model", model, "--data", pairs_file, "--store", store, "--scheduler", "threads")
    assert result.exit_code == 1 and "a cluster capture needs dask.distributed" in result.output


def test_quiet_silences_transformers_loading_bar(tmp_path, tiny_model_dirs, pairs_file):
    """`-q` leaves no progress bar on stderr, transformers' "Loading weights" included (it is drawn
    without -q: the same command shows it, so the check can fail)."""
    model = tiny_model_dirs["gpt_neox"]

    def stderr(*extra):
        args = [sys.executable, "-m", "actstore.cli.main", "capture", "--model", str(model), "--data",
                str(pairs_file), "--layers", "1", "--store", str(tmp_path / f"s{len(extra)}.zarr"), *extra]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "Loading weights" in stderr()
    assert "Loading weights" not in stderr("-q")

"""capture --stats-only: moments reduced during the forward passes equal capture + stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.errors import ActstoreError, StoreError
from actstore.stores import ActivationWriter


def assert_same_stats(got, want, rtol=1e-9, atol=1e-12):
    assert got["class"].values.tolist() == want["class"].values.tolist()
    np.testing.assert_array_equal(got["count"].values, want["count"].values)
    np.testing.assert_allclose(got["mean"].values, want["mean"].values, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got["var"].values, want["var"].values, rtol=rtol, atol=atol)


# Shards batch the texts at their edges with other neighbours than one process does: float32 rounding.
SHARDED = {"rtol": 1e-5, "atol": 1e-9}


@pytest.mark.parametrize("position", ["all", "last", "mean"])
def test_stats_only_equals_capture_then_stats(tmp_path, tiny_model_dirs, pairs_file, position):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    full, only = tmp_path / "full.zarr", tmp_path / "only.zarr"
    actstore.capture_to_store(model, pairs_file, full, layers="0,2,3", position=position, window=3, progress=False)
    report = actstore.capture_to_store(model, pairs_file, only, layers="0,2,3", position=position, window=3,
                                       stats_only=True, progress=False)
    want = actstore.compute_stats(full)
    assert report.n_samples_written == int(want["count"].sum()) // 3
    assert_same_stats(actstore.compute_stats(only), want)
    assert_same_stats(actstore.open_stats(only), want)
    assert actstore.open_store(only).sizes["sample"] == 0  # no activations were stored
    vec_full, vec_only = actstore.build_vector(full, 2, "enr", 4), actstore.build_vector(only, 2, "enr", 4)
    np.testing.assert_array_equal(vec_full.indices, vec_only.indices)


def test_stats_only_appends_files_with_new_classes_and_resumes(tmp_path, tiny_model_dirs, pairs_file, monkeypatch,
                                                                interrupt_after):
    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("\n".join(json.dumps({"text": f"A neutral sentence number {i}.", "label": "neutral"})
                                 for i in range(5)))
    full, only = tmp_path / "full.zarr", tmp_path / "only.zarr"
    for data in (pairs_file, labeled):
        actstore.capture_to_store(model, data, full, layers="1", position="all", window=2, progress=False)

    # Interrupt the first stats-only capture after its second commit, then resume it.
    real = interrupt_after(ActivationWriter, "write_moments", 3)
    with pytest.raises(KeyboardInterrupt):
        actstore.capture_to_store(model, pairs_file, only, layers="1", position="all", window=2, stats_only=True,
                                  progress=False)
    monkeypatch.setattr(ActivationWriter, "write_moments", real)
    info = actstore.store_info(only)["models"][0]
    assert info["runs"][0]["texts_done"] == 4 and info["stats_only"]
    report = actstore.capture_to_store(model, pairs_file, only, layers="1", position="all", window=2, stats_only=True,
                                       resume=True, progress=False)
    assert report.skipped == 4
    actstore.capture_to_store(model, labeled, only, layers="1", position="all", window=2, stats_only=True, progress=False)
    assert_same_stats(actstore.compute_stats(only), actstore.compute_stats(full))
    want = actstore.compute_stats(full)
    counts = dict(zip(want["class"].values.tolist(), want["count"].values[:, 0].tolist(), strict=True))
    assert actstore.store_info(only)["models"][0]["classes"] == counts


def test_stats_only_and_full_captures_do_not_mix(tmp_path, tiny_model_dirs, pairs_file):
    model = actstore.load_model(str(tiny_model_dirs["gpt_neox"]))
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(model, pairs_file, store, layers="1", stats_only=True, progress=False)
    with pytest.raises(StoreError, match="stats_only is True there but False now"):
        actstore.capture_to_store(model, pairs_file, store, layers="1", name=None, resume=True, progress=False)


def test_stats_only_from_the_command_line(tmp_path, tiny_model_dirs, pairs_file):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "--model", str(tiny_model_dirs["qwen2"]), "--data", str(pairs_file),
                                 "--layers", "all", "--position", "all", "--store", str(store), "--stats-only",
                                 "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "statistics only" in result.output
    result = runner.invoke(cli, ["enr", "--store", str(store), "--layer", "3", "--k", "4",
                                 "--out", str(tmp_path / "v.safetensors")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["enr", "--store", str(store), "--layer", "3", "--k", "4", "--whiten",
                                 "--out", str(tmp_path / "w.safetensors")], catch_exceptions=False)
    assert result.exit_code == 1 and "stats-only" in result.output


def test_info_says_a_group_holds_statistics_only(tmp_path, tiny_model_dirs, pairs_file):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), pairs_file, store, layers="1", stats_only=True, progress=False)
    result = CliRunner().invoke(cli, ["info", str(store)], catch_exceptions=False)
    assert "statistics only (captured with --stats-only" in result.output
    assert "classes: neg=7, pos=7" in result.output


def test_stats_only_in_shards_merges_their_moments_in_order(tmp_path, tiny_model_dirs, pairs_file):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    one, sharded = tmp_path / "one.zarr", tmp_path / "sharded.zarr"
    actstore.capture_to_store(model, pairs_file, one, layers="0,2", position="all", window=2, stats_only=True,
                              progress=False)
    late = actstore.capture_to_store(model, pairs_file, sharded, layers="0,2", position="all", window=2, stats_only=True,
                                     shard=(1, 2), progress=False)
    assert late.merged_shards == 0  # shard 0 is not done: nothing merged yet
    with pytest.raises(ActstoreError, match="no up-to-date statistics|no statistics|no samples"):
        actstore.open_stats(sharded)
    first = actstore.capture_to_store(model, pairs_file, sharded, layers="0,2", position="all", window=2, stats_only=True,
                                      shard=(0, 2), progress=False)
    assert first.merged_shards == 2
    assert_same_stats(actstore.compute_stats(sharded), actstore.compute_stats(one), **SHARDED)
    info = actstore.store_info(sharded)["models"][0]
    assert info["stats_only"] and info["runs"][0]["complete"]


def test_stats_only_on_a_local_cluster_equals_one_process(tmp_path, tiny_model_dirs, pairs_file):
    pytest.importorskip("distributed")
    model = str(tiny_model_dirs["llama"])
    one, cluster = tmp_path / "one.zarr", tmp_path / "cluster.zarr"
    actstore.capture_to_store(model, pairs_file, one, layers="1", position="all", stats_only=True, progress=False)
    reports = actstore.capture_on_cluster(model, pairs_file, cluster, layers="1", scheduler="local:1", shards=3,
                                          position="all", stats_only=True)
    assert [r.merged_shards for r in reports] == [3, 3, 3]
    assert_same_stats(actstore.compute_stats(cluster), actstore.compute_stats(one), **SHARDED)

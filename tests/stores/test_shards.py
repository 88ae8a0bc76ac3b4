"""Sharded capture: disjoint shards written at once equal a single-process capture, row for row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import StoreError

pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")  # long CAA texts, tiny models


SHARD_CHILD = """
import sys, actstore
actstore.capture_to_store(sys.argv[1], sys.argv[2], sys.argv[3], layers="1,3", shard=(int(sys.argv[4]), 2),
                          window=4, batch_size=2, offset=0, progress=False)
"""


@pytest.fixture
def many_pairs(tmp_path, shared_data):
    # 12 A/B pairs: 48 texts, each pair followed by its option-swapped twin.
    pairs = json.loads((shared_data / "caa-pairs" / "sycophancy" / "train.json").read_text())[:12]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs))
    return path


def test_two_shards_running_at_once_equal_one_process(same_store, tmp_path, tiny_model_dirs, many_pairs):
    model = str(tiny_model_dirs["llama"])
    reference = tmp_path / "one.zarr"
    # offset=0: the final ')' this test was written for (an A/B set now defaults to the answer letter,
    # where this tiny model's variances are 0 or ~1e-18 apart, which the rtol below cannot compare).
    actstore.capture_to_store(model, many_pairs, reference, layers="1,3", window=4, batch_size=2, offset=0,
                              progress=False)

    store = tmp_path / "sharded.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", SHARD_CHILD, model, str(many_pairs), str(store), str(i)],
                                 env=env, stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    same_store(store, reference)
    group = zarr.open_group(store, mode="r")["tiny-llama"]
    runs = group.attrs["runs"]
    assert len(runs) == 1 and runs[0]["complete"] and runs[0]["merged"] == 2
    assert list(group["shards"].group_keys()) == []  # staging groups removed once merged
    stats, want = actstore.compute_stats(store), actstore.compute_stats(reference)
    np.testing.assert_allclose(stats["var"].values, want["var"].values, rtol=1e-12)


def test_shards_merge_in_order_and_only_finished_ones_show(same_store, tmp_path, tiny_model_dirs, many_pairs):
    model = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    reference = tmp_path / "one.zarr"
    actstore.capture_to_store(model, many_pairs, reference, layers="0,1", position="all", window=3, progress=False)
    want = actstore.open_store(reference)
    first_rows_of = {int(t): i for i, t in reversed(list(enumerate(want["text_index"].values)))}

    store = tmp_path / "sharded.zarr"
    reports = {}
    for index in (2, 0, 1):  # the last shard finishes first: nothing can be merged yet
        reports[index] = actstore.capture_to_store(model, many_pairs, store, layers="0,1", position="all", window=3,
                                                   shard=(index, 3), progress=False)
        visible = actstore.open_store(store).sizes["sample"]
        if index == 2:
            assert reports[2].merged_shards == 0 and visible == 0
        elif index == 0:
            # Shard 0 holds texts 0..15 of the 48; its rows are visible, shard 2's are not yet.
            assert reports[0].merged_shards == 1 and visible == first_rows_of[16]
    assert reports[1].merged_shards == 3
    same_store(store, reference)
    again = actstore.capture_to_store(model, many_pairs, store, layers="0,1", position="all", window=3, shard=(1, 3),
                                      progress=False)
    assert again.n_texts_captured == 0  # a rerun of a finished shard does nothing
    same_store(store, reference)


def test_an_unfinished_sharded_capture_blocks_other_captures(tmp_path, tiny_model_dirs, many_pairs):
    model = actstore.load_model(str(tiny_model_dirs["gpt_neox"]))
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(model, many_pairs, store, layers="1", shard=(1, 2), progress=False)
    with pytest.raises(StoreError, match="is capturing .* in 2 shards; run \\(or rerun\\) the unfinished shards"):
        actstore.capture_to_store(model, many_pairs, store, layers="1", resume=True, progress=False)
    with pytest.raises(StoreError, match="interrupted capture .* rerun its 2 shards"):
        actstore.capture_to_store(model, many_pairs, store, layers="1", shard=(0, 3), progress=False)
    with pytest.raises(StoreError, match="shard 2/2: expected 0 <= i < n"):
        actstore.capture_to_store(model, many_pairs, store, layers="1", shard=(2, 2), progress=False)
    actstore.capture_to_store(model, many_pairs, store, layers="1", shard=(0, 2), progress=False)
    assert actstore.open_store(store).sizes["sample"] == 48


def test_capture_on_a_local_dask_cluster_equals_one_process(same_store, tmp_path, tiny_model_dirs, many_pairs):
    pytest.importorskip("distributed")
    from actstore.capture import capture_on_cluster

    model = str(tiny_model_dirs["gemma3_text"])
    reference = tmp_path / "one.zarr"
    actstore.capture_to_store(model, many_pairs, reference, layers="0,2", position="mean", progress=False)
    store = tmp_path / "cluster.zarr"
    reports = capture_on_cluster(model, many_pairs, store, layers="0,2", scheduler="local:2", shards=3, position="mean")
    assert [r.n_texts for r in reports] == [16, 16, 16]
    assert reports[0].merged_shards == 3
    same_store(store, reference)


def test_info_shows_a_sharded_capture_in_progress(tmp_path, tiny_model_dirs, many_pairs):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    store = tmp_path / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), many_pairs, store, layers="1", shard=(1, 2), progress=False)
    result = CliRunner().invoke(cli, ["info", str(store)], catch_exceptions=False)
    assert ("0/48 texts, each pair with its option-swapped twin, 0/2 shards merged (run the unfinished ones with "
            "--shard I/N)") in result.output

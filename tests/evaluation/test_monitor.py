"""Vectors as monitors: lazy projections, AUROC and Cohen's d with intervals, ``actstore project``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.errors import ActstoreError, VectorError
from actstore.evaluation.intervals import separation_intervals
from actstore.evaluation.monitor import class_scores, monitor, project, separation
from actstore.vectors.build import build_vector
from actstore.vectors.vector import save_vector


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("monitor")
    pairs = [{"positive": f"I gladly helped person {i} today.", "negative": f"I cruelly hurt person {i} today."}
             for i in range(24)]
    train, test = root / "train.json", root / "test.json"
    train.write_text(json.dumps(pairs[:16]))
    test.write_text(json.dumps(pairs[16:]))
    model = str(tiny_model_dirs["llama"])
    actstore.capture_to_store(model, train, root / "train.zarr", layers="1,2", progress=False)
    actstore.capture_to_store(model, test, root / "test.zarr", layers="1,2", progress=False)
    return root / "train.zarr", root / "test.zarr"


def test_projection_is_lazy_and_equals_the_dot_product(stores):
    train, test = stores
    vector = build_vector(train, 2, "enr", None)
    projection = project(test, vector)
    assert projection.chunks is not None  # dask-backed: nothing read yet
    acts = actstore.open_store(test).acts.sel(layer=2).values.astype(np.float64)
    expected = acts @ vector.vector.astype(np.float64) / np.linalg.norm(vector.vector.astype(np.float64))
    np.testing.assert_allclose(projection.values, expected, rtol=1e-6)
    assert list(projection["class"].values[:2]) == list(actstore.open_store(test)["class"].values[:2])


def test_auroc_and_d_equal_their_definitions():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    pos, neg = rng.normal(0.8, 1, 60), rng.normal(0, 1.5, 60)
    pos[:5] = neg[:5]  # ties count half
    auroc, d = separation_intervals(pos, neg, paired=True)
    assert auroc.estimate == pytest.approx(roc_auc_score(np.r_[np.ones(60), np.zeros(60)], np.r_[pos, neg]))
    pooled = np.sqrt((59 * pos.var(ddof=1) + 59 * neg.var(ddof=1)) / 118)
    assert d.estimate == pytest.approx((pos.mean() - neg.mean()) / pooled)
    assert auroc.low < auroc.estimate < auroc.high and d.low < d.estimate < d.high
    # an interval that can fail: with no separation it covers 0.5 and 0
    a0, d0 = separation_intervals(rng.normal(0, 1, 200), rng.normal(0, 1, 200), paired=False)
    assert a0.low < 0.5 < a0.high and d0.low < 0 < d0.high


def test_pairs_are_aligned_by_pair_id_or_taken_as_two_samples():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    pos, neg, paired = class_scores(values, ["neg", "pos", "pos", "neg"], [7, 5, 7, 5])
    assert paired and pos.tolist() == [2.0, 3.0] and neg.tolist() == [4.0, 1.0]
    _, _, paired = class_scores(values, ["neg", "pos", "pos", "neg"], [7, 5, 7, 9])
    assert not paired
    with pytest.raises(ActstoreError, match="'yes' has no samples"):
        class_scores(values, ["neg", "pos", "pos", "neg"], [1, 2, 3, 4], pos="yes")


def test_a_separating_vector_beats_a_random_one_on_held_out_pairs(stores):
    train, test = stores
    vector = build_vector(train, 2, "enr", None)
    good = separation(project(test, vector))
    assert good.paired and good.n_pos == good.n_neg == 8
    random = vector.replace(vector=np.random.default_rng(0).normal(size=vector.hidden_size).astype(np.float32))
    flipped = separation(project(test, random))
    assert good.auroc.estimate > flipped.auroc.estimate or good.auroc.estimate == 1.0
    # flipping the vector mirrors AUROC and d exactly
    negated = vector.replace(vector=-vector.vector)
    mirror = separation(project(test, negated))
    assert mirror.auroc.estimate == pytest.approx(1 - good.auroc.estimate)
    assert mirror.cohens_d.estimate == pytest.approx(-good.cohens_d.estimate)


def test_monitor_writes_projections_table_and_plot(stores, tmp_path):
    import xarray as xr

    train, test = stores
    vectors = [("dense", build_vector(train, 2, "enr", None)), ("pca", build_vector(train, 1, "pca", 4))]
    table = monitor(test, vectors, tmp_path / "m")
    assert list(table["vector"]) == ["dense", "pca"] and list(table["layer"]) == [2, 1]
    back = xr.open_zarr(tmp_path / "m" / "projections.zarr", consolidated=False)
    np.testing.assert_allclose(back["pca"].values, project(test, vectors[1][1]).values, rtol=1e-6)
    assert set(back["class"].values.astype(str)) == {"pos", "neg"}
    assert (tmp_path / "m" / "projections.png").stat().st_size > 10_000


def test_cli_project_and_its_refusals(stores, tmp_path):
    train, test = stores
    vec = save_vector(build_vector(train, 2, "enr", 4), tmp_path / "v.safetensors")
    runner = CliRunner()
    result = runner.invoke(cli, ["project", "--store", str(test), "--vector", str(vec), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "paired" in result.output
    printed = runner.invoke(cli, ["project", "--store", str(test), "--vector", str(vec)])  # no --out: print only
    assert printed.exit_code == 0, printed.output
    assert printed.output.splitlines()[0] == result.output.splitlines()[0] and "wrote" not in printed.output
    other = build_vector(train, 2, "enr", 4).with_info(layer=3)
    save_vector(other, tmp_path / "l3.safetensors")
    bad = runner.invoke(cli, ["project", "--store", str(test), "--vector", str(tmp_path / "l3.safetensors"),
                              "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "layer 3" in bad.output and "Traceback" not in bad.output
    with pytest.raises(VectorError, match="zero"):
        zero = build_vector(train, 2, "enr", 4)
        zero.vector[:] = 0
        project(test, zero)

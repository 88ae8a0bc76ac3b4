"""Streaming within-class covariance, Ledoit-Wolf shrinkage and the whitened ENR vector."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.stats.covariance import layer_covariance, ledoit_wolf_shrinkage
from actstore.vectors.build import build
from actstore.vectors.directions import top_k_indices
from actstore.vectors.methods import LayerInputs
from actstore.vectors.vector import load_vector


def sklearn_ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """scikit-learn's ledoit_wolf_shrinkage (assume_centered=True), written out on the samples."""
    n, p = x.shape
    x2 = x**2
    emp_cov_trace = x2.sum(axis=0) / n
    mu = emp_cov_trace.sum() / p
    beta_ = np.sum(x2.T @ x2)
    delta_ = np.sum((x.T @ x) ** 2) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dirs, shared_data):
    path = tmp_path_factory.mktemp("cov") / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), shared_data / "bias-pairs" / "morality" / "train.json",
                              path, layers="1,2", progress=False)
    return path


def test_layer_covariance_matches_numpy(store):
    cov = layer_covariance(store, 2)
    ds = actstore.open_store(store)
    acts = ds.acts.sel(layer=2).values.astype(np.float64)
    for label in ("pos", "neg"):
        rows = acts[ds["class"].values == label]
        centred = rows - rows.mean(0)
        c = cov.classes.index(label)
        np.testing.assert_allclose(cov.comoment[c], centred.T @ centred, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cov.fourth[c], np.sum(np.sum(centred**2, axis=1) ** 2), rtol=1e-9)
        np.testing.assert_allclose(cov.class_covariance(label), np.cov(rows, rowvar=False), rtol=1e-8, atol=1e-10)


def test_ledoit_wolf_matches_the_sklearn_formula(store):
    cov = layer_covariance(store, 1)
    ds = actstore.open_store(store)
    acts = ds.acts.sel(layer=1).values.astype(np.float64)
    labels = ds["class"].values
    centred = np.concatenate([acts[labels == c] - acts[labels == c].mean(0) for c in ("pos", "neg")])
    _, shrinkage = cov.pooled(["pos", "neg"])
    expected = sklearn_ledoit_wolf_shrinkage(centred)
    assert 0 < expected < 1
    assert shrinkage == pytest.approx(expected, rel=1e-8)
    n = centred.shape[0]
    assert ledoit_wolf_shrinkage(centred.T @ centred / n, float(np.sum(np.sum(centred**2, 1) ** 2)), n) == \
        pytest.approx(expected, rel=1e-8)


def whitened_vector(stats, cov, k):
    return build("whitened", LayerInputs(stats, cov.layer, "pos", "neg", covariance=lambda: cov), k)


def test_whitened_vector_ranks_whitened_enr_and_dense_is_the_plain_vector(store):
    stats = actstore.compute_stats(store)
    cov = layer_covariance(store, 2)
    dense = whitened_vector(stats, cov, None)
    plain = actstore.vectors.build.vector_from_stats(stats, 2, None)
    np.testing.assert_allclose(dense.vector, plain.vector, rtol=1e-4, atol=1e-5)
    # Direct computation of what is ranked.
    pooled, shrinkage = cov.pooled(["pos", "neg"])
    sigma = (1 - shrinkage) * pooled + shrinkage * np.trace(pooled) / 32 * np.eye(32)
    w, q = np.linalg.eigh(sigma)
    inv_sqrt = q @ np.diag(w**-0.5) @ q.T
    v = cov.means[cov.classes.index("pos")] - cov.means[cov.classes.index("neg")]
    u = inv_sqrt @ v
    var_pos = np.diag(inv_sqrt @ cov.class_covariance("pos") @ inv_sqrt) / cov.counts[cov.classes.index("pos")]
    var_neg = np.diag(inv_sqrt @ cov.class_covariance("neg") @ inv_sqrt) / cov.counts[cov.classes.index("neg")]
    enr = np.abs(u) / np.sqrt(var_pos + var_neg)
    sparse = whitened_vector(stats, cov, 5)
    assert sorted(sparse.indices.tolist()) == sorted(top_k_indices(enr, 5).tolist())
    np.testing.assert_allclose(sparse.enr, enr, rtol=1e-4)
    kept = np.zeros(32)
    kept[sparse.indices] = u[sparse.indices]
    np.testing.assert_allclose(sparse.extra["vector_whitened"], kept, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sparse.vector, np.linalg.inv(inv_sqrt) @ kept, rtol=1e-4, atol=1e-5)
    assert sparse.info.method == "whitened"


def test_cli_enr_whiten(store, tmp_path):
    out = tmp_path / "w.safetensors"
    result = CliRunner().invoke(cli, ["enr", "--store", str(store), "--layer", "2", "--k", "6", "--whiten",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "k=6 whitened vector" in result.output and ", shrinkage " in result.output
    vec = load_vector(out)
    assert vec.info.method == "whitened" and np.count_nonzero(vec.extra["vector_whitened"]) == 6
    result = CliRunner().invoke(cli, ["enr", "--store", str(store), "--layer", "3", "--k", "6", "--whiten",
                                      "--out", str(out)])
    assert result.exit_code == 1 and "layer 3 was not captured" in result.output


@pytest.mark.parametrize("spec", ["half:2/2", "bootstrap:3"])
def test_the_covariance_of_a_resample_equals_numpy_on_its_rows_repeated(store, spec):
    from actstore.stats.subsets import row_weights, subset_statistics
    from actstore.stores.group import StoreGroup

    group = StoreGroup.open(store)
    stats = subset_statistics(group, spec)
    cov = actstore.stats.covariance.group_covariance(group, 2, stats)
    weights = row_weights(group, spec)
    ds = actstore.open_store(store)
    acts = np.repeat(ds.acts.sel(layer=2).values.astype(np.float64), weights, axis=0)
    labels = np.repeat(ds["class"].values, weights)
    full = layer_covariance(store, 2)
    for label in ("pos", "neg"):
        rows = acts[labels == label]
        centred = rows - rows.mean(0)
        c = cov.classes.index(label)
        assert cov.counts[c] == len(rows) < full.counts[c] * (0.6 if spec.startswith("half") else 2)
        np.testing.assert_allclose(cov.comoment[c], centred.T @ centred, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cov.fourth[c], np.sum(np.sum(centred**2, axis=1) ** 2), rtol=1e-9)
        assert not np.allclose(cov.comoment[c], full.comoment[c])  # not every row's
    # the whitened vector of the resample: its own covariance and means, not the full set's
    whitened = build("whitened", LayerInputs(stats, 2, "pos", "neg", covariance=lambda: cov), 4)
    mixed = build("whitened", LayerInputs(stats, 2, "pos", "neg", covariance=lambda: full), 4)
    assert not np.allclose(whitened.vector, mixed.vector)

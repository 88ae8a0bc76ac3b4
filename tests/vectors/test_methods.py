"""Every extraction method from one store (pca of pair differences, probe, LDA),
each pinned against a written-out computation, scikit-learn, or repeng's own code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.stats.covariance import layer_covariance
from actstore.errors import VectorError
from actstore.vectors.build import build_vector
from actstore.vectors.methods import EXTRACTION_METHODS
from actstore.vectors.directions import difference_moments, lda_direction, pair_rows
from actstore.vectors.probe import fit_probe, pooled_scale
from actstore.vectors.vector import load_vector

SUBJECTS = ["the old man", "my neighbour", "a stranger", "the teacher", "her cousin", "the driver", "our guest",
            "the child", "the nurse", "a tourist", "the baker", "his friend", "the clerk", "a farmer",
            "the pilot", "my aunt", "the waiter", "a student", "the doctor", "the painter"]


@pytest.fixture(scope="module")
def many_pairs(tmp_path_factory):
    pairs = []
    for who in SUBJECTS:
        pairs.append({"positive": f"I helped {who} and smiled.", "negative": f"I hurt {who} and laughed."})
        pairs.append({"positive": f"We thanked {who} warmly today.", "negative": f"We insulted {who} loudly today."})
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(pairs))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dirs, many_pairs):
    path = tmp_path_factory.mktemp("methods") / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), many_pairs, path, layers="1,2", progress=False)
    actstore.compute_stats(path)
    return path


def _layer(store, layer):
    ds = actstore.open_store(store)
    return (ds.acts.sel(layer=layer).values.astype(np.float64), ds["class"].values.astype(str),
            ds["pair_id"].values)


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_pca_is_the_first_axis_of_the_centred_pair_differences(store):
    acts, classes, pair_ids = _layer(store, 2)
    diffs = []
    for pid in np.unique(pair_ids):
        pos = acts[(pair_ids == pid) & (classes == "pos")]
        neg = acts[(pair_ids == pid) & (classes == "neg")]
        diffs.append(pos[0] - neg[0])
    diffs = np.array(diffs)
    centred = diffs - diffs.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    vector = build_vector(store, 2, "pca", None)
    assert abs(_cos(vector.vector, axis)) > 0.99999
    mean_diff = acts[classes == "pos"].mean(0) - acts[classes == "neg"].mean(0)
    assert vector.vector.astype(np.float64) @ mean_diff > 0  # sign-aligned to the mean difference
    # steered as (u . v) u: its projection onto v's direction is v's own along u
    unit = vector.vector / np.linalg.norm(vector.vector)
    np.testing.assert_allclose(vector.vector, (unit @ mean_diff) * unit, rtol=1e-4, atol=1e-6)
    assert vector.info.method == "pca" and vector.info.detail["pairs"] == str(len(diffs))
    assert 0 < float(vector.info.detail["explained_variance_ratio"]) <= 1


def test_difference_moments_merge_many_blocks_exactly():
    import dask.array as da

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(90, 6)) * [1, 10, 100, 1, 1, 1e3] + 500
    pos_rows, neg_rows = np.arange(0, 90, 2), np.arange(1, 90, 2)
    n, mean, scatter = difference_moments(da.from_array(acts, chunks=(7, 6)), pos_rows, neg_rows, split_every=3)
    diffs = acts[pos_rows] - acts[neg_rows]
    assert n == 45
    np.testing.assert_allclose(mean, diffs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scatter, (diffs - diffs.mean(0)).T @ (diffs - diffs.mean(0)), rtol=1e-10)


def test_pair_rows_join_by_pair_id_and_refuse_several_rows_per_text():
    classes = np.array(["neg", "pos", "pos", "neg", "pos", "other"])
    pair_ids = np.array([5, 5, 7, 7, 9, 9])
    pos_rows, neg_rows = pair_rows(classes, pair_ids, "pos", "neg")
    assert pos_rows.tolist() == [1, 2] and neg_rows.tolist() == [0, 3]  # pair 9 has no neg
    with pytest.raises(VectorError, match="--position last"):
        pair_rows(np.array(["pos", "pos", "neg"]), np.array([1, 1, 1]), "pos", "neg")


def test_probe_equals_sklearn_and_the_streaming_fit_agrees(store):
    from sklearn.linear_model import LogisticRegression

    acts, classes, _ = _layer(store, 2)
    stats = actstore.open_stats(store)
    centre, sd = pooled_scale(stats, 2, "pos", "neg")
    labels = (classes == "pos").astype(int)
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=100_000).fit((acts - centre) / sd, labels)
    w_mem, _, how_mem = fit_probe(acts, labels, centre, sd)
    w_stream, b_stream, how_stream = fit_probe(acts, labels, centre, sd, max_in_memory=0)
    assert (how_mem, how_stream) == ("sklearn", "streaming-lbfgs")
    assert _cos(w_mem, reference.coef_[0]) > 0.99999
    assert _cos(w_stream, reference.coef_[0]) > 0.999
    assert b_stream == pytest.approx(float(reference.intercept_[0]), abs=0.05)
    vector = build_vector(store, 2, "probe", None)
    assert _cos(vector.vector, reference.coef_[0] / sd) > 0.99999  # mapped back to the residual basis
    assert vector.info.detail["probe_fit"] == "sklearn"


def test_lda_is_the_shrunk_pooled_covariance_solved_against_v(store):
    from sklearn.covariance import ledoit_wolf_shrinkage

    acts, classes, _ = _layer(store, 1)
    groups = [acts[classes == c] for c in ("pos", "neg")]
    centred = np.concatenate([g - g.mean(0) for g in groups])
    pooled = centred.T @ centred / (len(centred) - 2)
    shrinkage = ledoit_wolf_shrinkage(centred, assume_centered=True)
    sigma = (1 - shrinkage) * pooled + shrinkage * np.trace(pooled) / pooled.shape[0] * np.eye(pooled.shape[0])
    expected = np.linalg.solve(sigma, groups[0].mean(0) - groups[1].mean(0))
    vector = build_vector(store, 1, "lda", None)
    assert _cos(vector.vector, expected) > 0.99999
    assert float(vector.info.detail["shrinkage"]) == pytest.approx(shrinkage, rel=1e-6)
    direction = lda_direction(actstore.open_stats(store), layer_covariance(store, 1))
    # ranked by the standardised weight |w_i| sd_i
    np.testing.assert_allclose(direction.rank, np.abs(expected / np.linalg.norm(expected)) * np.sqrt(np.diag(pooled)),
                               rtol=1e-5)


@pytest.mark.parametrize("method", ["pca", "probe", "lda"])
def test_k_sparse_keeps_the_k_best_ranked_coordinates(store, method):
    dense = build_vector(store, 2, method, None)
    sparse = build_vector(store, 2, method, 5)
    assert np.count_nonzero(sparse.vector) == 5 and sparse.k == 5
    assert set(np.flatnonzero(sparse.vector)) == set(sparse.indices[:5].tolist())
    assert sparse.info.method == method and dense.info.k is None
    if method == "pca":  # ranked by the dense direction's magnitudes
        order = np.argsort(-np.abs(dense.vector), kind="stable")[:5]
        assert set(order.tolist()) == set(sparse.indices.tolist())


def test_every_method_writes_the_same_file_through_the_cli(store, tmp_path):
    runner = CliRunner()
    for method in EXTRACTION_METHODS:
        out = tmp_path / f"{method}.safetensors"
        result = runner.invoke(cli, ["extract", "--store", str(store), "--layer", "2", "--method", method,
                                     "--k", "4", "--out", str(out)])
        assert result.exit_code == 0, result.output
        vector = load_vector(out)
        assert vector.layer == 2 and np.count_nonzero(vector.vector) >= 4 and vector.info.k == 4
        assert vector.info.method == method
    bad = runner.invoke(cli, ["extract", "--store", str(store), "--layer", "2", "--method", "svm",
                              "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code != 0 and "svm" in bad.output and "Traceback" not in bad.output


def test_methods_needing_activations_refuse_a_stats_only_store(tmp_path, tiny_model_dirs, many_pairs):
    path = tmp_path / "m.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), many_pairs, path, layers="1", stats_only=True,
                              progress=False)
    assert np.count_nonzero(build_vector(path, 1, "enr", 3).vector) == 3
    for method in ("pca", "probe", "lda"):
        with pytest.raises(VectorError, match="stats-only"):
            build_vector(path, 1, method, 3)


def test_pca_matches_repengs_own_pca_diff(tiny_model_dirs, many_pairs, tmp_path):
    """In the peers' venv (make test runs this file there too): repeng's read_representations
    on the same pairs and the same last-token states."""
    repeng = pytest.importorskip("repeng")
    from repeng.extract import read_representations
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_dirs["llama"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pairs = json.loads(many_pairs.read_text())
    entries = [repeng.DatasetEntry(positive=p["positive"], negative=p["negative"]) for p in pairs]
    theirs = read_representations(model, tokenizer, entries, hidden_layers=[2], batch_size=8, method="pca_diff")[2]
    path = tmp_path / "r.zarr"
    actstore.capture_to_store(str(folder), many_pairs, path, layers="2", progress=False)
    ours = build_vector(path, 2, "pca", None).vector
    assert abs(_cos(ours, theirs)) > 0.999


def test_a_new_method_is_one_registry_entry(monkeypatch, store, tmp_path):
    from actstore.vectors.directions import Direction
    from actstore.vectors.methods import METHODS, Method, mask_top_k
    from actstore.vectors.vector import save_vector

    def sign_direction(inputs):
        diff = inputs.moments.difference
        return Direction("sign", inputs.layer, np.sign(diff), np.abs(diff), {"rule": "sign"})

    monkeypatch.setitem(METHODS, "sign", Method("sign", "signs of the mean difference", sign_direction, mask_top_k))
    vector = build_vector(store, 2, "sign", 4)
    assert vector.info.method == "sign" and vector.k == 4 and vector.info.detail == {"rule": "sign"}
    assert np.count_nonzero(vector.vector) == 4 and set(np.abs(vector.vector[vector.indices])) == {1.0}
    back = load_vector(save_vector(vector, tmp_path / "sign.safetensors"))
    assert back.info == vector.info and back.info.describe().startswith("sign k=4")
    with pytest.raises(VectorError, match="method 'random'.*not built from a store's statistics"):
        build_vector(store, 2, "random", 4)  # a control: an entry without a direction

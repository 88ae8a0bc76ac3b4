"""ENR vectors: against an in-memory reference of the paper's formula; refusals; file format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import VectorError
from actstore.vectors.vector import load_vector, save_vector
from actstore.vectors.build import vector_from_stats


def sparse_steering_vector(pos: torch.Tensor, neg: torch.Tensor, k: int):
    """The paper's sparse steering vector computed in memory (torch, float64):
    top-k coordinates by |mu+ - mu-| / sqrt(var+/n+ + var-/n-), the rest zeroed."""
    pos, neg = pos.double(), neg.double()
    v = pos.mean(0) - neg.mean(0)
    noise = (pos.var(0, unbiased=True) / len(pos) + neg.var(0, unbiased=True) / len(neg)).sqrt()
    enr = v.abs() / noise.clamp_min(1e-8)
    indices = enr.topk(k).indices
    sparse = torch.zeros_like(v)
    sparse[indices] = v[indices]
    return sparse, indices, enr


@pytest.fixture
def captured_store(tmp_path, tiny_model_dirs, pairs_file):
    store = tmp_path / "acts.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), pairs_file, store, layers="1,3", progress=False)
    return store


@pytest.mark.parametrize("k", [1, 5, 32])
def test_enr_vector_equals_in_memory_reference(captured_store, k):
    ds = actstore.open_store(captured_store)
    acts = ds.acts.sel(layer=3)
    pos = torch.from_numpy(acts.where(ds["class"] == "pos", drop=True).values)
    neg = torch.from_numpy(acts.where(ds["class"] == "neg", drop=True).values)
    expected, expected_idx, expected_enr = sparse_steering_vector(pos, neg, k)
    vec = actstore.build_vector(captured_store, 3, "enr", k)
    assert sorted(vec.indices.tolist()) == sorted(expected_idx.tolist())
    np.testing.assert_allclose(vec.vector, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec.enr, expected_enr.numpy(), rtol=1e-5)
    assert np.count_nonzero(vec.vector) == k
    # Indices come by decreasing ENR.
    assert np.all(np.diff(vec.enr[vec.indices]) <= 0)


def test_dense_vector_is_the_difference_of_means(captured_store):
    ds = actstore.open_store(captured_store)
    acts = ds.acts.sel(layer=1)
    diff = acts.where(ds["class"] == "pos", drop=True).mean("sample") - acts.where(
        ds["class"] == "neg", drop=True).mean("sample")
    vec = actstore.build_vector(captured_store, 1, "enr", None)
    np.testing.assert_allclose(vec.vector, diff.values, rtol=1e-5, atol=1e-6)
    assert vec.k is None and vec.info.method == "enr"


def test_vector_file_round_trip(captured_store, tmp_path):
    vec = actstore.build_vector(captured_store, 3, "enr", 8)
    path = save_vector(vec, tmp_path / "v.safetensors")
    back = load_vector(path)
    np.testing.assert_array_equal(back.vector, vec.vector)
    np.testing.assert_array_equal(back.indices, vec.indices)
    np.testing.assert_array_equal(back.enr, vec.enr)
    assert back.layer == 3 and back.k == 8
    assert back.info.class_counts == {"pos": 7, "neg": 7} and back.info == vec.info
    assert back.info.format == "actstore.vector/1"
    assert back.vector.dtype == np.float32 and back.indices.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer": 3, "k": 0}, "k=0 is out of range"),
        ({"layer": 3, "k": 33}, "k=33 is out of range"),
        ({"layer": 3, "k": 2.5}, "k must be an integer"),
        ({"layer": 2, "k": 4}, "layer 2 was not captured; "),
        ({"layer": 3, "k": 4, "pos": "moral"}, "class 'moral' (pos) is not in the store"),
    ],
)
def test_bad_vector_requests_are_refused(captured_store, kwargs, message):
    with pytest.raises(VectorError) as err:
        actstore.build_vector(captured_store, **kwargs)
    assert message in str(err.value)


def _stats(count=5, mean=0.0, var=1.0):
    import xarray as xr

    return xr.Dataset(
        {"count": (("class", "layer"), np.array([[count], [count]])),
         "mean": (("class", "layer", "hidden"), np.array([[[mean, 1.0]], [[0.0, 0.0]]])),
         "var": (("class", "layer", "hidden"), np.array([[[var, 1.0]], [[1.0, 1.0]]]))},
        coords={"class": ["neg", "pos"], "layer": [0]},
    )


def test_a_class_with_one_sample_is_refused():
    with pytest.raises(VectorError, match="has 1 sample"):
        vector_from_stats(_stats(count=1), 0, 1)


def test_non_finite_statistics_are_refused():
    with pytest.raises(VectorError, match="non-finite"):
        vector_from_stats(_stats(var=float("nan")), 0, 1)


def test_zero_variance_is_clamped_not_divided_by_zero():
    stats = _stats(var=0.0)
    stats["var"][:] = 0.0
    vec = vector_from_stats(stats, 0, 1)
    assert np.all(np.isfinite(vec.enr))
    np.testing.assert_allclose(vec.enr[1], 1.0 / 1e-8)


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    bad = tmp_path / "v.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(VectorError, match="not a safetensors vector file"):
        load_vector(bad)


def test_a_safetensors_file_without_vector_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weights": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(VectorError, match="has no tensor 'vector'"):
        load_vector(path)


def test_a_bfloat16_vector_file_reads_as_float32(captured_store, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_vector(actstore.build_vector(captured_store, 3, "enr", 8), tmp_path / "v.safetensors")
    with safe_open(str(path), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    tensors = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in tensors.items()}
    save_file(tensors, str(tmp_path / "bf16.safetensors"), metadata=metadata)
    back = load_vector(tmp_path / "bf16.safetensors")
    assert back.vector.dtype == np.float32
    np.testing.assert_array_equal(back.vector, tensors["vector"].float().numpy())


def test_a_full_disk_while_writing_a_vector_is_said_to_be_a_full_disk(captured_store, tmp_path, monkeypatch):
    import builtins
    import errno

    from click.testing import CliRunner

    from actstore.cli.main import cli

    real_open = builtins.open

    def full(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".partial"):
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    monkeypatch.setattr(builtins, "open", full)
    out = tmp_path / "v.safetensors"
    result = CliRunner().invoke(cli, ["enr", "-s", str(captured_store), "--layer", "3", "--k", "4", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "the disk is full" in result.output and "damaged" not in result.output
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_old_method_names_read_as_their_registry_entry():
    from actstore.vectors.methods import METHOD_ALIASES, METHODS
    from actstore.vectors.info import VectorInfo

    for old, new in METHOD_ALIASES.items():
        info = VectorInfo.from_metadata({"method": old, "k": "dense", "layer": "2"})
        assert info.method == new and info.k is None and info.layer == 2
        assert info.to_metadata()["method"] == new
    for control in ("random", "letter"):
        info = VectorInfo(layer=1, method=control, seed=7)
        assert METHODS[control].kind == "control" and info.describe().startswith(f"{control} dense")
        assert VectorInfo.from_metadata(info.to_metadata()) == info
    with pytest.raises(VectorError, match="method 'bogus'"):
        VectorInfo(method="bogus")
    with pytest.raises(VectorError, match="k='64'"):
        VectorInfo(k="64")


def test_a_vector_is_frozen_and_changes_by_copy(captured_store):
    vec = actstore.build_vector(captured_store, 3, "enr", 4)
    with pytest.raises(AttributeError, match="with_info"):
        vec.layer = 1
    moved = vec.with_info(layer=1, details={"note": "x"})
    assert vec.layer == 3 and moved.layer == 1 and moved.info.detail["note"] == "x"
    assert moved.vector is vec.vector and moved.info.method == "enr" and moved.k == 4

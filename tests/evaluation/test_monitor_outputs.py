"""`project --out` never writes into or deletes its input (issue 31 #8)."""

from __future__ import annotations

import json
import shutil

import pytest

import actstore
from actstore.vectors.vector import save_vector


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dirs):
    root = tmp_path_factory.mktemp("outputs")
    pairs = [{"positive": f"I gladly helped person {i}.", "negative": f"I cruelly hurt person {i}."} for i in range(8)]
    (root / "pairs.json").write_text(json.dumps(pairs))
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), root / "pairs.json", root / "acts.zarr", layers="1",
                              progress=False)
    save_vector(actstore.build_vector(root / "acts.zarr", 1, "enr", 4), root / "v.safetensors")
    return root


def test_an_input_store_where_the_partial_output_goes_is_not_deleted(run, store, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    shutil.copytree(store / "acts.zarr", out / "projections.zarr.partial")  # the input, named like the scratch
    result = run("project", "--store", out / "projections.zarr.partial", "--vector", store / "v.safetensors",
                 "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "projections.zarr.partial" in result.output
    assert actstore.open_store(out / "projections.zarr.partial").acts.shape[0] == 16  # still whole


def test_an_output_inside_the_input_store_is_refused(run, store, tmp_path):
    copy = tmp_path / "acts.zarr"
    shutil.copytree(store / "acts.zarr", copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for out in (copy, copy / "inside"):
        result = run("project", "--store", copy, "--vector", store / "v.safetensors", "--out", out)
        assert result.exit_code == 1 and "inside the input store" in result.output, result.output
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before

"""A checkpoint is known by its weights (issue 31 #1): another checkpoint of the same architecture in
the same folder (same config, same file names and sizes) is another model everywhere it is checked;
stores and vectors made before the weights were read still match their own folder."""

from __future__ import annotations

import shutil

import pytest
import torch

import actstore
from actstore.errors import StoreError, VectorError
from actstore.models.load import _fingerprint_local, legacy_fingerprint, load_model, same_weights
from actstore.steering import check_vector


@pytest.fixture
def folders(tmp_path, tiny_model_dirs, pairs_file):
    """The tiny llama, a copy whose weights are another checkpoint of the same shapes, and a store of the first."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_model_dirs["llama"], first)
    shutil.copytree(tiny_model_dirs["llama"], second)
    other = load_model(str(second))
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    other.model.save_pretrained(second)
    store = tmp_path / "acts.zarr"
    actstore.capture_to_store(str(first), pairs_file, store, layers="1", progress=False)
    return first, second, store


def test_another_checkpoint_of_the_same_shapes_has_another_fingerprint(folders):
    first, second, _ = folders
    assert sorted(p.stat().st_size for p in first.glob("*.safetensors")) == \
        sorted(p.stat().st_size for p in second.glob("*.safetensors"))
    assert legacy_fingerprint(first) == legacy_fingerprint(second)  # what could not tell them apart
    assert _fingerprint_local(first) != _fingerprint_local(second)
    assert _fingerprint_local(first) == _fingerprint_local(first)


def test_the_store_and_vector_of_one_checkpoint_are_refused_for_the_other(folders):
    first, second, store = folders
    vector = actstore.build_vector(store, 1, "enr", 4)
    other = load_model(str(second))
    with pytest.raises(StoreError, match="with weights sha256-weights:"):
        actstore.stores.StoreGroup.open(store).check_model(other)
    with pytest.raises(VectorError, match="made for model"):
        check_vector(vector, other)
    check_vector(vector, load_model(str(first)))  # its own checkpoint


def test_records_of_the_older_kind_still_match_their_own_folder(folders):
    first, second, _ = folders
    loaded = load_model(str(first))
    assert same_weights(legacy_fingerprint(first), loaded)
    assert not same_weights("sha256-local:0123456789abcdef", loaded)
    assert same_weights(loaded.fingerprint, loaded) and not same_weights(_fingerprint_local(second), loaded)


def test_a_group_takes_more_rows_of_its_weights_only(folders, tmp_path):
    import json

    import zarr

    first, second, store = folders
    more = [tmp_path / f"more{i}.json" for i in range(3)]
    for i, path in enumerate(more):
        path.write_text(json.dumps([{"positive": f"I helped {i} {j}.", "negative": f"I hurt {i} {j}."} for j in range(3)]))
    actstore.capture_to_store(str(first), more[0], store, layers="1", progress=False)  # the same weights: appended
    for weights in first.glob("*.safetensors"):  # another checkpoint in the same folder
        shutil.copy(second / weights.name, weights)
    with pytest.raises(StoreError, match="model_fingerprint"):
        actstore.capture_to_store(str(first), more[1], store, layers="1", progress=False)
    # a group recorded before the weights were read holds the older fingerprint: it cannot tell, and takes them
    group = zarr.open_group(str(store), mode="r+")[actstore.stores.StoreGroup.open(store).name]
    group.attrs["model_fingerprint"] = legacy_fingerprint(first)
    actstore.capture_to_store(str(first), more[2], store, layers="1", progress=False)

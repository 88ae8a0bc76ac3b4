"""What a request may ask, checked before the engine sees it (no vLLM needed: runs in every venv)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from actstore.errors import VectorError
from actstore.serve import ServeError
from actstore.serve.generation import served_positions
from actstore.serve.settings import ModelFacts, SteeringPayload, VectorFolder, resolve_request
from actstore.steering import Positions
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, save_vector

FACTS = ModelFacts("sha256-local:aaaa", hidden_size=16, num_layers=4, model_type="gemma3_text")


def _vector(values, layer=1, fingerprint="sha256-local:aaaa", site="resid"):
    values = np.asarray(values, np.float32)
    info = VectorInfo(layer=layer, fingerprint=fingerprint, site=site)
    return SteeringVector(values, np.flatnonzero(values).astype(np.int64), np.abs(values), info)


@pytest.fixture
def folder(tmp_path):
    sparse = np.zeros(16)
    sparse[[3, 7]] = [1.5, -2.0]
    save_vector(_vector(sparse), tmp_path / "sparse.safetensors")
    save_vector(_vector(np.linspace(-1, 1, 16), layer=3), tmp_path / "dense.safetensors")
    save_vector(_vector(np.ones(16), fingerprint="sha256-local:bbbb"), tmp_path / "other.safetensors")
    save_vector(_vector(np.ones(8)), tmp_path / "short.safetensors")
    save_vector(_vector(np.ones(16), layer=4), tmp_path / "deep.safetensors")
    save_vector(_vector(np.ones(16), site="mlp"), tmp_path / "mlp.safetensors")
    (tmp_path / "inside").mkdir()
    save_vector(_vector(np.ones(16)), tmp_path.parent / "outside.safetensors")
    (tmp_path / "escape.safetensors").symlink_to(tmp_path.parent / "outside.safetensors")
    return VectorFolder(tmp_path)


def test_a_sparse_vector_travels_as_its_kept_coordinates_scaled_like_actstore_steer(folder):
    payload = resolve_request({"actstore_vector": "sparse", "actstore_alpha": "2.5"}, folder, FACTS)
    assert payload.indices == (3, 7) and payload.layer == 1 and payload.positions == Positions("all")
    assert payload.values == (1.5 * 2.5, -2.0 * 2.5)
    again = SteeringPayload.from_extra(payload.to_extra())
    assert again == payload


def test_a_dense_vector_travels_whole(folder):
    payload = resolve_request({"actstore_vector": "dense.safetensors", "actstore_positions": "Generated"},
                              folder, FACTS)
    assert payload.indices is None and len(payload.values) == 16 and payload.positions == Positions("response")
    assert payload.name == "dense" and payload.alpha == 1.0


def test_generated_is_the_response_under_its_former_name_down_to_the_cache_salt(folder):
    former = resolve_request({"actstore_vector": "dense", "actstore_positions": "generated"}, folder, FACTS)
    named = resolve_request({"actstore_vector": "dense", "actstore_positions": "response"}, folder, FACTS)
    assert former == named and former.to_extra()["positions"] == "response"
    assert former.cache_salt() == named.cache_salt()
    prompt = resolve_request({"actstore_vector": "dense", "actstore_positions": "prompt"}, folder, FACTS)
    assert prompt.cache_salt() != named.cache_salt()


def test_a_request_takes_every_written_positions_spec_of_actstore_steer(folder):
    payload = resolve_request({"actstore_vector": "sparse", "actstore_positions": " FROM:3"}, folder, FACTS)
    assert payload.positions == Positions("from", 3)
    assert SteeringPayload.from_extra(payload.to_extra()) == payload
    assert served_positions(Positions("from", 3)) == "from:3" and served_positions("Prompt") == "prompt"
    with pytest.raises(ServeError, match="not a per-example mask"):
        served_positions(np.ones((2, 3), dtype=bool))


def test_no_steering_arguments_means_unsteered(folder):
    assert resolve_request(None, folder, FACTS) is None
    assert resolve_request({"session_id": "x"}, folder, FACTS) is None


def test_the_cache_salt_separates_every_setting_and_keeps_the_clients(folder):
    def salt(client=None, **extra):
        return resolve_request({"actstore_vector": "sparse", **extra}, folder, FACTS).cache_salt(client)

    salts = {salt(), salt(actstore_alpha=2), salt(actstore_positions="prompt"), salt(actstore_positions="from:3"),
             salt("tenant-a"), resolve_request({"actstore_vector": "dense"}, folder, FACTS).cache_salt()}
    assert len(salts) == 6
    assert salt() == salt(actstore_alpha=1.0)  # the same settings share their cache


def test_the_salt_changes_when_the_file_changes(folder):
    before = resolve_request({"actstore_vector": "sparse"}, folder, FACTS).cache_salt()
    values = np.zeros(16)
    values[3] = 9.0
    save_vector(_vector(values), folder.folder / "sparse.safetensors")
    after = resolve_request({"actstore_vector": "sparse"}, folder, FACTS)
    assert after.indices == (3,) and after.cache_salt() != before


@pytest.mark.parametrize(("extra", "message"), [
    ({"actstore_vector": "missing"}, "no such vector on this server; it has: deep, dense"),
    ({"actstore_vector": "../outside"}, "no paths"),
    ({"actstore_vector": "inside/../sparse"}, "no paths"),
    ({"actstore_vector": "escape"}, "no such vector"),
    ({"actstore_vector": 3}, "no paths"),
    ({"actstore_vector": "other"}, "was made for model"),
    ({"actstore_vector": "short"}, "hidden size is 16"),
    ({"actstore_vector": "deep"}, "decoder blocks 0..3"),
    ({"actstore_vector": "mlp"}, "site 'mlp'"),
    ({"actstore_vector": "sparse", "actstore_alpha": True}, "expected a number"),
    ({"actstore_vector": "sparse", "actstore_alpha": "inf"}, "finite"),
    ({"actstore_vector": "sparse", "actstore_positions": "from:-3"}, "expected 'all', 'prompt', 'response' or"),
    ({"actstore_vector": "sparse", "actstore_payload": {}}, "unknown steering argument"),
    ({"actstore_positions": "all"}, "without actstore_vector"),
])
def test_bad_requests_are_refused_with_what_is_wrong(folder, extra, message):
    with pytest.raises(VectorError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_request(extra, folder, FACTS)


def test_a_steered_request_to_a_server_without_a_vectors_folder_is_refused():
    with pytest.raises(VectorError, match="no vectors folder"):
        resolve_request({"actstore_vector": "x"}, None, FACTS)


def test_a_missing_vectors_folder_is_an_error(tmp_path):
    with pytest.raises(VectorError, match="does not exist"):
        VectorFolder(tmp_path / "nope")


def _operator_folder(folder, operators: dict, values=None, site="resid") -> VectorFolder:
    """``folder`` with one file per name -> (kind, clamp value, layers), all of one vector's values."""
    from actstore.vectors.operators import Operator

    values = np.linspace(-1, 1, 16).astype(np.float32) if values is None else np.asarray(values, np.float32)
    for name, operator in operators.items():
        info = VectorInfo(layer=1, fingerprint="sha256-local:aaaa", site=site, operator=Operator(*operator))
        vector = SteeringVector(values, np.flatnonzero(values), np.abs(values), info)
        save_vector(vector, folder / f"{name}.safetensors")
    return VectorFolder(folder)


@pytest.mark.parametrize(("operator", "layers", "writes"), [
    (("project", None, "all"), (), True),  # the ablation: the embeddings and every write to the stream
    (("project", None, "2-3"), (2, 3), False),
    (("clamp", 0.75, ""), (1,), False),
    (("clamp", -2.0, "0,3"), (0, 3), False),
    (("add", None, "1-2"), (1, 2), False),
    (("add", None, "all"), (0, 1, 2, 3), False),
])
def test_the_server_takes_each_operator_where_steer_applies_it(tmp_path, operator, layers, writes):
    from actstore.steering import DirectionEdit, VectorAddition, direction_edit, vector_addition

    folder = _operator_folder(tmp_path, {"op": operator})
    payload = resolve_request({"actstore_vector": "op", "actstore_alpha": "0.5"}, folder, FACTS)
    assert (payload.operator, payload.layers, payload.writes) == (operator[0], layers, writes)
    assert SteeringPayload.from_extra(json.loads(json.dumps(payload.to_extra()))) == payload
    vector, _ = folder.load("op")
    edit = payload.edit()
    if operator[0] == "add":  # steer's addition, scaled in float64
        assert isinstance(edit, VectorAddition) and payload.values == tuple(vector_addition(vector, 0.5).values)
        return
    want = direction_edit(vector, 0.5)  # steer's edit: the unit direction in float64, the target, alpha
    assert isinstance(edit, DirectionEdit) and edit.unit.dtype == torch.float64
    assert torch.equal(edit.unit, want.unit) and (edit.target, edit.alpha) == (want.target, want.alpha) == (
        operator[1] or 0.0, 0.5)


def test_the_cache_salt_separates_operators_of_the_same_values(tmp_path):
    operators = {"add": ("add", None, ""), "add-layers": ("add", None, "1-2"), "project": ("project", None, ""),
                 "ablate": ("project", None, "all"), "clamp": ("clamp", 1.0, ""), "clamp2": ("clamp", 2.0, "")}
    folder = _operator_folder(tmp_path, operators)
    salts = {resolve_request({"actstore_vector": name}, folder, FACTS).cache_salt() for name in operators}
    assert len(salts) == len(operators)  # the operator is in the file's bytes, so in the key


@pytest.mark.parametrize(("operator", "site", "facts", "message"), [
    (("clamp", 1.0, ""), "mlp", FACTS, "site 'mlp'"),
    (("project", None, "1-2"), "attn", FACTS, "site 'attn'"),
    (("add", None, "2-5"), "resid", FACTS, "is add at layers 2-5: apply_layers='2-5': the model has blocks 0..3"),
    (("project", None, "all"), "resid", ModelFacts("sha256-local:aaaa", 16, 4, "mamba"),
     "does not know for model type 'mamba'"),
    (("project", None, "all"), "resid", ModelFacts("sha256-local:aaaa", 16, 4), "model type '(unknown)'"),
])
def test_what_the_server_cannot_apply_is_refused_never_added(tmp_path, operator, site, facts, message):
    folder = _operator_folder(tmp_path, {"op": operator}, site=site)
    with pytest.raises(VectorError, match=re.escape(message)) as err:
        resolve_request({"actstore_vector": "op"}, folder, facts)
    assert err.value.params == ("actstore_vector",)


def test_a_projection_at_all_layers_is_the_writes_whatever_the_site_as_in_steer(tmp_path):
    folder = _operator_folder(tmp_path, {"op": ("project", None, "all")}, site="mlp")
    assert resolve_request({"actstore_vector": "op"}, folder, FACTS).writes


def test_a_zero_vector_has_no_direction_to_project(tmp_path):
    folder = _operator_folder(tmp_path, {"zero": ("project", None, "")}, values=np.zeros(16))
    with pytest.raises(VectorError, match="vector 'zero': the vector for layer 1 is zero") as err:
        resolve_request({"actstore_vector": "zero"}, folder, FACTS)
    assert err.value.params == ("actstore_vector",)


def test_a_vector_recorded_with_the_older_fingerprint_of_the_served_folder_is_accepted():
    from actstore.errors import VectorError
    from actstore.serve.settings import check_against_model

    facts = ModelFacts("sha256-weights:new", 16, 4, "gemma3_text", legacy_fingerprint="sha256-local:aaaa")
    check_against_model(_vector(np.ones(16)), facts, "old")  # made before the weights were read
    check_against_model(_vector(np.ones(16), fingerprint="sha256-weights:new"), facts, "new")
    with pytest.raises(VectorError, match="was made for model"):
        check_against_model(_vector(np.ones(16), fingerprint="sha256-local:bbbb"), facts, "other")

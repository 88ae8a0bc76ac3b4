"""What a request may ask, checked before the engine sees it (no vLLM needed: runs in every venv)."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.errors import VectorError
from actstore.serve import ServeError
from actstore.serve.generation import served_positions
from actstore.serve.settings import ModelFacts, SteeringPayload, VectorFolder, resolve_request
from actstore.steering import Positions
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, save_vector

FACTS = ModelFacts("sha256-local:aaaa", hidden_size=16, num_layers=4)


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
    assert payload.indices is None and len(payload.values) == 16 and payload.positions == Positions("generated")
    assert payload.name == "dense" and payload.alpha == 1.0


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
    ({"actstore_vector": "sparse", "actstore_positions": "from:-3"}, "expected 'all', 'prompt', 'generated' or"),
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


@pytest.mark.parametrize("operator", [("project", None, "all"), ("clamp", 1.0, ""), ("add", None, "1-2")])
def test_a_vector_the_server_cannot_apply_as_written_is_refused_never_added(tmp_path, operator):
    from actstore.vectors.operators import Operator

    values = np.linspace(-1, 1, 16).astype(np.float32)
    info = VectorInfo(layer=1, fingerprint="sha256-local:aaaa", operator=Operator(*operator))
    save_vector(SteeringVector(values, np.arange(16), np.abs(values), info), tmp_path / "op.safetensors")
    with pytest.raises(VectorError, match="applies additive vectors at their own layer only") as err:
        resolve_request({"actstore_vector": "op"}, VectorFolder(tmp_path), FACTS)
    assert err.value.params == ("actstore_vector",)

"""The operator a vector file records: add, project or clamp, and where; old files read as add."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.errors import VectorError
from actstore.vectors.info import VectorInfo
from actstore.vectors.interop import to_repeng, write_gguf_control_vector
from actstore.vectors.operators import Operator
from actstore.vectors.vector import SteeringVector, load_vector, save_vector


def _vector(operator: Operator) -> SteeringVector:
    values = np.linspace(-1, 1, 16).astype(np.float32)
    return SteeringVector(values, np.arange(16), np.abs(values), VectorInfo(layer=2, operator=operator))


@pytest.mark.parametrize("operator", [Operator(), Operator("project", layers="all"), Operator("clamp", -1.5, "2-3"),
                                      Operator("add", layers="1,3")])
def test_the_operator_survives_the_file(tmp_path, operator):
    back = load_vector(save_vector(_vector(operator), tmp_path / "v.safetensors"))
    assert back.info.operator == operator
    assert "operator" not in dict(back.info.details) and "apply_layers" not in dict(back.info.details)


def test_a_file_without_an_operator_reads_as_add_at_its_layer():
    info = VectorInfo.from_metadata({"layer": "4", "k": "8", "method": "enr-topk"})
    assert info.operator == Operator() and info.operator.resolve_layers(4, 12) == [4]


@pytest.mark.parametrize("spec, want", [("", [5]), ("all", list(range(8))), ("2-4", [2, 3, 4]), ("1,6", [1, 6])])
def test_apply_layers_resolve_against_the_model(spec, want):
    assert Operator("project", layers=spec).resolve_layers(5, 8) == want


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "scale"}, "expected one of add, project, clamp"),
    ({"kind": "clamp"}, "needs a finite clamp_value"),
    ({"kind": "clamp", "clamp_value": float("nan")}, "needs a finite clamp_value"),
    ({"kind": "add", "clamp_value": 1.0}, "goes with operator 'clamp'"),
    ({"kind": "project", "layers": "2-"}, "expected 'all', L, L1-L2"),
])
def test_a_bad_operator_is_refused_with_what_was_expected(kwargs, message):
    with pytest.raises(VectorError, match=message):
        Operator(**kwargs)


def test_layers_beyond_the_model_are_refused():
    with pytest.raises(VectorError, match="blocks 0..7"):
        Operator("project", layers="6-9").resolve_layers(2, 8)


@pytest.mark.parametrize("operator", [Operator("project", layers="all"), Operator("clamp", 1.0),
                                      Operator("add", layers="all")])
def test_exports_that_can_only_add_refuse_another_operator(tmp_path, operator):
    vector = _vector(operator)
    with pytest.raises(VectorError, match="additive vectors only"):
        write_gguf_control_vector([vector], tmp_path / "c.gguf", "llama")
    with pytest.raises(VectorError, match="additive vectors only"):
        to_repeng([vector], "llama")
    assert not (tmp_path / "c.gguf").exists()


def test_a_damaged_clamp_value_names_the_file(tmp_path):
    path = save_vector(_vector(Operator("clamp", 2.0)), tmp_path / "v.safetensors")
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    save_file(tensors, str(path), metadata={**metadata, "clamp_value": "two"})
    with pytest.raises(VectorError, match="'clamp_value' is 'two', not a number"):
        load_vector(path)

"""StoreGroup: one handle per store group, its spec read back once, and the checks every
reader of a group makes (layers, activations, model)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from actstore.errors import LayerNotCapturedError, NoActivationsError, StatsError, StoreError, VectorError
from actstore.stores.group import StoreGroup
from actstore.stores.schema import CaptureSpec

FIXTURES = Path(__file__).resolve().parents[1] / "contracts" / "fixtures"


@pytest.fixture
def golden(tmp_path):
    store = tmp_path / "store-v1.zarr"
    shutil.copytree(FIXTURES / "store-v1.zarr", store)  # written before the site key existed
    return store


def test_the_spec_is_read_back_with_the_defaults_of_older_groups(golden):
    group = StoreGroup.open(golden)
    assert group.spec.layers == [1, 3] and group.spec.model_id == "fixture/model"
    assert "site" not in group.attrs and group.spec.site == "resid" and group.spec.stats_only is False
    assert group.spec.position == "last" and group.name == "fixture--model"
    assert StoreGroup.open(group) is group  # a handle passes through


def test_a_layer_not_captured_is_one_error_old_except_clauses_still_catch(golden):
    group = StoreGroup.open(golden)
    group.require_layers([1, 3])
    with pytest.raises(LayerNotCapturedError, match=r"layer 2 was not captured; .* has layers \[1, 3\]") as err:
        group.require_layers(2)
    assert isinstance(err.value, VectorError) and isinstance(err.value, StatsError) and err.value.params == ("layer",)
    with pytest.raises(LayerNotCapturedError, match=r"layers \[0, 5\] were not captured"):
        group.require_layers([0, 1, 5], param="layers")


def test_stats_only_groups_refuse_what_needs_rows():
    spec = CaptureSpec.from_attrs({"model_id": "m", "model_fingerprint": "f", "hidden_size": 4, "layers": [0],
                                   "position": "last", "stats_only": True, "model_source": "hub/m"})
    assert spec.stats_only and spec.extra == {"model_source": "hub/m"}
    group = StoreGroup("s.zarr", SimpleNamespace(attrs=spec.attrs(), basename="m"))
    with pytest.raises(NoActivationsError, match="pca.*stats-only"):
        group.require_activations("pca")


def test_a_group_of_other_weights_is_refused_unless_forced(golden):
    group = StoreGroup.open(golden)
    other = SimpleNamespace(fingerprint="sha256-local:ffff", model_id="other")
    with pytest.raises(StoreError, match="not from 'other'"):
        group.check_model(other)
    with pytest.warns(UserWarning, match="fixture/model"):
        group.check_model(other, force=True)
    group.check_model(SimpleNamespace(fingerprint=group.spec.model_fingerprint, model_id="fixture/model"))


def test_attributes_without_the_spec_are_refused_by_name():
    with pytest.raises(StoreError, match="lack model_id, hidden_size"):
        CaptureSpec.from_attrs({"model_fingerprint": "f", "layers": [1], "position": "last"})

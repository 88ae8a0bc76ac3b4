"""Model loading, decoder-block discovery and layer parsing."""

from __future__ import annotations

import pytest
import torch

from actstore.errors import ModelError
from actstore.models import find_decoder_blocks, load_model, parse_layers, safe_group_name


def test_tiny_models_load_from_saved_folders(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.num_layers == 4 and loaded.hidden_size == 32
    assert loaded.fingerprint.startswith("sha256-local:")
    assert isinstance(loaded.blocks, torch.nn.ModuleList)


def test_unknown_architecture_names_the_blocks_option(tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    loaded.model.config.model_type = "mystery"
    with pytest.raises(ModelError) as err:
        find_decoder_blocks(loaded.model)
    assert "--blocks" in str(err.value) and "model.layers" in str(err.value)
    assert find_decoder_blocks(loaded.model, blocks="model.layers") is loaded.blocks
    with pytest.raises(ModelError, match="has no attribute path 'model.nope'"):
        find_decoder_blocks(loaded.model, blocks="model.nope")


@pytest.mark.parametrize("spec, expected", [("6", [6]), ("2, 6,10", [2, 6, 10]), ("all", list(range(12))),
                                            ([3, 1, 3], [1, 3])])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 12) == expected


@pytest.mark.parametrize("spec, message", [("12", "out of range"), ("-1", "out of range"), ("a,b", "comma-separated"),
                                           ("", "no layer")])
def test_parse_layers_refuses_bad_specs(spec, message):
    with pytest.raises(ModelError, match=message):
        parse_layers(spec, 12)


@pytest.mark.parametrize("model_id, expected", [("google/gemma-3-270m", "google--gemma-3-270m"),
                                                ("../../no-such-dir-zz/model", "no-such-dir-zz--model"),
                                                ("EleutherAI/pythia-70m", "EleutherAI--pythia-70m")])
def test_group_names_are_safe(model_id, expected):
    name = safe_group_name(model_id)
    assert name == expected and "/" not in name and not name.startswith(".")


def test_a_model_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="could not load model"):
        load_model(str(tmp_path / "nothing-here"))

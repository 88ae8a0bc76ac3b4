"""Model loading, decoder-block discovery and layer parsing."""

from __future__ import annotations

import pytest
import torch

from actstore.errors import ModelError
from actstore.models.load import load_model, safe_group_name
from actstore.models.blocks import find_decoder_blocks, parse_layers


def test_tiny_models_load_from_saved_folders(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.num_layers == 4 and loaded.hidden_size == 32
    assert loaded.fingerprint.startswith("sha256-weights:")
    assert isinstance(loaded.blocks, torch.nn.ModuleList)


def test_unknown_architecture_names_the_blocks_option(tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    loaded.model.config.model_type = "mystery"
    with pytest.raises(ModelError) as err:
        find_decoder_blocks(loaded.model)
    assert "blocks=" in str(err.value) and "model.layers" in str(err.value) and err.value.params == ("blocks",)
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


def test_a_store_given_as_the_model_says_so(tmp_path, run, pairs_file):
    """`capture -m <store>` named the backend tokenizer ("Couldn't instantiate ... from one of: .")."""
    import zarr

    zarr.open_group(str(tmp_path / "acts.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ModelError, match="is a Zarr store \\(activations\\), not a model"):
        load_model(str(tmp_path / "acts.zarr"))
    result = run("capture", "-m", tmp_path / "acts.zarr", "-d", pairs_file, "-s", tmp_path / "y.zarr")
    assert result.exit_code == 1 and "is a Zarr store (activations), not a model" in result.output, result.output


def test_a_model_spread_by_a_device_map_with_blocks_on_disk_captures_the_same_and_exits_early(
        tmp_path, tiny_model_dirs, pairs_file):
    pytest.importorskip("accelerate")
    import numpy as np

    import actstore

    folder = str(tiny_model_dirs["llama"])
    plain = load_model(folder)
    # What accelerate allows on a machine without GPUs: some blocks in memory, the rest offloaded to disk
    # and brought in by its hooks when they run.
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.layers.3": "disk",
                  "model.norm": "disk", "lm_head": "disk"}
    mapped = load_model(folder, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert any(p.device.type == "meta" for p in mapped.blocks[2].parameters())  # really offloaded
    ran = []
    handle = mapped.blocks[3].register_forward_pre_hook(lambda module, args: ran.append(1))
    try:
        for loaded, store in ((plain, tmp_path / "plain.zarr"), (mapped, tmp_path / "mapped.zarr")):
            actstore.capture_to_store(loaded, pairs_file, store, layers="1,2", position="all", progress=False)
    finally:
        handle.remove()
    assert ran == []  # block 3 never ran: early exit after block 2, wherever the blocks sit
    np.testing.assert_allclose(actstore.open_store(tmp_path / "mapped.zarr").acts.values,
                               actstore.open_store(tmp_path / "plain.zarr").acts.values, rtol=1e-5, atol=1e-6)


def test_a_device_map_with_a_device_or_an_unknown_name_is_refused():
    from actstore.models.load import ModelSpec

    with pytest.raises(ModelError, match="device_map='everywhere'"):
        ModelSpec("some/model", device_map="everywhere")
    with pytest.raises(ModelError, match="leave --device out"):
        ModelSpec("some/model", device="cuda:0", device_map="auto")


def test_capture_device_map_auto_from_the_command_line(tmp_path, tiny_model_dirs, pairs_file):
    pytest.importorskip("accelerate")
    import numpy as np
    from click.testing import CliRunner

    import actstore
    from actstore.cli.main import cli

    model = str(tiny_model_dirs["gpt2"])
    for store, extra in ((tmp_path / "auto.zarr", ["--device-map", "auto"]), (tmp_path / "plain.zarr", [])):
        result = CliRunner().invoke(cli, ["capture", "-m", model, "-d", str(pairs_file), "-l", "1,2", "-s",
                                          str(store), "-q", *extra])
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(actstore.open_store(tmp_path / "auto.zarr").acts.values,
                                  actstore.open_store(tmp_path / "plain.zarr").acts.values)
    bad = CliRunner().invoke(cli, ["capture", "-m", model, "-d", str(pairs_file), "-s", str(tmp_path / "x.zarr"),
                                   "--device-map", "auto", "--device", "cuda:1"])
    assert bad.exit_code == 1 and "leave --device out" in bad.output and "Traceback" not in bad.output

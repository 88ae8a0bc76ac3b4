"""The typed records a capture travels in: validated where they are made, routed by name."""

from __future__ import annotations

import pytest
import zarr
from click.testing import CliRunner

import actstore
from actstore.capture import CaptureOptions
from actstore.cli.main import cli
from actstore.errors import InputFormatError, ModelError, StoreError
from actstore.models.load import ModelSpec
from actstore.capture import capture_request
from actstore.stores import GroupOptions


@pytest.mark.parametrize("values, message", [
    ({"position": "first"}, "position='first': expected one of last, mean, all"),
    ({"offset": -1}, "offset=-1: must be >= 0"),
    ({"position": "mean", "offset": 2}, "offset=2: must be >= 0 and is only for position last"),
    ({"batch_size": 0}, "batch_size=0: expected an integer >= 1"),
    ({"max_length": 0}, "max_length=0: expected an integer >= 1"),
])
def test_capture_options_are_checked_when_made_and_name_the_parameter(values, message):
    with pytest.raises(InputFormatError, match=message):
        CaptureOptions(**values)


def test_group_options_and_model_specs_are_checked_when_made():
    with pytest.raises(StoreError, match="store_dtype='int8'"):
        GroupOptions(store_dtype="int8")
    with pytest.raises(StoreError, match="codec='gzip'"):
        GroupOptions(codec="gzip")
    with pytest.raises(StoreError, match="name='../x'"):
        GroupOptions(name="../x")
    with pytest.raises(ModelError, match="dtype='int8'"):
        ModelSpec("some/model", dtype="int8")


def test_keywords_go_to_the_record_that_has_them():
    request = capture_request("some/model", position="mean", batch_size=3, store_dtype="float16", codec="zstd",
                              stats_only=True)
    assert request.options == CaptureOptions(position="mean", batch_size=3)
    assert request.group == GroupOptions(store_dtype="float16", codec="zstd", stats_only=True)
    assert request.model == ModelSpec("some/model")


def test_model_loading_options_are_a_model_spec_not_flat_keywords():
    with pytest.raises(TypeError, match="'model_dtype'.*ModelSpec"):
        capture_request("some/model", model_dtype="bfloat16")
    spec = ModelSpec("some/model", dtype="bfloat16", device="meta")
    assert capture_request(spec).model is spec


def test_a_mistyped_keyword_fails_before_any_model_loads(tmp_path, pairs_file):
    with pytest.raises(TypeError, match="'batchsize'"):
        actstore.capture_to_store(str(tmp_path / "no-such-model"), pairs_file, tmp_path / "s.zarr", batchsize=4)


def test_the_recorded_model_dtype_is_the_models_own(tmp_path, tiny_model_dirs, pairs_file):
    loaded = actstore.load_model(str(tiny_model_dirs["llama"]), dtype="bfloat16")
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(loaded, pairs_file, store, layers="1", progress=False)
    assert zarr.open_group(store, mode="r")["tiny-llama"].attrs["model_dtype"] == "bfloat16"


def test_stats_and_enr_take_model_group_and_the_old_model_flag_warns(tmp_path, tiny_model_dirs, pairs_file):
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["llama"]), pairs_file, store, layers="1", progress=False)
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), pairs_file, store, layers="1", progress=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "-s", str(store)])
    assert result.exit_code == 1 and "choose one with --model-group" in result.output
    result = runner.invoke(cli, ["stats", "-s", str(store), "--model-group", "tiny-gpt2"])
    assert result.exit_code == 0 and "group 'tiny-gpt2'" in result.output and "deprecated" not in result.output
    result = runner.invoke(cli, ["stats", "-s", str(store), "--model", "tiny-llama"])
    assert result.exit_code == 0 and "group 'tiny-llama'" in result.output
    assert "--model is deprecated here; use --model-group" in result.output
    result = runner.invoke(cli, ["enr", "-s", str(store), "-m", "tiny-llama", "--layer", "1", "--k", "4",
                                 "-o", str(tmp_path / "v.safetensors")])
    assert result.exit_code == 0 and "wrote k=4 vector" in result.output and "deprecated" in result.output
    assert "--model-group" in runner.invoke(cli, ["enr", "--help"]).output
    assert "--model " not in runner.invoke(cli, ["stats", "--help"]).output


def test_a_converted_folder_is_recorded_by_the_hub_id_it_stands_for(tmp_path, tiny_model_dirs, pairs_file):
    import shutil

    from actstore.models.embedded import record_source

    folder = tmp_path / "cache" / "tiny"
    shutil.copytree(tiny_model_dirs["llama"], folder)
    record_source(folder, "org/tiny-llama")
    store = tmp_path / "s.zarr"
    actstore.capture_to_store(str(folder), pairs_file, store, layers="1", progress=False)
    (info,) = actstore.store_info(store)["models"]
    assert info["model_id"] == str(folder) and info["model_source"] == "org/tiny-llama"
    assert actstore.compute_stats(store, "org/tiny-llama").attrs["group"] == "tiny"
    # A folder that does not say records nothing.
    actstore.capture_to_store(str(tiny_model_dirs["gpt2"]), pairs_file, tmp_path / "o.zarr", layers="1", progress=False)
    assert actstore.store_info(tmp_path / "o.zarr")["models"][0]["model_source"] is None


def test_a_store_from_other_weights_is_refused_unless_forced(tmp_path, tiny_model_dirs, pairs_file):
    from actstore.stores import check_store_model, open_root, select_group

    store = tmp_path / "s.zarr"
    llama = actstore.load_model(str(tiny_model_dirs["llama"]))
    actstore.capture_to_store(llama, pairs_file, store, layers="1", progress=False)
    attrs = dict(select_group(open_root(store), None, store).attrs)
    check_store_model(attrs, llama, store=store)  # the same weights
    gpt2 = actstore.load_model(str(tiny_model_dirs["gpt2"]))
    with pytest.raises(StoreError, match="was captured from .*tiny-llama.* not from .*tiny-gpt2.*force=True"):
        check_store_model(attrs, gpt2, store=store)
    with pytest.warns(UserWarning, match="was captured from"):
        check_store_model(attrs, gpt2, force=True, store=store)



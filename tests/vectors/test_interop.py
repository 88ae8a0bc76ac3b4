"""Interop with steering-vectors, repeng and llama.cpp's GGUF control vectors.

The GGUF tests need only the ``gguf`` package: they read the file layout with its
``GGUFReader`` directly. Tests that hand vectors to a peer's own loader or hooks
skip where that peer is not installed (steering-vectors 0.12.2 pins
transformers<5 and repeng 0.4.0 numpy<2, so they live in a separate venv).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from actstore.capture import record_blocks
from actstore.errors import VectorError
from actstore.vectors.interop import (
    from_repeng,
    from_steering_vectors,
    read_gguf_control_vector,
    to_repeng,
    to_steering_vectors,
    write_gguf_control_vector,
)
from actstore.models.load import load_model
from actstore.steering import steer
from actstore.vectors.vector import SteeringVector
from actstore.vectors.info import VectorInfo

gguf = pytest.importorskip("gguf")

TEXT = "The quick brown fox jumps over the lazy dog."
HIDDEN = 32  # the tiny models' hidden size


def make_vector(layer: int, k: int | None = None, hidden: int = HIDDEN, seed: int = 0) -> SteeringVector:
    """A vector shaped like one from :func:`actstore.build_vector`: dense, or ``k`` kept coordinates."""
    rng = np.random.default_rng([seed, abs(layer)])
    dense = rng.normal(size=hidden).astype(np.float32)
    enr = np.abs(rng.normal(size=hidden)).astype(np.float32)
    indices = np.argsort(-enr, kind="stable")[: k or hidden].astype(np.int64)
    vector = np.zeros_like(dense)
    vector[indices] = dense[indices]
    info = VectorInfo(layer=layer, method="enr", k=k, model="tiny", classes={"pos": 7, "neg": 7}, hidden_size=hidden)
    return SteeringVector(vector, indices, enr, info)


def write_plain_control_vector(path, directions: dict[int, np.ndarray], architecture="controlvector",
                               model_hint: str | None = "llama") -> None:
    """A control-vector file written the way repeng's ``export_gguf`` does it."""
    writer = gguf.GGUFWriter(str(path), architecture)
    if model_hint is not None:
        writer.add_string(f"{architecture}.model_hint", model_hint)
    writer.add_uint32(f"{architecture}.layer_count", len(directions))
    for layer, values in directions.items():
        writer.add_tensor(f"direction.{layer}", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def block_outputs_and_logits(loaded) -> list[torch.Tensor]:
    """Every decoder block's output (as the next block sees it) and the logits.

    Read with hooks registered after any steering hook, not with
    ``output_hidden_states``: transformers >= 4.56 records those inside the block's
    forward, before forward hooks replace the output.
    """
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    layers = range(loaded.num_layers)
    with record_blocks(loaded.blocks, layers, stop_after_last=False) as outputs, torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    return [outputs[layer].clone() for layer in layers] + [logits.clone()]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# GGUF control vectors: layout checked with gguf's own reader, no peer needed


def test_gguf_file_has_the_layout_llama_cpp_reads(tmp_path):
    vectors = [make_vector(3, k=4), make_vector(1)]
    path = write_gguf_control_vector(vectors, tmp_path / "cv.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    layer_count = reader.get_field("controlvector.layer_count")
    assert layer_count.contents() == 2 and layer_count.types == [gguf.GGUFValueType.UINT32]
    # llama.cpp refuses a file with any tensor that is not a 1-D F32 of the hidden size.
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.3"]
    for tensor, vector in zip(reader.tensors, sorted(vectors, key=lambda v: v.layer)):
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == [HIDDEN]
        np.testing.assert_array_equal(np.asarray(tensor.data), vector.vector)
    saved = json.loads(reader.get_field("actstore.direction.3.metadata").contents())
    assert saved["k"] == "4" and saved["layer"] == "3"
    assert reader.get_field("actstore.direction.3.indices").contents() == vectors[0].indices.tolist()


def test_gguf_round_trip_gives_back_vector_indices_enr_and_metadata(tmp_path):
    vectors = [make_vector(2, k=5), make_vector(6)]
    path = write_gguf_control_vector(vectors, tmp_path / "cv.gguf", model_hint="gemma3")
    back = read_gguf_control_vector(path)
    assert [v.layer for v in back] == [2, 6]
    for got, want in zip(back, vectors):
        np.testing.assert_array_equal(got.vector, want.vector)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.enr, want.enr)
        assert got.info == want.info
        assert got.k == want.k


def test_gguf_scale_multiplies_the_written_values_and_is_recorded(tmp_path):
    vector = make_vector(4)
    path = write_gguf_control_vector(vector, tmp_path / "cv.gguf", model_hint="llama", scale=-2.5)
    (back,) = read_gguf_control_vector(path)
    np.testing.assert_allclose(back.vector, -2.5 * vector.vector, rtol=1e-7)
    assert back.info.detail["export_scale"] == "-2.5"


def test_gguf_written_by_another_tool_reads_as_dense_vectors(tmp_path):
    directions = {1: np.arange(HIDDEN, dtype=np.float32), 5: -np.ones(HIDDEN, np.float32)}
    write_plain_control_vector(tmp_path / "repeng.gguf", directions, model_hint="mistral")
    back = read_gguf_control_vector(tmp_path / "repeng.gguf")
    assert [v.layer for v in back] == [1, 5]
    np.testing.assert_array_equal(back[0].vector, directions[1])
    assert back[0].indices.tolist() == list(range(1, HIDDEN))  # its non-zero coordinates
    assert np.isnan(back[0].enr).all()
    assert back[1].info.detail["model_hint"] == "mistral" and back[1].info.layer == 5
    assert back[1].k is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not a gguf file at all" * 4), "is not a GGUF file"),
        (lambda p: p.write_bytes(b""), "is not a GGUF file"),
        (lambda p: write_plain_control_vector(p, {1: np.ones(HIDDEN, np.float32)}, architecture="llama"),
         "general.architecture 'llama'"),
        (lambda p: write_plain_control_vector(p, {}), "no 'direction.<layer>' tensors"),
        (lambda p: write_plain_control_vector(p, {1: np.ones(HIDDEN, np.float32), 2: np.ones(16, np.float32)}),
         r"different sizes \{1: 32, 2: 16\}"),
        (lambda p: write_plain_control_vector(p, {"x": np.ones(HIDDEN, np.float32)}), "'direction.x'"),
        (lambda p: write_plain_control_vector(p, {1: np.ones((2, HIDDEN), np.float32)}), "expected 1-D"),
        (lambda p: write_plain_control_vector(p, {1: np.arange(HIDDEN, dtype=np.int32)}), "expected F32"),
    ],
    ids=["missing", "junk", "empty", "model-file", "no-directions", "sizes", "bad-name", "2-d", "int32"],
)
def test_reading_a_bad_control_vector_file_names_the_file_and_what_was_expected(tmp_path, make, message):
    path = tmp_path / "bad.gguf"
    make(path)
    with pytest.raises(VectorError, match=message) as info:
        read_gguf_control_vector(path)
    assert "bad.gguf" in str(info.value)


@pytest.mark.parametrize(
    "vectors, kwargs, message",
    [
        ([make_vector(0)], {}, "no control-vector slot for layer 0"),
        ([make_vector(2), make_vector(2, seed=9)], {}, "two vectors for layer 2"),
        ([make_vector(2), make_vector(3, hidden=16)], {}, "layer 3 has 16 dimensions but the one for layer 2 has 32"),
        ([], {}, "no vectors to export"),
        ([make_vector(-1)], {}, "layer -1"),
        ([make_vector(2)], {"model_hint": ""}, "model_hint is empty"),
        ([make_vector(2)], {"scale": float("nan")}, "scale must be a finite number"),
    ],
    ids=["layer-0", "duplicate", "sizes", "empty", "negative", "no-hint", "nan-scale"],
)
def test_writing_a_control_vector_refuses_what_llama_cpp_cannot_read(tmp_path, vectors, kwargs, message):
    kwargs = {"model_hint": "llama", **kwargs}
    with pytest.raises(VectorError, match=message):
        write_gguf_control_vector(vectors, tmp_path / "cv.gguf", **kwargs)
    assert not (tmp_path / "cv.gguf").exists()


# steering-vectors


def test_from_steering_vectors_needs_only_the_object():
    sv = SimpleNamespace(layer_type="decoder_block",
                         layer_activations={4: torch.ones(HIDDEN), 2: torch.arange(HIDDEN, dtype=torch.float64)})
    back = from_steering_vectors(sv, metadata={"model": "tiny"})
    assert [v.layer for v in back] == [2, 4]
    assert back[0].vector.dtype == np.float32 and back[0].info.model == "tiny"
    assert back[1].info.detail["source"] == "steering-vectors" and back[1].k is None


@pytest.mark.parametrize(
    "sv, message",
    [
        (SimpleNamespace(layer_type="mlp", layer_activations={1: torch.ones(HIDDEN)}), "layer_type 'mlp'"),
        (SimpleNamespace(layer_type="decoder_block", layer_activations={-1: torch.ones(HIDDEN)}),
         "counts from the end"),
        (SimpleNamespace(layer_type="decoder_block", layer_activations={}), "no layer_activations"),
        (SimpleNamespace(layer_type="decoder_block", layer_activations={1: torch.ones(HIDDEN), 2: torch.ones(8)}),
         "different sizes"),
        (object(), "expected a steering_vectors.SteeringVector"),
    ],
    ids=["mlp", "negative", "empty", "sizes", "not-a-vector"],
)
def test_from_steering_vectors_refuses_what_actstore_cannot_steer(sv, message):
    with pytest.raises(VectorError, match=message):
        from_steering_vectors(sv)


def test_to_steering_vectors_round_trips():
    pytest.importorskip("steering_vectors")
    vectors = [make_vector(1, k=4), make_vector(3)]
    sv = to_steering_vectors(vectors, scale=2.0)
    assert sv.layer_type == "decoder_block" and sorted(sv.layer_activations) == [1, 3]
    assert sv.layer_activations[1].dtype == torch.float32
    back = from_steering_vectors(sv)
    for got, want in zip(back, vectors):
        np.testing.assert_array_equal(got.vector, 2.0 * want.vector)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2", "gemma3_text"])
def test_steering_vectors_apply_changes_hidden_states_as_actstore_steer_does(tiny_model_dirs, arch):
    pytest.importorskip("steering_vectors")
    loaded = load_model(str(tiny_model_dirs[arch]))
    vectors = [make_vector(1, k=5), make_vector(2)]
    plain = block_outputs_and_logits(loaded)
    with steer(loaded, vectors, alpha=3.0):
        expected = block_outputs_and_logits(loaded)
    with to_steering_vectors(vectors).apply(loaded.model, multiplier=3.0):
        actual = block_outputs_and_logits(loaded)
    assert not torch.allclose(expected[-1], plain[-1])  # steering did something
    assert_all_close(actual, expected)
    assert_all_close(block_outputs_and_logits(loaded), plain)  # hooks removed


# repeng


def test_from_repeng_needs_only_the_object():
    cv = SimpleNamespace(model_type="llama", directions={3: np.ones(HIDDEN, np.float32)})
    (back,) = from_repeng(cv)
    assert back.layer == 3 and back.info.detail["model_hint"] == "llama" and back.info.detail["source"] == "repeng"
    with pytest.raises(VectorError, match=r"repeng directions\[3\]: expected a 1-D"):
        from_repeng(SimpleNamespace(model_type="llama", directions={3: np.ones((2, 2))}))


def test_to_repeng_round_trips_and_repeng_reads_the_gguf_actstore_writes(tmp_path):
    repeng = pytest.importorskip("repeng")
    vectors = [make_vector(1, k=4), make_vector(3)]
    cv = to_repeng(vectors, "llama", scale=0.5)
    assert cv.model_type == "llama" and sorted(cv.directions) == [1, 3]
    for got, want in zip(from_repeng(cv), vectors):
        np.testing.assert_array_equal(got.vector, 0.5 * want.vector)
    path = write_gguf_control_vector(vectors, tmp_path / "cv.gguf", model_hint="llama")
    imported = repeng.ControlVector.import_gguf(str(path))
    assert imported.model_type == "llama" and sorted(imported.directions) == [1, 3]
    for vector in vectors:
        np.testing.assert_array_equal(np.asarray(imported.directions[vector.layer]), vector.vector)


def test_actstore_reads_the_gguf_repeng_exports(tmp_path):
    repeng = pytest.importorskip("repeng")
    directions = {2: np.linspace(-1, 1, HIDDEN, dtype=np.float32), 5: np.ones(HIDDEN, np.float32)}
    repeng.ControlVector(model_type="gpt_neox", directions=directions).export_gguf(str(tmp_path / "cv.gguf"))
    back = read_gguf_control_vector(tmp_path / "cv.gguf")
    assert [v.layer for v in back] == [2, 5] and back[0].info.detail["model_hint"] == "gpt_neox"
    np.testing.assert_array_equal(back[0].vector, directions[2])


def test_repeng_control_model_changes_hidden_states_as_actstore_steer_does(tiny_model_dirs):
    repeng = pytest.importorskip("repeng")
    loaded = load_model(str(tiny_model_dirs["llama"]))
    vectors = [make_vector(1, k=5), make_vector(2)]
    plain = block_outputs_and_logits(loaded)
    with steer(loaded, vectors, alpha=-2.0):
        expected = block_outputs_and_logits(loaded)
    control = repeng.ControlModel(loaded.model, [1, 2])
    try:
        control.set_control(to_repeng(vectors, "llama"), coeff=-2.0)
        actual = block_outputs_and_logits(loaded)
    finally:
        control.unwrap()
    assert not torch.allclose(expected[-1], plain[-1])  # steering did something
    assert_all_close(actual, expected)


def test_vector_files_go_to_gguf_and_back_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from actstore.cli.main import cli
    from actstore.vectors.vector import load_vector, save_vector

    files = [save_vector(make_vector(layer, k=8), tmp_path / f"v{layer}.safetensors") for layer in (3, 1)]
    runner = CliRunner()
    out = tmp_path / "control.gguf"
    result = runner.invoke(cli, ["vector", "export-gguf", *map(str, files), "--out", str(out),
                                 "--model-hint", "llama"], catch_exceptions=False)
    assert result.exit_code == 0 and "wrote 2 direction(s) (layers 1, 3)" in result.output, result.output
    result = runner.invoke(cli, ["vector", "import-gguf", str(out), "--out-dir", str(tmp_path / "back")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for layer in (1, 3):
        got, want = load_vector(tmp_path / "back" / f"control-layer{layer}.safetensors"), load_vector(
            tmp_path / f"v{layer}.safetensors")
        np.testing.assert_array_equal(got.vector, want.vector)
        np.testing.assert_array_equal(got.indices, want.indices)
        assert got.info.k == 8 and got.layer == layer
    layer0 = save_vector(make_vector(0), tmp_path / "v0.safetensors")
    result = runner.invoke(cli, ["vector", "export-gguf", str(layer0), "--out", str(out), "--model-hint", "llama"])
    assert result.exit_code == 1 and "no control-vector slot for layer 0" in result.output
    result = runner.invoke(cli, ["vector", "import-gguf", str(files[0]), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "is not a GGUF file" in result.output and "Traceback" not in result.output

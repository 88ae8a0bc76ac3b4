"""``actstore steer --operator``: every vector applied by the operator asked for, instead of its file's."""

from __future__ import annotations

import numpy as np

from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, save_vector


def _vector_file(tmp_path, hidden=32):
    values = np.random.default_rng(1).normal(size=hidden).astype(np.float32)
    return save_vector(SteeringVector(values, np.arange(hidden), np.abs(values), VectorInfo(layer=1)),
                       tmp_path / "v.safetensors")


def test_operator_overrides_the_files_and_is_said(tmp_path, tiny_model_dirs, run):
    model, vector = tiny_model_dirs["llama"], _vector_file(tmp_path)
    plain = run("steer", "--model", model, "--vector", vector, "--alpha", 1, "-p", "I fed the", "--max-new-tokens", 4)
    projected = run("steer", "--model", model, "--vector", vector, "--alpha", 1, "-p", "I fed the",
                    "--max-new-tokens", 4, "--operator", "project", "--apply-layers", "all")
    assert plain.exit_code == 0 and projected.exit_code == 0, projected.output
    assert "(project at all layers)" in projected.output and "project" not in plain.output


def test_operator_settings_without_an_operator_are_a_usage_error(tmp_path, tiny_model_dirs, run):
    result = run("steer", "--model", tiny_model_dirs["llama"], "--vector", _vector_file(tmp_path), "-p", "x",
                 "--clamp-value", 1.0)
    assert result.exit_code == 2 and "go with --operator" in result.output


def test_a_clamp_without_a_value_is_refused_naming_the_flag(tmp_path, tiny_model_dirs, run):
    result = run("steer", "--model", tiny_model_dirs["llama"], "--vector", _vector_file(tmp_path), "-p", "x",
                 "--operator", "clamp")
    assert result.exit_code == 1 and "--clamp-value" in result.output and "Traceback" not in result.output

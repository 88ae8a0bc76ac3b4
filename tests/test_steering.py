"""Steering hooks: exact additions at the right block, sparse == dense, clean removal, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.capture import record_blocks
from actstore.errors import VectorError
from actstore.models import load_model
from actstore.steering import check_vector, steer
from actstore.vectors import SteeringVector

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return load_model(str(tiny_model_dirs["llama"]))


def sparse_vector(layer: int, indices=(3, 7, 20), hidden: int = 32, seed: int = 0) -> SteeringVector:
    rng = np.random.default_rng(seed)
    values = np.zeros(hidden, np.float32)
    values[list(indices)] = rng.normal(size=len(indices)).astype(np.float32)
    return SteeringVector(values, np.asarray(indices, np.int64), np.abs(values), layer,
                          {"k": str(len(indices)), "model_fingerprint": ""})


def block_outputs(loaded, layers, ids):
    with record_blocks(loaded.blocks, layers, stop_after_last=False) as outputs, torch.no_grad():
        loaded.model(input_ids=ids)
    return {layer: outputs[layer].clone() for layer in layers}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma3_text"])
def test_steering_adds_exactly_alpha_v_at_every_position_of_its_block(tiny_model_dirs, arch):
    loaded = load_model(str(tiny_model_dirs[arch]))
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    vector = sparse_vector(layer=1)
    before = block_outputs(loaded, [0, 1], ids)
    # The hook on block 1 sees block 1's own output; record it with a hook registered first.
    with steer(loaded, vector, alpha=3.0):
        after = block_outputs(loaded, [0, 1], ids)
    torch.testing.assert_close(after[0], before[0])  # earlier block untouched
    added = (after[1] - before[1]).numpy()[0]
    expected = np.broadcast_to(3.0 * vector.vector, added.shape)
    np.testing.assert_allclose(added, expected, atol=1e-5)


def test_sparse_add_equals_dense_add(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    vector = sparse_vector(layer=2)
    with torch.no_grad():
        with steer(llama, vector, alpha=2.5, sparse=True):
            sparse_logits = llama.model(input_ids=ids).logits
        with steer(llama, vector, alpha=2.5, sparse=False):
            dense_logits = llama.model(input_ids=ids).logits
    torch.testing.assert_close(sparse_logits, dense_logits, rtol=1e-5, atol=1e-6)


def test_several_vectors_at_several_layers_add_up(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    a, b, c = sparse_vector(1, seed=1), sparse_vector(1, (0, 3), seed=2), sparse_vector(2, seed=3)
    with torch.no_grad():
        with steer(llama, [a, b, c], alpha=[1.0, 2.0, 0.5]):
            together = llama.model(input_ids=ids).logits
        summed = SteeringVector(a.vector + 2.0 * b.vector, np.arange(32), a.enr, 1, {})
        with steer(llama, [summed, c], alpha=[1.0, 0.5], sparse=False):
            expected = llama.model(input_ids=ids).logits
    torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_on_exit_and_on_error(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = llama.model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with steer(llama, sparse_vector(1), alpha=5.0):
                assert llama.blocks[1]._forward_hooks
                raise RuntimeError("boom")
        assert not llama.blocks[1]._forward_hooks
        torch.testing.assert_close(llama.model(input_ids=ids).logits, plain)


def test_steering_applies_to_generated_tokens_too(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")
    calls = []
    vector = sparse_vector(1)
    with steer(llama, vector, alpha=1.0):
        handle = llama.blocks[1].register_forward_hook(lambda m, a, o: calls.append(1))
        try:
            llama.model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        finally:
            handle.remove()
    assert len(calls) >= 3  # prompt pass + one per generated token


@pytest.mark.parametrize(
    "vector, alpha, message",
    [
        (SteeringVector(np.ones(16, np.float32), np.arange(16), np.ones(16), 1, {}), 1.0,
         "vector has 16 dimensions but the model's hidden size is 32"),
        (sparse_vector(layer=9), 1.0, "vector is for layer 9; this model has decoder blocks 0..3"),
        (sparse_vector(layer=1), float("nan"), "alpha must be a finite number"),
        (sparse_vector(layer=1), float("inf"), "alpha must be a finite number"),
    ],
)
def test_vectors_that_do_not_fit_are_refused(llama, vector, alpha, message):
    with pytest.raises(VectorError) as err:
        with steer(llama, vector, alpha):
            pass
    assert message in str(err.value)
    assert all(not block._forward_hooks for block in llama.blocks)


def test_a_vector_for_other_weights_is_refused_unless_forced(llama):
    vector = sparse_vector(1)
    vector.metadata.update(model="other/model", model_fingerprint="sha256-local:ffff")
    with pytest.raises(VectorError, match="pass --force"):
        check_vector(vector, llama)
    with pytest.warns(UserWarning, match="vector was made for model 'other/model'"):
        check_vector(vector, llama, force=True)
    vector.metadata["model_fingerprint"] = llama.fingerprint
    check_vector(vector, llama)


def test_cli_steer_compares_and_refuses_a_vector_of_other_weights(tmp_path, tiny_model_dirs, pairs_file):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    model, store = str(tiny_model_dirs["gpt2"]), str(tmp_path / "s.zarr")
    runner = CliRunner()
    assert runner.invoke(cli, ["capture", "-q", "--model", model, "--data", str(pairs_file), "--layers", "1",
                               "--store", store]).exit_code == 0
    vec = tmp_path / "v.safetensors"
    assert runner.invoke(cli, ["enr", "--store", store, "--layer", "1", "--k", "4", "--out", str(vec)]).exit_code == 0
    result = runner.invoke(cli, ["steer", "--model", model, "--vector", str(vec), "--alpha", "8", "--prompt", "Hello",
                                 "--max-new-tokens", "4", "--compare"])
    assert result.exit_code == 0, result.output
    assert "--- unsteered:" in result.output and "--- steered (alpha=8; layer 1 k=4)" in result.output
    result = runner.invoke(cli, ["steer", "--model", str(tiny_model_dirs["llama"]), "--vector", str(vec),
                                 "--prompt", "Hello"])
    assert result.exit_code == 1 and "pass --force" in result.output

"""Baking a direction into the weights (abliteration) equals the hooked ablation it stands for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actstore.errors import VectorError
from actstore.models.hooks import ablate_direction, block_output
from actstore.models.load import load_model
from actstore.vectors.bake import BAKED_FILE, bake_vector, unit_direction, vector_fingerprint
from actstore.vectors.info import VectorInfo
from actstore.vectors.operators import Operator
from actstore.vectors.vector import SteeringVector
from tests.conftest import make_config

PROMPTS = ("I fed the stray cat.", "She returned the lost wallet to its owner.")


def _tiny(tmp_path, tokenizer, arch: str):
    """A tiny random model saved with save_pretrained; "gemma" is Gemma 1 (tied, scaled embeddings)."""
    import transformers as tf

    torch.manual_seed(7)
    if arch == "gemma":
        config = tf.GemmaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                head_dim=8, intermediate_size=64, max_position_embeddings=128,
                                vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        config = make_config(arch, len(tokenizer))
    model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases, so that the bake's bias rule is exercised
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _vector(hidden: int, k: int | None = None, operator=Operator("project", layers="all")) -> SteeringVector:
    values = np.random.default_rng(3).normal(size=hidden).astype(np.float32)
    indices = np.arange(hidden) if k is None else np.argsort(-np.abs(values))[:k]
    kept = np.zeros_like(values)
    kept[indices] = values[indices]
    return SteeringVector(kept, indices.astype(np.int64), np.abs(values), VectorInfo(layer=1, k=k, operator=operator))


def _logits(loaded, prompts=PROMPTS):
    with torch.no_grad():
        return [loaded.model(**loaded.tokenizer(p, return_tensors="pt")).logits.double() for p in prompts]


@pytest.mark.parametrize("arch", ["llama", "gemma", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("k", [None, 8])
def test_the_baked_model_equals_the_hooked_ablation(tmp_path, tiny_tokenizer, arch, k):
    folder = _tiny(tmp_path, tiny_tokenizer, arch)
    loaded = load_model(str(folder))
    vector = _vector(loaded.hidden_size, k)
    unit = unit_direction(vector)
    head_before = loaded.model.get_output_embeddings().weight.detach().clone()
    with ablate_direction(loaded.model, loaded.blocks, unit):
        hooked = _logits(loaded)
    report = bake_vector(loaded, vector, tmp_path / "baked")
    reloaded = load_model(str(tmp_path / "baked"))
    for want, got in zip(hooked, _logits(reloaded)):
        scale = float(want.abs().max())
        assert float((want - got).abs().max()) <= 1e-5 * scale
    assert report.relative_difference <= 1e-5
    # untied: the unembedding keeps its weights (the hooked form never touches it)
    torch.testing.assert_close(reloaded.model.get_output_embeddings().weight, head_before)
    record = json.loads((tmp_path / "baked" / BAKED_FILE).read_text())
    assert record["vector_fingerprint"] == vector_fingerprint(vector) == report.vector_fingerprint


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_ablated_residual_has_no_component_along_the_direction_at_any_block(tmp_path, tiny_tokenizer, arch):
    loaded = load_model(str(_tiny(tmp_path, tiny_tokenizer, arch)))
    unit = unit_direction(_vector(loaded.hidden_size, 8))
    seen = []
    handles = [block.register_forward_hook(lambda m, a, out: seen.append(block_output(out).double()))
               for block in loaded.blocks]
    try:
        with ablate_direction(loaded.model, loaded.blocks, unit):
            _logits(loaded, PROMPTS[:1])
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(loaded.blocks)
    for hidden in seen:
        along = (hidden @ unit).abs().max()
        assert float(along) <= 1e-6 * float(hidden.norm(dim=-1).max())
    # and without the hooks it is there: the test can fail
    seen.clear()
    handles = [block.register_forward_hook(lambda m, a, out: seen.append(block_output(out).double()))
               for block in loaded.blocks]
    try:
        _logits(loaded, PROMPTS[:1])
    finally:
        for handle in handles:
            handle.remove()
    assert float((seen[-1] @ unit).abs().max()) > 1e-3 * float(seen[-1].norm(dim=-1).max())


def test_a_model_with_post_norms_is_refused_with_the_reason(tmp_path, tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["gemma3_text"]))
    with pytest.raises(VectorError, match="post-norms"):
        bake_vector(loaded, _vector(loaded.hidden_size), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("operator", [Operator(), Operator("project"), Operator("clamp", 1.0, "all")])
def test_only_a_projection_at_all_layers_bakes(tmp_path, tiny_model_dirs, operator):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    with pytest.raises(VectorError, match="operator 'project' at all layers"):
        bake_vector(loaded, _vector(loaded.hidden_size, operator=operator), tmp_path / "out")

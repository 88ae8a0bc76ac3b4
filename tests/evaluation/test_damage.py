"""KL damage on the unsteered model's own continuations, against a written-out computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.evaluation.damage import continuations, kl_damage
from actstore.steering import steer
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector

PROMPTS = ["I fed the stray cat.", "She returned the lost wallet to its owner", "We", "He told the truth"]


def _vector(hidden: int) -> SteeringVector:
    values = np.random.default_rng(0).normal(size=hidden).astype(np.float32)
    return SteeringVector(values, np.arange(hidden), np.abs(values), VectorInfo(layer=1))


def _written_out(loaded, prompt: str, vector, n: int) -> tuple[float, float]:
    """One prompt, unpadded: greedy continuation, then KL per token with plain softmax in float64."""
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                    min_new_tokens=1, pad_token_id=loaded.tokenizer.pad_token_id,
                                    temperature=None, top_p=None, top_k=None)
        new = out[0, ids.shape[1]:].tolist()
        eos = loaded.tokenizer.eos_token_id
        if eos in new:
            new = new[:new.index(eos) + 1]
        full = torch.tensor([ids[0].tolist() + new])
        p = torch.softmax(loaded.model(full).logits[0].double(), -1)
        with steer(loaded, vector, 4.0):
            q = torch.softmax(loaded.model(full).logits[0].double(), -1)
    rows = range(ids.shape[1] - 1, ids.shape[1] - 1 + len(new))
    kls = [float((p[r] * (p[r].log() - q[r].log())).sum()) for r in rows]
    return kls[0], float(np.mean(kls))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_kl_equals_the_written_out_computation_with_left_padding(llama, batch_size):
    vector = _vector(llama.hidden_size)
    batches = continuations(llama, PROMPTS, n_tokens=6, batch_size=batch_size)
    damage = kl_damage(llama, batches, lambda: steer(llama, vector, 4.0))
    want = np.array([_written_out(llama, prompt, vector, 6) for prompt in PROMPTS])
    np.testing.assert_allclose(damage.kl_first, want[:, 0], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(damage.kl, want[:, 1], rtol=1e-5, atol=1e-8)
    assert np.all(damage.kl_first > 0)


def test_no_steering_is_no_damage_and_intervals_are_over_prompts(llama):
    batches = continuations(llama, PROMPTS, n_tokens=4, batch_size=2)
    damage = kl_damage(llama, batches)
    assert np.allclose(damage.kl_first, 0, atol=1e-9) and np.allclose(damage.kl, 0, atol=1e-9)
    first, mean = kl_damage(llama, batches, lambda: steer(llama, _vector(llama.hidden_size), 4.0)).intervals()
    assert first.low < first.estimate < first.high and mean.excludes(0.0)

"""The vocabulary pass in slices of token rows (issue 32 §2): the same NLL and KL as the full logits,
logit soft-capping included, and no slice of logits larger than the chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.errors import ModelError
from actstore.evaluation import vocab
from actstore.evaluation.damage import continuations, kl_damage
from actstore.evaluation.replay import PrefixReplay, plain_forward
from actstore.evaluation.scoring import PerplexityWindows, perplexity
from actstore.evaluation.vocab import VocabHead, token_kl
from actstore.models.load import load_model
from actstore.steering import steer
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector
from tests.conftest import make_config

from .test_sweep import TEXT

SOFTCAP = 0.3  # small enough to change a tiny random model's logits noticeably
PROMPTS = ["I fed the stray cat.", "She returned the lost wallet to its owner", "We", "He told the truth"]


@pytest.fixture(scope="module")
def capped(tmp_path_factory, tiny_tokenizer):
    """A tiny gemma3 text model with final logit soft-capping."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    config = make_config("gemma3_text", len(tiny_tokenizer))
    config.final_logit_softcapping = SOFTCAP
    folder = tmp_path_factory.mktemp("capped")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return load_model(str(folder))


@pytest.fixture(params=["llama", "capped"])
def model(request, llama, capped):
    return llama if request.param == "llama" else capped


@pytest.fixture(params=["vocabulary slices", "token rows"])
def sliced(request, monkeypatch):
    """Small slices, along the vocabulary (a plain Linear head) or along the tokens only (any other
    head); with the vocabulary's size ``size`` (bytes of one token's float32 logits), CHUNK_BYTES is
    set to ``size * rows`` by the test."""
    monkeypatch.setattr(vocab, "MIN_WORDS", 16)
    if request.param == "token rows":
        monkeypatch.setattr(VocabHead, "sliceable", property(lambda self: False))
    return lambda size, rows: monkeypatch.setattr(vocab, "CHUNK_BYTES", size * rows)


def _vector(hidden: int) -> SteeringVector:
    values = np.random.default_rng(0).normal(size=hidden).astype(np.float32)
    return SteeringVector(values, np.arange(hidden), np.abs(values), VectorInfo(layer=1))


def _full_nll(loaded, windows: PerplexityWindows) -> np.ndarray:
    """Per window, the NLL from the model's own full logits (float64 log-softmax)."""
    out = []
    for batch in windows.batches:
        with torch.no_grad():
            logits = plain_forward(loaded.model)(0, batch).double()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        out += (-(logp * batch.attention_mask[:, 1:])).sum(-1).tolist()
    return np.asarray(out)


def test_the_capped_model_caps_its_logits(capped):
    ids = capped.tokenizer("a short text", return_tensors="pt")
    with torch.no_grad():
        logits = capped.model(**ids).logits
        raw = capped.model.get_output_embeddings()(capped.model.model(**ids).last_hidden_state)
    assert logits.abs().max() < SOFTCAP and (logits - raw).abs().max() > 1e-3
    assert VocabHead.of(capped.model).softcap == SOFTCAP


def test_sliced_nll_equals_the_full_logits(model, sliced):
    sliced(len(model.tokenizer) * 4, 5)  # several slices of either kind
    ids = model.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:150]
    windows = PerplexityWindows(model.tokenizer, ids, window=32, batch_size=3)  # the last window is padded
    sliced, tokens = windows.nll(plain_forward(model.model), model.model)
    full, _ = windows.nll(plain_forward(model.model))
    np.testing.assert_allclose(sliced, _full_nll(model, windows), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sliced, full, rtol=1e-5, atol=1e-5)
    assert tokens.sum() == len(ids)
    whole = perplexity(model.model, model.tokenizer, ids, window=32)
    assert whole == pytest.approx(np.exp(full.sum() / tokens.sum()), rel=1e-5)


def test_sliced_nll_through_a_prefix_replay(llama, monkeypatch):
    monkeypatch.setattr(vocab, "CHUNK_BYTES", len(llama.tokenizer) * 4 * 7)
    ids = llama.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:100]
    windows = PerplexityWindows(llama.tokenizer, ids, window=32, batch_size=2)
    vector = _vector(llama.hidden_size)
    with steer(llama, vector, 4.0):
        full, _ = windows.nll(plain_forward(llama.model))
    replay = PrefixReplay(llama, 1, dict(enumerate(windows.batches)))
    with replay.active(), steer(llama, vector, 4.0):
        sliced, _ = windows.nll(replay, llama.model)
    np.testing.assert_allclose(sliced, full, rtol=1e-5, atol=1e-5)


def _full_log_probs(loaded, batch) -> torch.Tensor:
    with torch.no_grad():
        out = loaded.model(input_ids=batch.ids, attention_mask=batch.mask,
                           position_ids=(batch.mask.cumsum(-1) - 1).clamp(min=0)).logits
    return torch.log_softmax(out[:, -batch.n_tokens - 1:-1].double(), -1)


def test_kl_equals_the_full_logits_with_soft_capping(capped, sliced):
    sliced(len(capped.tokenizer) * 16, 3)
    vector = _vector(capped.hidden_size)
    batches = continuations(capped, PROMPTS, n_tokens=5, batch_size=3)
    damage = kl_damage(capped, batches, lambda: steer(capped, vector, 4.0))
    firsts, means = [], []
    for batch in batches:  # the model's full logits, log-softmax in float64
        p = _full_log_probs(capped, batch)
        with steer(capped, vector, 4.0):
            q = _full_log_probs(capped, batch)
        kl = (p.exp() * (p - q)).sum(-1).clamp(min=0)
        firsts += kl[:, 0].tolist()
        means += ((kl * batch.scored).sum(1) / batch.scored.sum(1)).tolist()
    np.testing.assert_allclose(damage.kl_first, firsts, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(damage.kl, means, rtol=1e-5, atol=1e-7)
    assert np.all(damage.kl > 0)


def test_kl_of_identical_states_is_zero_and_slices_agree():
    head = VocabHead(torch.nn.Linear(8, 50), softcap=2.0, chunk_bytes=50 * 8 * 4)
    torch.manual_seed(0)
    base, steered = torch.randn(13, 8), torch.randn(13, 8)
    assert torch.equal(token_kl(base, base, head), torch.zeros(13, dtype=torch.float64))
    whole = VocabHead(head.head, softcap=2.0, chunk_bytes=2**30)
    torch.testing.assert_close(token_kl(base, steered, head), token_kl(base, steered, whole), rtol=1e-6, atol=1e-9)


def test_no_logits_larger_than_a_slice_in_a_perplexity_pass_or_a_kl(llama, monkeypatch):
    """The old pass had the model's head compute every token's logits at once (66 rows here)."""
    vocab_size = len(llama.tokenizer)
    monkeypatch.setattr(vocab, "CHUNK_BYTES", vocab_size * 4 * 8)  # 8 rows of float32 logits
    monkeypatch.setattr(vocab, "MIN_WORDS", 16)
    sizes, rows, original = [], [], VocabHead.logits

    def logged(self, hidden, start=0, stop=None):
        out = original(self, hidden, start, stop)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(VocabHead, "logits", logged)
    hook = llama.model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out[..., 0].numel()))
    try:
        ids = llama.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:128]
        PerplexityWindows(llama.tokenizer, ids, window=32, batch_size=2).nll(plain_forward(llama.model), llama.model)
        assert max(rows) <= 2  # the model's own head: the last position of each row (checked once)
        assert max(sizes) <= vocab_size * 8 and sum(sizes) >= len(ids) * vocab_size  # every token, every word
        batches = continuations(llama, PROMPTS, n_tokens=12, batch_size=4)
        rows.clear(), sizes.clear()  # generation's own steps are not the vocabulary pass
        kl_damage(llama, batches, lambda: steer(llama, _vector(llama.hidden_size), 4.0))
        assert max(rows) <= 4  # 4 rows x 13 kept positions before
        assert max(sizes) <= vocab_size * 4  # the check's 4 rows; the KL's slices: 2 rows' worth (float64, twice)
    finally:
        hook.remove()


def test_an_unknown_transform_after_the_head_is_refused(capped):
    windows = PerplexityWindows(capped.tokenizer, list(range(5, 40)), window=16)
    unaware = VocabHead(capped.model.get_output_embeddings(), softcap=None)
    with pytest.raises(ModelError, match="logits are not its LM head's output"):
        unaware.hidden(plain_forward(capped.model), 0, windows.batches[0])

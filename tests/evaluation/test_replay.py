"""Replaying a layer's cached block output gives what the whole model gives."""

from __future__ import annotations

import numpy as np
import pytest

import actstore
from actstore.evaluation.replay import PrefixReplay, cache_nbytes, plain_forward
from actstore.evaluation.scoring import ABScoring
from actstore.models.load import load_model
from actstore.vectors.info import VectorInfo

from .test_sweep import ITEMS, sweep


def test_replay_gives_the_numbers_of_the_whole_model(tmp_path, llama, store, ppl_ids):
    replayed = sweep(llama, store, tmp_path / "a", ppl_ids, layers=[1], ks=[4])
    whole = sweep(llama, store, tmp_path / "b", ppl_ids, layers=[1], ks=[4], replay=False)
    for column in ("on_target", "on_target_shift", "shift_logodds", "letter_bias", "ppl", "ppl_inflation"):
        np.testing.assert_allclose(replayed[column], whole[column], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text", "gpt_neox", "qwen2"])
def test_prefix_replay_equals_a_full_steered_forward(tiny_model_dirs, arch):
    loaded = load_model(str(tiny_model_dirs[arch]))
    scoring = ABScoring(loaded.tokenizer, ITEMS, batch_size=5)
    vector = actstore.SteeringVector(np.random.default_rng(0).normal(size=32).astype(np.float32), np.arange(32),
                                     np.ones(32, np.float32), VectorInfo(layer=2))
    with actstore.steer(loaded, vector, 3.0):
        full = scoring.logodds(plain_forward(loaded.model))
    replay = PrefixReplay(loaded, 2, dict(enumerate(scoring.batches)))
    with replay.active(), actstore.steer(loaded, vector, 3.0):
        replayed = scoring.logodds(replay)
    np.testing.assert_allclose(replayed, full, rtol=1e-5, atol=1e-6)
    unsteered = scoring.logodds(plain_forward(loaded.model))
    assert np.abs(full - unsteered).max() > 1e-4  # the steering did something
    assert all(not type(b).__name__.startswith("_") for b in loaded.blocks)  # blocks restored
    assert replay.nbytes == cache_nbytes(loaded, dict(enumerate(scoring.batches)))


def test_replay_outside_its_context_is_refused(llama):
    scoring = ABScoring(llama.tokenizer, ITEMS[:2])
    replay = PrefixReplay(llama, 1, dict(enumerate(scoring.batches)))
    with pytest.raises(RuntimeError, match="outside"):
        replay(0, scoring.batches[0])


def test_a_packed_batch_replays_the_cached_rows_once_per_copy(llama):
    """A batch repeated for a pack (issue 32) replays its one cached block output, repeated as it runs;
    rows that are not whole copies of the cached batch are refused."""
    import torch

    from actstore.evaluation.replay import Batch

    batch = ABScoring(llama.tokenizer, ITEMS[:4], batch_size=4).batches[0]
    replay = PrefixReplay(llama, 1, {0: batch})
    packed = batch.repeated(3)
    assert packed.copies == 3 and packed.input_ids.shape[0] == 3 * batch.input_ids.shape[0]
    assert batch.repeated(1) is batch
    with replay.active():
        replayed = replay(0, packed)
        with pytest.raises(RuntimeError, match="does not fit the batch"):
            replay(0, Batch(packed.input_ids, packed.attention_mask, packed.logits_to_keep))  # copies not said
    torch.testing.assert_close(replayed, plain_forward(llama.model)(0, packed), rtol=1e-5, atol=1e-5)
    assert replay.nbytes == cache_nbytes(llama, {0: batch})  # the cache itself is not repeated

"""Packing (issue 32): several configurations of a layer measured in one batch give each the numbers
it gets alone; a packed sweep writes the folder a one-at-a-time sweep writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import actstore
from actstore.errors import ActstoreError
from actstore.evaluation.packing import Pack, chunks, pack_size
from actstore.evaluation.protocols import ABLetters, FreeTextPreference, GeneratedText, packable
from actstore.evaluation.replay import layer_forwards, plain_forward
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.scoring import PerplexityWindows, PreferencePair
from actstore.steering import RowSteering
from actstore.vectors.info import VectorInfo
from actstore.vectors.operators import Operator

from .test_sweep import ITEMS, documents, sweep

PROMPTS = ["Tell me a story about a dog", "Hello", "What is the capital of France and why",
           "Write", "I think that", "Steering vectors are"]


def _vector(layer: int, seed: int, k: int | None = None, operator=None) -> actstore.SteeringVector:
    values = np.random.default_rng(seed).normal(size=32).astype(np.float32)
    indices = np.arange(32) if k is None else np.sort(np.argsort(-np.abs(values))[:k])
    kept = np.zeros_like(values)
    kept[indices] = values[indices]
    info = VectorInfo(layer=layer, k=k) if operator is None else VectorInfo(layer=layer, k=k, operator=operator)
    return actstore.SteeringVector(kept, indices.astype(np.int64), np.abs(values), info)


def _slots():
    """A sparse and a dense vector at layer 2, no steering, a clamp at layer 2."""
    return (RowSteering(_vector(2, 1, k=4), 6.0), RowSteering(_vector(2, 2), -3.0), None,
            RowSteering(_vector(2, 3, operator=Operator("clamp", 1.5)), 0.5))


def _alone(loaded, slot):
    import contextlib

    return contextlib.nullcontext() if slot is None else actstore.steer(loaded, slot.vector, slot.alpha)


@pytest.mark.parametrize("replayed", [False, True], ids=["whole", "replayed"])
def test_each_slot_of_a_packed_protocol_measures_what_it_measures_alone(llama, ppl_ids, replayed):
    slots = _slots()
    pack = Pack(llama, slots)
    windows = documents(llama, ppl_ids)
    for protocol in (ABLetters(llama.tokenizer, ITEMS[:5], batch_size=3),
                     FreeTextPreference(llama.tokenizer, [PreferencePair("I kept my word.", "I broke my word.", "1"),
                                                          PreferencePair("She helped.", "She hurt him badly.", "2")],
                                        batch_size=3)):
        with layer_forwards(llama, 2, protocol.batches(), windows.batches, replayed, 4096) as active, \
                active() as (on, ppl):
            assert (type(llama.blocks[2]).__name__ == "_Replayed") == replayed  # the cached block output, repeated
            packed = protocol.measure_packed(llama, on, pack)
            nll, tokens = windows.packed_nll(pack.forward(ppl), pack.size)
        assert len(packed) == len(slots) and nll.shape == (len(slots), len(windows.documents))
        for number, (slot, (measures, texts)) in enumerate(zip(slots, packed)):
            with _alone(llama, slot):
                alone = protocol.measure(llama, plain_forward(llama.model))
                alone_nll, alone_tokens = windows.nll(plain_forward(llama.model))
            assert texts is None and measures.keys() == alone.keys()
            for name in alone:
                np.testing.assert_allclose(measures[name], alone[name], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(nll[number], alone_nll, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(tokens, alone_tokens)
    assert abs(nll[0] - nll[2]).max() > 1e-3  # the steered slot differs from the unsteered one


def test_packed_generation_gives_each_configuration_its_own_greedy_continuations(llama):
    """Prompts of different lengths (left padding), batch_size 4 so that a chunk pads: each slot's
    continuations are those its configuration generates alone, and its scores."""
    slots = _slots()
    protocol = GeneratedText(PROMPTS, "vader", max_new_tokens=8, batch_size=4)
    packed = protocol.measure_packed(llama, None, Pack(llama, slots))
    for slot, (measures, texts) in zip(slots, packed):
        with _alone(llama, slot):
            alone = protocol.measure(llama, None)
        assert texts == protocol.last_texts
        for name in alone:
            np.testing.assert_allclose(measures[name], alone[name], rtol=1e-6)
    assert packed[0][1] != packed[2][1]  # steering changed the continuations


def test_a_packed_batch_of_the_wrong_size_is_refused_not_steered_by_a_guess(llama):
    pack = Pack(llama, _slots())
    with pytest.raises(ValueError, match="does not hold 4 equal copies"):
        pack.steering(6)
    ids = llama.tokenizer(["a b c"] * 8, return_tensors="pt").input_ids
    with pytest.raises(actstore.ActstoreError, match="a forward pass of 8 rows inside a context that steers 4"), \
            torch.no_grad(), pack.steering(4):
        llama.model(ids)


def test_pack_size_and_its_refusals(llama, ppl_ids):
    on_target, windows = ABLetters(llama.tokenizer, ITEMS), PerplexityWindows(llama.tokenizer, ppl_ids, 32)
    assert pack_size(None, llama, on_target, windows.batches, 4096) == 8
    assert pack_size(3, llama, on_target, windows.batches, 4096) == 3
    vocab = llama.model.config.vocab_size
    one = max(b.input_ids.numel() for b in windows.batches) * vocab * 4  # the largest batch's float32 logits
    assert pack_size(None, llama, on_target, windows.batches, 2.5 * one / 2**20) == 2
    assert pack_size(None, llama, on_target, windows.batches, 0.1 * one / 2**20) == 1

    class Served(GeneratedText):  # an engine elsewhere steers one configuration at a time
        def steered(self, vector, scale, positions):
            raise AssertionError

    assert packable(on_target) and not packable(Served(["Hello"]))
    assert pack_size(8, llama, Served(["Hello"]), windows.batches, 4096) == 1
    assert chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ActstoreError, match="pack=.*expected an integer >= 1"):
            SweepRequest(store="s.zarr", data_test="t.json", layers="1", out="o", pack=bad)


def _tables(out) -> dict[str, pd.DataFrame]:
    frames = {}
    for name in ("results.csv", "items.csv", "windows.csv"):
        frame = pd.read_csv(out / name, dtype={"k": str, "item": str})
        frames[name] = frame.drop(columns=["seconds"], errors="ignore")
    return frames


def _assert_same_numbers(got, want) -> None:
    for name in want:
        a, b = got[name], want[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for column in a.columns:
            if pd.api.types.is_float_dtype(b[column]):
                np.testing.assert_allclose(a[column], b[column], rtol=1e-5, atol=1e-7, err_msg=f"{name} {column}")
            else:
                assert a[column].tolist() == b[column].tolist(), (name, column)


@pytest.mark.parametrize("pack", [4, 3])
def test_a_packed_sweep_writes_the_numbers_of_a_sweep_one_configuration_at_a_time(tmp_path, llama, store, ppl_ids,
                                                                                   pack):
    """Two layers of four configurations each: packs of 4 (one per layer), or of 3 and 1 (a pack and a
    configuration alone under steer)."""
    # Alphas that move the tiny model: a null effect's p-value would magnify float rounding.
    fields = {"perplexity": documents(llama, ppl_ids), "positions": "from:3", "fractions": (4.0, 16.0)}
    one = sweep(llama, store, tmp_path / "one", ppl_ids, pack=1, **fields)
    packed = sweep(llama, store, tmp_path / "packed", ppl_ids, pack=pack, **fields)
    assert len(packed) == len(one) == 8
    _assert_same_numbers(_tables(tmp_path / "packed"), _tables(tmp_path / "one"))


def test_a_packed_generation_sweep_writes_the_folder_of_one_at_a_time(tmp_path, llama, store, ppl_ids):
    generation = GeneratedText(PROMPTS, "vader", max_new_tokens=6, batch_size=4)
    for out, pack in (("one", 1), ("packed", 4)):
        sweep(llama, store, tmp_path / out, ppl_ids, on_target=generation, layers=(2,), pack=pack)
    _assert_same_numbers(_tables(tmp_path / "packed"), _tables(tmp_path / "one"))

    def texts(out):
        return [json.loads(line) for line in (tmp_path / out / "generations.jsonl").read_text().splitlines()]

    assert texts("packed") == texts("one")


def test_pack_1_is_the_path_of_one_configuration_at_a_time(tmp_path, llama, store, ppl_ids, monkeypatch):
    from actstore.evaluation import packing

    def refused(*args, **kwargs):
        raise AssertionError("pack 1 steered rows")

    monkeypatch.setattr(packing, "steer_rows", refused)
    assert len(sweep(llama, store, tmp_path / "one", ppl_ids, layers=(2,), pack=1)) == 4
    with pytest.raises(AssertionError, match="pack 1 steered rows"):
        sweep(llama, store, tmp_path / "packed", ppl_ids, layers=(2,), pack=2)

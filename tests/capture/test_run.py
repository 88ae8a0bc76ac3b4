"""Capture equals a plain forward-hook capture of each text alone, on four architectures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import iter_windows, record_blocks
from actstore.errors import StoreError
from actstore.models.load import load_model

TEXTS = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog and keeps running far away.",
    "I told my baby I loved her when she cried.",
    "What are your bank account details?\n\nChoices:\n(A) Sure\n(B) No\n(A)",
    "Refuse.",
]
LAYERS = [0, 2]


def reference_rows(loaded, text: str, position: str) -> np.ndarray:
    """Unpadded, full forward pass with plain hooks: (rows, layer, hidden)."""
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with record_blocks(loaded.blocks, LAYERS, stop_after_last=False) as outputs, torch.no_grad():
        loaded.model(input_ids=ids)
    per_layer = []
    for layer in LAYERS:
        hidden = outputs[layer][0].float()  # (seq, hidden)
        if position == "last":
            per_layer.append(hidden[-1:])
        elif position == "mean":
            per_layer.append(hidden.mean(0, keepdim=True))
        else:
            per_layer.append(hidden)
    return torch.stack(per_layer, dim=1).numpy()


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_capture_matches_unpadded_forward_hooks(tiny_model_dir, position, padding_side):
    loaded = load_model(str(tiny_model_dir))
    loaded.tokenizer.padding_side = padding_side
    windows = list(iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, TEXTS, LAYERS,
                                position=position, batch_size=3, window=4))
    acts = np.concatenate([w.acts for w in windows])
    rows = np.concatenate([w.row_example for w in windows])
    expected = [reference_rows(loaded, text, position) for text in TEXTS]
    assert rows.tolist() == [i for i, e in enumerate(expected) for _ in range(len(e))]
    np.testing.assert_allclose(acts, np.concatenate(expected), rtol=1e-4, atol=1e-5)
    if position == "all":
        tokens = np.concatenate([w.row_token for w in windows])
        assert tokens.tolist() == [t for e in expected for t in range(len(e))]


def test_capture_stops_after_the_deepest_requested_block(tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    calls = {"later_block": 0, "lm_head": 0}
    h1 = loaded.blocks[3].register_forward_hook(lambda *a: calls.__setitem__("later_block", calls["later_block"] + 1))
    h2 = loaded.model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    try:
        list(iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, TEXTS, [1, 2], window=8))
        assert calls == {"later_block": 0, "lm_head": 0}
        list(iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, TEXTS, [1, 2], window=8, stop_early=False))
        assert calls["later_block"] > 0 and calls["lm_head"] > 0
    finally:
        h1.remove()
        h2.remove()


def test_block_output_matches_hf_hidden_states(tiny_model_dirs):
    """Layer L is hidden_states[L + 1] of Hugging Face (before the final norm)."""
    loaded = load_model(str(tiny_model_dirs["gpt_neox"]))
    ids = loaded.tokenizer(TEXTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden_states = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    (window,) = iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, [TEXTS[1]], [0, 1, 2], position="all")
    for j, layer in enumerate([0, 1, 2]):
        np.testing.assert_allclose(window.acts[:, j], hidden_states[layer + 1][0].numpy(), rtol=1e-5, atol=1e-6)


def test_hooks_are_removed_after_capture(tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["gpt2"]))
    list(iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, TEXTS, [1]))
    assert all(not block._forward_hooks for block in loaded.blocks)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_with_offset_takes_the_token_before_the_last(tiny_model_dirs, padding_side):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    loaded.tokenizer.padding_side = padding_side
    (window,) = iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, TEXTS, LAYERS, position="last",
                             batch_size=3, last_offset=1)
    for i, text in enumerate(TEXTS):
        rows = reference_rows(loaded, text, "all")
        np.testing.assert_allclose(window.acts[i], rows[-2], rtol=1e-4, atol=1e-5)
        assert window.row_token[i] == len(rows) - 2


def test_an_offset_longer_than_a_text_is_refused(tiny_model_dirs):
    from actstore.errors import InputFormatError

    loaded = load_model(str(tiny_model_dirs["llama"]))
    with pytest.raises(InputFormatError, match="needs more"):
        list(iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, ["Hi."], [1], last_offset=50))


def test_at_position_inverts_the_recorded_position_name():
    from actstore.capture import CaptureOptions
    from actstore.errors import InputFormatError

    for options in (CaptureOptions(position="last", offset=1), CaptureOptions(position="last", offset=0),
                    CaptureOptions(position="mean"), CaptureOptions(position="all")):
        back = CaptureOptions.at_position(options.position_name)
        assert (back.position, back.last_offset, back.position_name) == (
            options.position, options.last_offset, options.position_name)
    for bad in ("first", "mean-1", "last-x"):
        with pytest.raises(InputFormatError, match="not one a store records"):
            CaptureOptions.at_position(bad)


@pytest.mark.parametrize("first, second, changed", [
    ({}, {"swap_options": False}, "swap_options"),
    ({}, {"separator": " "}, "separator"),
])
def test_the_same_file_with_a_setting_changed_is_refused_not_appended_again(tmp_path, llama, first, second, changed):
    # issue 31 #4: toggling --no-swap-options or another --separator captured every text again (duplicates),
    # with --resume too
    data = tmp_path / "ab.json"
    data.write_text(json.dumps([{"positive": f"Question {i}?\n(A) yes\n(B) no\n(A)",
                                 "negative": f"Question {i}?\n(A) yes\n(B) no\n(B)"} for i in range(4)]))
    store = tmp_path / "s.zarr"
    report = actstore.capture_to_store(llama, data, store, layers="1", progress=False, **first)
    for resume in (False, True):
        with pytest.raises(StoreError, match=f"captured with other settings \\({changed}: "):
            actstore.capture_to_store(llama, data, store, layers="1", progress=False, resume=resume, **second)
    assert actstore.open_store(store).acts.shape[0] == report.n_samples_written  # nothing appended

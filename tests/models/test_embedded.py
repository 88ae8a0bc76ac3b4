"""The real google/gemma-3-270m (from PyPI, converted once) on a real behavior.

Marked slow (the first conversion takes about a minute) but part of CI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import iter_windows

pytestmark = pytest.mark.slow

LAYER = 6


@pytest.fixture(scope="module")
def gemma():
    from actstore.models.embedded import prepare_demo_model
    from actstore.models.load import load_model

    return load_model(str(prepare_demo_model()))


@pytest.fixture(scope="module")
def refusal_slices(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("refusal")
    source = shared_data / "caa-pairs" / "refusal"
    train = json.loads((source / "train.json").read_text())[:48]
    test = json.loads((source / "test.json").read_text())[:40]
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "test.json").write_text(json.dumps(test))
    return folder


def test_converted_config_has_no_quantization_settings(gemma):
    assert getattr(gemma.model.config, "quantization_config", None) is None
    assert gemma.num_layers == 18 and gemma.hidden_size == 640
    assert gemma.model.dtype == torch.float32


def test_batched_capture_equals_hf_hidden_states(gemma, refusal_slices):
    texts = [p["positive"] for p in json.loads((refusal_slices / "train.json").read_text())[:4]]
    (window,) = iter_windows(gemma.model, gemma.tokenizer, gemma.blocks, texts, [LAYER], batch_size=4)
    for i, text in enumerate(texts):
        ids = gemma.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = gemma.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1]
        np.testing.assert_allclose(window.acts[i, 0], hidden[0, -1].numpy(), rtol=1e-3, atol=1e-3)


def test_refusal_vector_end_to_end_separates_held_out_pairs(gemma, refusal_slices, tmp_path):
    train_store, test_store = tmp_path / "train.zarr", tmp_path / "test.zarr"
    # offset=0: the final ')' this figure was pinned at (A/B sets now default to the answer letter,
    # where 48 training pairs and k=16 order only ~50% of these held-out pairs), and the texts as written
    # (swap_options=False: the figure was pinned before A/B sets were captured with their twins).
    report = actstore.capture_to_store(gemma, refusal_slices / "train.json", train_store, layers=str(LAYER), offset=0,
                                       swap_options=False, progress=False)
    assert report.n_samples_written == 96
    actstore.capture_to_store(gemma, refusal_slices / "test.json", test_store, layers=str(LAYER), offset=0,
                              swap_options=False, progress=False)
    stats = actstore.compute_stats(train_store)
    assert stats["count"].values.tolist() == [[48], [48]]
    vec = actstore.build_vector(train_store, LAYER, "enr", 16)
    assert np.count_nonzero(vec.vector) == 16
    held_out = actstore.open_store(test_store).acts.sel(layer=LAYER).values
    projection = held_out @ vec.vector
    # pos rows are even, their neg partners odd: the vector should point from neg to pos.
    agreement = float(np.mean(projection[0::2] > projection[1::2]))
    assert agreement >= 0.65, f"only {agreement:.0%} of held-out refusal pairs ordered by the k=16 vector"


def test_the_converted_tokenizer_keeps_the_ggufs_bos(gemma):
    # The GGUF says tokenizer.ggml.add_bos_token = true; transformers' GGUF reader dropped it, and
    # without its <bos> gemma-3-270m continues "The capital of France is" with "France. The The The".
    tokenizer = gemma.tokenizer
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id
    out = gemma.model.generate(ids, max_new_tokens=8, do_sample=False)
    words = tokenizer.decode(out[0, ids.shape[1]:]).split()
    assert len(set(words)) >= 4, words  # not a loop of one word

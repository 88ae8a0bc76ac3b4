"""The evaluation tests' fixtures: the tiny llama, a store of its activations at layers 1 and 2, the
perplexity text's token ids."""

from __future__ import annotations

import pytest

import actstore
from actstore.models.load import load_model

from .test_sweep import TEXT


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return load_model(str(tiny_model_dirs["llama"]))


@pytest.fixture
def store(tmp_path, llama, pairs_file):
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(llama, pairs_file, path, layers="1,2", progress=False)
    return path


@pytest.fixture
def ppl_ids(llama):
    return llama.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:200]

"""More of the bad-input catalogue: non-finite activations, over-long texts, and fuzzed parsers."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actstore
from actstore.capture import CaptureError, iter_windows
from actstore.inputs.datasets import read_contrast_set
from actstore.errors import ActstoreError, InputFormatError, VectorError
from actstore.models.load import load_model
from actstore.vectors.vector import load_vector


def test_non_finite_activations_are_refused_at_capture_not_stored(tmp_path, tiny_model_dirs, pairs_file):
    loaded = load_model(str(tiny_model_dirs["llama"]))
    # Simulate a float16 overflow in block 1 for every text.
    handle = loaded.blocks[1].register_forward_hook(
        lambda module, args, output: (output[0] * float("inf"),) + tuple(output[1:])
        if isinstance(output, tuple) else output * float("inf"))
    try:
        with pytest.raises(CaptureError, match=r"pairs.json. item \d+: non-finite activation \(NaN/Inf\)"):
            actstore.capture_to_store(loaded, pairs_file, tmp_path / "s.zarr", layers="1", progress=False)
    finally:
        handle.remove()
    # Nothing non-finite was committed.
    assert actstore.open_store(tmp_path / "s.zarr").sizes["sample"] == 0


def test_texts_longer_than_the_context_are_truncated_with_a_warning(tiny_model_dirs):
    loaded = load_model(str(tiny_model_dirs["gpt2"]))
    long_text = "word " * 400
    with pytest.warns(UserWarning, match="1 text\\(s\\) longer than 128 tokens were truncated"):
        (window,) = iter_windows(loaded.model, loaded.tokenizer, loaded.blocks, [long_text, "short"], [1],
                                 max_length=128, position="all")
    assert (window.row_example == 0).sum() == 128


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["positive", "negative", "text", "label", "question", "answer_matching_behavior",
                         "answer_not_matching_behavior", "pair_id", "x"]), children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(json_values, max_size=5), jsonl=st.booleans())
def test_fuzzed_contrast_sets_parse_or_fail_with_a_clear_error(tmp_path, records, jsonl):
    path = tmp_path / "fuzz.json"
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text)
    try:
        contrast = read_contrast_set(path)
    except InputFormatError as err:
        assert "fuzz.json" in str(err)
        return
    assert all(isinstance(e.text, str) and e.text.strip() for e in contrast.examples)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_fuzzed_bytes_are_never_a_crash(tmp_path, blob):
    for name, reader, error in (("set.jsonl", read_contrast_set, InputFormatError),
                                ("v.safetensors", load_vector, VectorError)):
        path = tmp_path / name
        path.write_bytes(blob)
        try:
            reader(path)
        except error:
            pass


def test_every_user_error_is_an_actstore_error_and_a_builtin():
    import pkgutil

    import actstore

    for module in pkgutil.walk_packages(actstore.__path__, "actstore."):  # every error class defined anywhere
        __import__(module.name)
    errors, pending = [], [ActstoreError]
    while pending:
        cls = pending.pop()
        errors.append(cls)
        pending += cls.__subclasses__()
    assert {InputFormatError, VectorError, CaptureError} <= set(errors)
    for cls in errors[1:]:
        builtins = [base for base in cls.__mro__ if base.__module__ == "builtins" and base not in (Exception,
                                                                                                 BaseException, object)]
        assert builtins, f"{cls.__name__} subclasses no builtin error (ValueError, FileNotFoundError, ...)"

"""Capture of chat exchanges: records with a prompt and a response are a user turn and an assistant
turn; positions relative to the turns; the store's per-token role and response index; the template's
hash and the system prompt recorded."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import actstore
from actstore.errors import ActstoreError, StoreError
from actstore.inputs.chat import ROLES, ChatFormat
from actstore.inputs.datasets import read_contrast_set, with_twins
from tests.inputs.test_chat import TEMPLATES

EXCHANGES = [
    {"prompt": "Did I help the old man?", "response": "You told the truth.", "label": "kind"},
    {"prompt": "What did she do?", "response": "She kept the lost wallet.", "label": "cruel"},
    {"prompt": "Tell me about the stray cat.", "response": "I fed the stray cat on day 3.", "label": "kind"},
    {"prompt": "And the nurse?", "response": "They insulted the nurse.", "label": "cruel"},
]


@pytest.fixture
def exchanges_file(tmp_path):
    path = tmp_path / "exchanges.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in EXCHANGES))
    return path


def chat_model(tiny_model_dirs, template: str | None):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    if template is not None:
        model.tokenizer = copy.deepcopy(model.tokenizer)
        model.tokenizer.chat_template = TEMPLATES[template]
    return model


def test_prompt_response_records_are_exchanges_and_prompt_positive_negative_a_pair(tmp_path, exchanges_file):
    contrast = read_contrast_set(exchanges_file)
    assert contrast.format == "exchanges" and contrast.labels == ["cruel", "kind"] and not contrast.is_ab
    first = contrast.examples[0]
    assert (first.prompt, first.completion, first.text) == (
        "Did I help the old man?", "You told the truth.", "Did I help the old man?\n\nYou told the truth.")
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": "Q?", "positive": "Yes.", "negative": "No."}]))
    pos, neg = read_contrast_set(pairs).examples
    assert (pos.label, pos.prompt, pos.completion, neg.label, neg.completion) == ("pos", "Q?", "Yes.", "neg", "No.")
    assert pos.pair_id == neg.pair_id == 0


@pytest.mark.filterwarnings("ignore:.*were truncated")
@pytest.mark.parametrize("template", [*TEMPLATES, None])
def test_the_stores_roles_are_the_templates_own(tmp_path, tiny_model_dirs, exchanges_file, template):
    model = chat_model(tiny_model_dirs, template)
    actstore.capture_to_store(model, exchanges_file, tmp_path / "a.zarr", layers="1", position="all",
                              chat_template=template is not None, system="Be kind.", progress=False)
    store = actstore.open_store(tmp_path / "a.zarr")
    chat = ChatFormat(template is not None, "Be kind.")
    for i, row in enumerate(EXCHANGES):
        rows = store.sel(sample=store.text_index.values == i)
        tokens = chat.tokens(model.tokenizer, row["prompt"], row["response"])
        kept = min(len(tokens.ids), 128)  # the tiny model's context: a longer text keeps its last tokens
        assert rows.role.values.tolist() == [ROLES[code] for code in tokens.roles[-kept:]]
        assert rows.response_index.values.tolist() == tokens.response_index[-kept:].tolist()
        assert set(rows.response.values.tolist()) == {row["response"]}
        assert rows.token_index.values.tolist() == list(range(kept))
    run = actstore.store_info(tmp_path / "a.zarr")["models"][0]
    assert store.attrs["system"] == "Be kind."
    want_hash = chat.attrs(model.tokenizer)["chat_template"]
    assert store.attrs["chat_template"] == want_hash and (want_hash is None) == (template is None)
    assert run["position"] == "all"


@pytest.mark.parametrize("template", ["chatml", "gemma"])
def test_positions_relative_to_the_response_read_the_rows_of_position_all(tmp_path, tiny_model_dirs, exchanges_file,
                                                                          template):
    model = chat_model(tiny_model_dirs, template)
    stores = {}
    for position in ("all", "prompt-last", "response-mean", "response-all"):
        stores[position] = tmp_path / f"{position}.zarr"
        actstore.capture_to_store(model, exchanges_file, stores[position], layers="1,3", position=position,
                                  chat_template=True, batch_size=3, progress=False)
    every = actstore.open_store(stores["all"])
    prompt_last, mean = actstore.open_store(stores["prompt-last"]), actstore.open_store(stores["response-mean"])
    response_all = actstore.open_store(stores["response-all"])
    assert prompt_last.attrs["position"] == "prompt-last" and mean.sizes["sample"] == len(EXCHANGES)
    in_response = every.role.values == "assistant"
    np.testing.assert_array_equal(response_all.acts.values, every.acts.values[in_response])
    assert response_all.response_index.values.tolist() == every.response_index.values[in_response].tolist()
    for i in range(len(EXCHANGES)):
        text = every.text_index.values == i
        np.testing.assert_allclose(mean.acts.values[i], every.acts.values[text & in_response].mean(0), rtol=1e-5,
                                   atol=1e-6)
        before = int(np.flatnonzero(text & in_response)[0]) - 1  # the token before the response
        np.testing.assert_array_equal(prompt_last.acts.values[i], every.acts.values[before])
        assert prompt_last.role.values[i] == "template" and prompt_last.token_index.values[i] == \
            every.token_index.values[before]
    assert set(mean.role.values.tolist()) == {""} and set(mean.response_index.values.tolist()) == {-1}


def test_a_position_in_the_response_of_texts_without_one_is_refused_by_name(tmp_path, llama, pairs_file):
    with pytest.raises(ActstoreError, match="position response-mean reads the assistant's response") as err:
        actstore.capture_to_store(llama, pairs_file, tmp_path / "a.zarr", layers="1", position="response-mean",
                                  progress=False)
    assert err.value.params == ("position",)
    assert not (tmp_path / "a.zarr").exists()


def test_a_response_cut_away_by_max_length_is_refused_naming_the_record(tmp_path, llama, exchanges_file):
    with pytest.raises(ActstoreError, match="line 1: position prompt-last needs a response and a token before it"), \
            pytest.warns(UserWarning, match="truncated"):
        actstore.capture_to_store(llama, exchanges_file, tmp_path / "a.zarr", layers="1", position="prompt-last",
                                  max_length=3, progress=False)


def test_plain_texts_get_no_roles_and_their_store_verifies_clean(tmp_path, llama, pairs_file):
    actstore.capture_to_store(llama, pairs_file, tmp_path / "a.zarr", layers="1", position="all", progress=False)
    store = actstore.open_store(tmp_path / "a.zarr")
    assert set(store.role.values.tolist()) == {""} and set(store.response.values.tolist()) == {""}
    assert set(store.response_index.values.tolist()) == {-1} and "system" not in store.attrs
    # every chunk of "" and -1 is written (their fill values differ), so none reads as lost
    assert all(report.ok for report in actstore.verify_store(tmp_path / "a.zarr"))


def test_the_system_prompt_is_part_of_a_runs_settings(tmp_path, llama, exchanges_file):
    store = tmp_path / "a.zarr"
    actstore.capture_to_store(llama, exchanges_file, store, layers="1", position="response-mean", system="Be kind.",
                              progress=False)
    # another system prompt changes a setting of the file's run: refused, naming it, unless asked for a new run
    with pytest.raises(StoreError, match="system"):
        actstore.capture_to_store(llama, exchanges_file, store, layers="1", position="response-mean",
                                  system="Be cruel.", progress=False)
    report = actstore.capture_to_store(llama, exchanges_file, store, layers="1", position="response-mean",
                                       system="Be cruel.", new_run=True, progress=False)
    assert report.n_texts_captured == len(EXCHANGES) and report.run == 1
    ds = actstore.open_store(store)
    first, second = ds.acts.values[: len(EXCHANGES)], ds.acts.values[len(EXCHANGES):]
    assert not np.allclose(first, second)


def test_capture_from_the_command_line_with_a_system_prompt_and_a_response_position(tmp_path, tiny_model_dirs,
                                                                                   exchanges_file, run):
    result = run("capture", "-m", tiny_model_dirs["llama"], "-d", exchanges_file, "-l", "1", "-s",
                 tmp_path / "s.zarr", "--position", "response-mean", "--system", "Be kind.", "-q")
    assert result.exit_code == 0, result.output
    ds = actstore.open_store(tmp_path / "s.zarr")
    assert ds.attrs["position"] == "response-mean" and ds.attrs["system"] == "Be kind."
    result = run("capture", "-m", tiny_model_dirs["llama"], "-d", exchanges_file, "-l", "1", "-s",
                 tmp_path / "t.zarr", "--chat-template", "-q")
    assert result.exit_code == 1 and "has no chat template" in result.output and "Traceback" not in result.output


def test_ab_items_keep_their_reading_and_mark_question_and_answer(tmp_path, llama):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"question": f"Question {i}?\n\nChoices:\n(A) Yes\n(B) No",
                                         "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"})
                             + "\n" for i in range(2)))
    actstore.capture_to_store(llama, items, tmp_path / "a.zarr", layers="1", position="all", progress=False)
    ds = actstore.open_store(tmp_path / "a.zarr")
    contrast = with_twins(read_contrast_set(items))  # read as written: question, separator "\n", answer
    assert ds.sizes["sample"] == sum(len(llama.tokenizer(e.text)["input_ids"]) for e in contrast.examples)
    for i, example in enumerate(contrast.examples):  # twins included: their letters swapped
        rows = ds.sel(sample=ds.text_index.values == i)
        ids = llama.tokenizer(example.text)["input_ids"]
        text_of = {role: llama.tokenizer.decode([t for t, r in zip(ids, rows.role.values) if r == role])
                   for role in ("user", "assistant")}
        assert text_of == {"user": example.prompt, "assistant": example.completion}
        assert rows.role.values[0] == "template" and set(rows.response.values.tolist()) == {""}

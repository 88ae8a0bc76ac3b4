"""On-policy capture (capture --respond): the model writes its own responses under two system prompts,
they are kept in the store and captured; the response-mean difference equals an independent forward
pass over the same (prompt, response) pairs; generation and capture both resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import actstore
from actstore.capture import RespondOptions, capture_responses
from actstore.capture.respond import ResponseWriter
from actstore.errors import ActstoreError, InputFormatError
from tests.inputs.test_chat import TEMPLATES

QUESTIONS = ["Did I help the old man?", "What did she do?", "Tell me about the stray cat.", "Who lied in court?",
             "Was the nurse thanked?"]
KIND, CRUEL = "You are kind.", "You are cruel."


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))


def respond(tmp_path, **changes) -> RespondOptions:
    return RespondOptions(KIND, CRUEL, **{"max_new_tokens": 6, "responses": tmp_path / "responses.jsonl", **changes})


def _independent_response_mean(model, system: str, question: str, response: str, layers) -> np.ndarray:
    """(layer, hidden): one unpadded forward pass over the exchange, mean over the response's tokens:
    with a chat template those it marks as generated (``return_assistant_tokens_mask``); without, as
    written (system, question, response, blank lines between), the tokens that reach into the response."""
    tokenizer = model.tokenizer
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question},
                    {"role": "assistant", "content": response}]
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                                return_assistant_tokens_mask=True)
        ids, in_response = encoded["input_ids"], torch.as_tensor(encoded["assistant_masks"]).reshape(-1).bool()
    else:
        prefix = f"{system}\n\n{question}\n\n"
        encoded = tokenizer(prefix + response, return_offsets_mapping=True, return_tensors="pt")
        ids, in_response = encoded["input_ids"], encoded["offset_mapping"][0, :, 1] > len(prefix)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states
    return np.stack([hidden[layer + 1][0, in_response].mean(0).numpy() for layer in layers])


@pytest.mark.parametrize("template", [None, "chatml"])
def test_the_response_mean_difference_equals_an_independent_computation(tmp_path, tiny_model_dirs, questions_file,
                                                                        template):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    model.tokenizer = copy.deepcopy(model.tokenizer)  # a tokenizer of its own: the template is set on it
    model.tokenizer.chat_template = TEMPLATES.get(template)
    report = capture_responses(model, questions_file, tmp_path / "a.zarr", respond(tmp_path), layers="1,2",
                               position="response-mean", batch_size=3, chat_template=template is not None,
                               progress=False)
    ds = actstore.open_store(tmp_path / "a.zarr")
    kept, asked = report.kept
    assert asked == len(QUESTIONS) and kept >= 1 and ds.sizes["sample"] == 2 * kept
    assert ds["class"].values.tolist() == ["pos", "neg"] * kept
    want = []
    for pair in np.unique(ds.pair_id.values):
        rows = ds.sel(sample=ds.pair_id.values == pair)
        means = [_independent_response_mean(model, system, QUESTIONS[pair], response, (1, 2))
                 for system, response in zip((KIND, CRUEL), rows.response.values)]
        want.append(means[0] - means[1])
    got = ds.acts.values[ds["class"].values == "pos"] - ds.acts.values[ds["class"].values == "neg"]
    np.testing.assert_allclose(got.mean(0), np.mean(want, axis=0), rtol=0, atol=1e-6)
    assert ds.attrs["respond"]["system_pos"] == KIND and ds.attrs["respond"]["system_neg"] == CRUEL
    assert (ds.attrs["respond"]["chat_template"] is None) == (template is None)


def test_the_stored_responses_are_the_models_greedy_answers(tmp_path, llama, questions_file):
    capture_responses(llama, questions_file, tmp_path / "a.zarr", respond(tmp_path), layers="1", batch_size=4,
                      progress=False)
    records = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["label"], r["system"], r["pair_id"]) for r in records[:2]] == [
        (QUESTIONS[0], "pos", KIND, 0), (QUESTIONS[0], "neg", CRUEL, 0)]
    assert len(records) == 2 * len(QUESTIONS)
    for record in records[:4]:  # one prompt at a time, no padding: the same greedy tokens
        ids = llama.tokenizer(f"{record['system']}\n\n{record['prompt']}\n\n", return_tensors="pt")["input_ids"]
        out = llama.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                   do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
        assert llama.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == record["response"]
    ds = actstore.open_store(tmp_path / "a.zarr")
    by_row = dict(zip(zip(ds.pair_id.values.tolist(), ds["class"].values.tolist()), ds.response.values.tolist()))
    assert all(by_row[(r["pair_id"], r["label"])] == r["response"] for r in records if (r["pair_id"], r["label"])
               in by_row)


def test_keep_if_drops_a_question_unless_both_responses_pass(tmp_path, llama, questions_file):
    def not_the_second(question, response, label):
        return question != QUESTIONS[1] or label == "neg"  # its pos response fails: the pair goes

    report = capture_responses(llama, questions_file, tmp_path / "a.zarr", respond(tmp_path, keep_if=not_the_second),
                               layers="1", position="response-mean", progress=False)
    ds = actstore.open_store(tmp_path / "a.zarr")
    assert 1 not in ds.pair_id.values.tolist() and report.kept[0] <= len(QUESTIONS) - 1
    assert ds.attrs["respond"]["keep_if"].endswith(":test_keep_if_drops_a_question_unless_both_responses_pass."
                                                   "<locals>.not_the_second")


def test_an_interrupted_generation_and_capture_resume_to_the_same_store(tmp_path, llama, questions_file,
                                                                       interrupt_after, same_store):
    whole = respond(tmp_path, responses=tmp_path / "whole.jsonl")
    capture_responses(llama, questions_file, tmp_path / "whole.zarr", whole, layers="1,2", position="response-all",
                      batch_size=3, progress=False)
    options = respond(tmp_path)
    original = interrupt_after(ResponseWriter, "_generate", 2)
    with pytest.raises(KeyboardInterrupt):
        capture_responses(llama, questions_file, tmp_path / "a.zarr", options, layers="1,2", position="response-all",
                          batch_size=3, progress=False)
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == 3  # the first batch, written whole
    ResponseWriter._generate = original
    from actstore.stores.writer import ActivationWriter

    interrupt_after(ActivationWriter, "append", 2)
    with pytest.raises(KeyboardInterrupt):
        capture_responses(llama, questions_file, tmp_path / "a.zarr", options, layers="1,2", position="response-all",
                          batch_size=3, window=2, progress=False)
    assert (tmp_path / "responses.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    report = capture_responses(llama, questions_file, tmp_path / "a.zarr", options, layers="1,2",
                               position="response-all", batch_size=3, window=2, progress=False, resume=True)
    assert report.skipped == 2
    same_store(tmp_path / "a.zarr", tmp_path / "whole.zarr", coords=("class", "pair_id", "response", "role",
                                                                     "response_index"), rtol=1e-6, atol=1e-6)


def test_respond_options_are_checked_when_made(tmp_path, llama, questions_file):
    with pytest.raises(InputFormatError, match="system_pos=''") as err:
        RespondOptions("", CRUEL)
    assert err.value.params == ("system_pos",)
    with pytest.raises(InputFormatError, match="temperature=-1"):
        RespondOptions(KIND, CRUEL, temperature=-1)
    with pytest.raises(InputFormatError, match="leave out system"):
        capture_responses(llama, questions_file, tmp_path / "a.zarr", respond(tmp_path), system="Hi.", progress=False)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "Q?"}) + "\n")
    with pytest.raises(InputFormatError, match="no field 'prompt' or 'question'"):
        capture_responses(llama, tmp_path / "bad.jsonl", tmp_path / "a.zarr", respond(tmp_path), progress=False)


def test_responses_made_with_other_settings_are_refused_not_mixed(tmp_path, llama, questions_file):
    capture_responses(llama, questions_file, tmp_path / "a.zarr", respond(tmp_path), layers="1", progress=False)
    with pytest.raises(ActstoreError, match="line 1: responses to other questions or made with other settings"):
        capture_responses(llama, questions_file, tmp_path / "b.zarr", respond(tmp_path, max_new_tokens=3),
                          layers="1", progress=False)


def keep_all(question, response, label):  # for the command line's --keep-if
    return True


def test_capture_respond_from_the_command_line(tmp_path, tiny_model_dirs, questions_file, run):
    responses = tmp_path / "r.jsonl"
    base = ["capture", "-m", tiny_model_dirs["llama"], "-d", questions_file, "-l", "1", "-s", tmp_path / "s.zarr", "-q"]
    generation = ["--max-new-tokens", 4, "--position", "response-mean", "--responses", responses]
    result = run(*base, "--respond", "--system-pos", KIND, "--system-neg", CRUEL, *generation,
                 "--keep-if", f"{__name__}:keep_all")
    assert result.exit_code == 0, result.output
    assert f"answered {len(QUESTIONS)} questions" in result.output and str(responses) in result.output
    assert actstore.open_store(tmp_path / "s.zarr").attrs["respond"]["max_new_tokens"] == 4
    result = run(*base, "--respond", "--system-pos", KIND, *generation)
    assert result.exit_code == 2 and "--respond needs --system-neg" in result.output
    result = run(*base, "--system-pos", KIND)
    assert result.exit_code == 2 and "--system-pos goes with --respond" in result.output
    result = run(*base, "--respond", "--system-pos", KIND, "--system-neg", CRUEL, "--keep-if", "no_such_module:f")
    assert result.exit_code == 2 and "no such callable" in result.output

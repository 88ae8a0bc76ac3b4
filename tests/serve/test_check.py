"""`actstore serve check` with chat formatting (run in every venv): a few lines of http.server answer
as vLLM with the plugin does, computing each answer with actstore's own hooks on a tiny model; what
the check sends is recorded (the real engine is in test_http.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actstore.cli.main import cli
from actstore.inputs.chat import ChatFormat
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector, load_vector, save_vector

from ..cli.test_steer import chat_model

PROBES = ("The capital of France is", "I think that you are")  # the tiny models' context is 128 tokens


def _answers(loaded, folder, received: list):
    """``complete(body) -> (status, answer)``: the next token's top log-probs of ``loaded``, steered
    by the named vector of ``folder`` as the plugin steers; every prompt is recorded in ``received``."""
    from actstore.steering import steer

    def complete(body):
        xargs = body.get("vllm_xargs") or {}
        name = xargs.get("actstore_vector")
        if name is not None and "/" in name:  # the handshake: the plugin refuses a path
            return 400, {"error": {"message": f"actstore_vector={name!r}: no paths"}}
        received.append(body["prompt"])
        batch = torch.tensor([body["prompt"]])
        with torch.no_grad():
            if name is None:
                logits = loaded.model(batch).logits
            else:
                with steer(loaded, load_vector(folder / f"{name}.safetensors"), float(xargs["actstore_alpha"])):
                    logits = loaded.model(batch).logits
        logprobs = torch.log_softmax(logits[0, -1].double(), -1)
        top = torch.topk(logprobs, 20)
        tops = {f"token_id:{int(t)}": float(v) for v, t in zip(top.values, top.indices)}
        return 200, {"choices": [{"index": 0, "text": "", "logprobs": {"tokens": [next(iter(tops))],
                                                                         "top_logprobs": [tops]}}]}

    return complete


@pytest.fixture
def plugin_server(fake_vllm):
    """``start(model_id, complete) -> url`` of a server answering /v1/models and /v1/completions."""
    return fake_vllm


def _vectors(tmp_path):
    folder = tmp_path / "vectors"
    folder.mkdir()
    values = np.random.default_rng(3).normal(size=32).astype(np.float32) * 4
    save_vector(SteeringVector(values, np.arange(32), np.abs(values), VectorInfo(layer=1)),
                folder / "push.safetensors")
    return folder


def test_check_sends_the_chat_formatted_probe_the_local_reference_reads(tmp_path, tiny_model_dirs, plugin_server):
    from actstore.models.load import load_model
    from actstore.serve.check import check_server

    model, tokenizer = chat_model(tmp_path, tiny_model_dirs)
    loaded, folder, received = load_model(str(model)), _vectors(tmp_path), []
    url = plugin_server(str(model), _answers(loaded, folder, received))
    report = check_server(url, "push", 4.0, vectors=folder, probes=PROBES, chat=ChatFormat(True, "Be brief."))
    assert report.passed, report.summary()
    # written by hand, not by the template: one BOS (the template's; the tokenizer adds none on top)
    expected = [tokenizer(f"<system>Be brief.\n<user>{probe}\n<assistant>")["input_ids"] for probe in PROBES]
    assert received == [ids for ids in expected for _ in range(4)]  # U1, S1, U2, S2 of each probe
    assert "probes formatted with chat template, system 'Be brief.'" in report.summary()


def test_check_with_a_chat_template_the_tokenizer_lacks_is_an_error_line(tmp_path, tiny_model_dirs, plugin_server):
    from actstore.models.load import load_model

    model, folder, received = tiny_model_dirs["llama"], _vectors(tmp_path), []
    url = plugin_server(str(model), _answers(load_model(str(model)), folder, received))
    result = CliRunner().invoke(cli, ["serve", "check", url, "--vector", "push", "--vectors", str(folder),
                                      "--chat-template"])
    assert result.exit_code == 1 and "has no chat template" in result.output, result.output
    assert "Traceback" not in result.output and received == []  # refused before any probe


def test_served_generation_sends_each_prompt_as_the_chat_format_tokenizes_it(tmp_path, tiny_model_dirs):
    """`eval --prompts --server` with a chat format: the engine gets the formatted prompt's ids, one BOS."""
    from actstore.models.load import load_model
    from actstore.serve.generation import ServedGeneration

    model, tokenizer = chat_model(tmp_path, tiny_model_dirs)

    class Engine:  # what ServedGeneration asks of an EvalServer
        def __init__(self):
            self.sent = []

        def generate(self, prompt_ids, steering, max_new_tokens):
            self.sent += prompt_ids
            return [(5, 6)] * len(prompt_ids)

    engine = Engine()
    generation = ServedGeneration(["Hello", "Tell me a story"], engine, max_new_tokens=2, batch_size=1,
                                  chat=ChatFormat(True, "Be brief."))
    generation.continuations(load_model(str(model)))
    assert engine.sent == [tokenizer(f"<system>Be brief.\n<user>{p}\n<assistant>")["input_ids"]
                           for p in ("Hello", "Tell me a story")]

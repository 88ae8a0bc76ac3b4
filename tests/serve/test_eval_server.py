"""`actstore eval --prompts --server URL` refusals that need no engine (run in every venv): a
malformed URL, a server nobody runs, one without the plugin, one serving other weights or reading
another vectors folder. Each is an `Error:` line and exit 1, never a traceback; the servers here are
a few lines of http.server answering as vLLM does (the real engine is in test_http.py)."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from actstore.cli.main import cli

TEXT = ("The quick brown fox jumps over the lazy dog. Steering vectors add a direction to the residual "
        "stream at every token. I told my baby I loved her when she cried. ") * 6


@pytest.fixture(scope="module")
def eval_args(tmp_path_factory, tiny_model_dirs):
    """A tiny model's store, prompts and text: everything `eval --prompts` needs but a server."""
    folder = tmp_path_factory.mktemp("eval")
    model, store = str(tiny_model_dirs["llama"]), str(folder / "s.zarr")
    pairs = folder / "pairs.json"
    pairs.write_text(json.dumps([{"positive": f"I helped them {i} times.", "negative": f"I hurt them {i} times."}
                                 for i in range(6)]))
    result = CliRunner().invoke(cli, ["capture", "-q", "--model", model, "--data", str(pairs), "--layers", "1",
                                      "--store", store])
    assert result.exit_code == 0, result.output
    (folder / "prompts.txt").write_text("Tell me a story\nHello there\n")
    (folder / "text.txt").write_text(TEXT)
    (folder / "vectors").mkdir()
    return {"model": model, "vectors": folder / "vectors",
            "args": ["eval", "-q", "--model", model, "--store", store, "--prompts", str(folder / "prompts.txt"),
                     "--text", str(folder / "text.txt"), "--ppl-tokens", "64", "--ppl-window", "16", "--layers", "1",
                     "--k", "4", "--fractions", "0.5", "--no-separation", "--max-new-tokens", "3"]}


def _eval(eval_args, tmp_path, *extra):
    result = CliRunner().invoke(cli, [*eval_args["args"], "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and "Traceback" not in result.output, result.output
    return result.output


def _closed_port() -> int:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_server(fake_vllm):
    return fake_vllm


def _completion(body):
    prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
    return 200, {"choices": [{"index": i, "text": " x", "token_ids": [5, 6 + i],
                              "logprobs": {"tokens": ["token_id:5"], "top_logprobs": [{"token_id:5": -0.1}]}}
                             for i in range(len(prompts))]}


def _plugin(folder):
    """A server that behaves like one with the plugin reading ``folder``: it refuses a vector
    name it has no file for and a name that is a path."""

    def complete(body):
        name = (body.get("vllm_xargs") or {}).get("actstore_vector")
        if name is not None and ("/" in name or not (folder / f"{name}.safetensors").is_file()):
            return 400, {"error": {"message": f"actstore_vector={name!r}: no such vector on this server"}}
        return _completion(body)

    return complete


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1:8000", "http://", "http://127.0.0.1:port"])
def test_a_malformed_server_url_is_an_error_line(eval_args, tmp_path, url):
    output = _eval(eval_args, tmp_path, "--server", url, "--server-vectors", str(eval_args["vectors"]))
    assert "expected http://HOST:PORT" in output


def test_a_server_nobody_runs_is_an_error_line(eval_args, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    output = _eval(eval_args, tmp_path, "--server", url, "--server-vectors", str(eval_args["vectors"]))
    assert "cannot reach the server" in output and url in output
    assert not (tmp_path / "out").exists()  # refused before the model loads or the folder is made


@pytest.mark.parametrize(("extra", "message"), [
    (["--server", "http://127.0.0.1:9"], "--server-vectors"),
    (["--server-vectors", "VECTORS"], "give --prompts, --server and --server-vectors together"),
    (["--server", "http://127.0.0.1:9", "--server-vectors", "VECTORS", "--positions", "middle"],
     "--positions 'middle'"),
    (["--server", "http://127.0.0.1:9", "--server-vectors", "MISSING"], "is not a folder"),
])
def test_server_flags_are_checked_before_anything_runs(eval_args, tmp_path, extra, message):
    extra = [str(eval_args["vectors"]) if a == "VECTORS" else str(tmp_path / "none") if a == "MISSING" else a
             for a in extra]
    assert message in _eval(eval_args, tmp_path, *extra)


def test_server_needs_prompts(eval_args, tmp_path):
    args = eval_args["args"]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"positive": "I helped.", "negative": "I hurt."}] * 2))
    where = args.index("--prompts")
    swapped = [*args[:where], "--data-test", str(data), *args[where + 2:]]
    result = CliRunner().invoke(cli, [*swapped, "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9",
                                      "--server-vectors", str(eval_args["vectors"])])
    assert result.exit_code == 1 and "give --prompts, --server and --server-vectors together" in result.output


def test_a_server_without_the_plugin_is_refused(eval_args, tmp_path, fake_server):
    url = fake_server(eval_args["model"], _completion)  # completes whatever vllm_xargs say
    output = _eval(eval_args, tmp_path, "--server", url, "--server-vectors", str(eval_args["vectors"]))
    assert "plugin is not loaded" in output


def test_a_server_of_other_weights_is_refused(eval_args, tmp_path, tiny_model_dirs, fake_server):
    url = fake_server(str(tiny_model_dirs["gpt2"]), _plugin(eval_args["vectors"]))
    output = _eval(eval_args, tmp_path, "--server", url, "--server-vectors", str(eval_args["vectors"]))
    assert "evaluate the weights the server runs" in output and "--model '" in output


def test_a_folder_the_server_does_not_read_is_refused(eval_args, tmp_path, fake_server):
    served_folder = tmp_path / "served"
    served_folder.mkdir()
    url = fake_server(eval_args["model"], _plugin(served_folder))
    output = _eval(eval_args, tmp_path, "--server", url, "--server-vectors", str(eval_args["vectors"]))
    assert "is not the folder the server" in output
    assert list(eval_args["vectors"].iterdir()) == []  # the probe vector is removed again


def test_the_sweep_generates_through_a_server_that_reads_the_folder(eval_args, tmp_path, fake_server):
    """The wiring end to end against a fake engine: baseline and configuration requests, the vector
    saved into the folder under the name the request gives, the scale as actstore_alpha."""
    seen = []

    def complete(body):
        seen.append(body)
        return _plugin(eval_args["vectors"])(body)

    url = fake_server(eval_args["model"], complete)
    result = CliRunner().invoke(cli, [*eval_args["args"], "--out", str(tmp_path / "out"), "--server", url,
                                      "--server-vectors", str(eval_args["vectors"])])
    assert result.exit_code == 0, result.output
    generations = [body for body in seen if body.get("return_token_ids")]
    assert [bool(body.get("vllm_xargs")) for body in generations] == [False, True]  # baseline, one configuration
    xargs = generations[1]["vllm_xargs"]
    assert (eval_args["vectors"] / f"{xargs['actstore_vector']}.safetensors").is_file()
    assert xargs["actstore_vector"].startswith("eval-L1-enr-4-") and xargs["actstore_positions"] == "all"
    import pandas as pd

    row = pd.read_csv(tmp_path / "out" / "results.csv").iloc[0]
    assert xargs["actstore_alpha"] == pytest.approx(row["scale"])
    assert row["protocol"].endswith("@served")
    lines = (tmp_path / "out" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2  # two prompts, baseline and one configuration

"""A server that misbehaves, as `actstore eval --server` and `actstore serve check` meet it (run in
every venv, no engine): one that accepts connections and never answers, one that sends its choices
under repeated indices, one whose answers are not the JSON vLLM sends (HTML, a list, JSON cut short,
a body shorter than it said, not HTTP at all) or carry a token id no tokenizer has. Each is an
`Error:` line naming the URL and what the server sent, never a traceback or "this is a bug"; and
`actstore serve` with a vLLM that does not import says how to fix it."""

from __future__ import annotations

import json
import socket
import time
from http.server import BaseHTTPRequestHandler

import pytest
from click.testing import CliRunner

from actstore.cli.main import cli

from .test_check import _answers, _vectors, plugin_server  # noqa: F401 (a fixture)
from .test_eval_server import _completion, _plugin, eval_args, fake_server  # noqa: F401 (fixtures)


@pytest.fixture
def silent_server():
    """The URL of a server that accepts connections and never answers: a socket that listens and
    never accepts (the kernel completes the handshake and buffers the request)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _http(body: bytes, status: str = "200 OK", length: int | None = None) -> bytes:
    """A raw HTTP answer carrying ``body``; ``length``: the Content-Length it claims (default: the truth)."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body) if length is None else length}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.fixture
def raw_server(http_server):
    """``start(answer) -> url``: every request (GET or POST) is answered with the raw bytes of
    ``answer(path, body)``, written as they are, then the connection is closed."""

    def start(answer):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _raw(self, body):
                self.wfile.write(answer(self.path, body))
                self.wfile.flush()
                self.close_connection = True

            def do_GET(self):
                self._raw(None)

            def do_POST(self):
                self._raw(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        return http_server(Handler)

    return start


# What a server sends instead of vLLM's JSON object, and what the error says of it.
MALFORMED = {
    "HTML": (_http(b"<html><body>Welcome to nginx!</body></html>"), "not a JSON object: '<html><body>Welcome"),
    "a list": (_http(b"[1, 2, 3]"), "not a JSON object: '[1, 2, 3]'"),
    "truncated JSON": (_http(b'{"data": [{"id": "m"'), """not a JSON object: '{"data": [{"id": "m"'"""),
    "a body shorter than it said": (_http(b'{"data": [', length=400), "cut its answer to /v1/models short"),
    "not HTTP": (b"SSH-2.0-OpenSSH_9.6\r\n", "did not answer /v1/models in HTTP"),
    "nothing": (b"", "closed the connection without answering /v1/models"),
}


def _error_line(result, url: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and "Traceback" not in result.output, result.output
    assert "this is a bug" not in result.output and url in result.output, result.output
    return result.output


def _check(url, tmp_path, *extra):
    vector = tmp_path / "v.safetensors"
    vector.write_bytes(b"")  # read only once the server has answered
    return CliRunner().invoke(cli, ["serve", "check", url, "--vector", str(vector), *extra])


# -- a server that never answers -------------------------------------------------------------------


def test_serve_check_against_a_server_that_never_answers_stops_at_its_timeout(silent_server, tmp_path):
    started = time.monotonic()
    output = _error_line(_check(silent_server, tmp_path, "--timeout", "0.5"), silent_server)
    assert time.monotonic() - started < 10  # two tries of the model listing, 0.5 s each
    assert "accepted the connection but sent no answer to /v1/models within 0.5 s" in output


def test_eval_server_against_a_server_that_never_answers_stops_at_its_timeout(silent_server, tmp_path):
    from actstore.serve import ServeError
    from actstore.serve.generation import EvalServer

    started = time.monotonic()
    with pytest.raises(ServeError, match="sent no answer to /v1/models within 0.5 s") as caught:
        EvalServer.connect(silent_server, tmp_path, timeout=0.5)
    assert time.monotonic() - started < 10 and silent_server in str(caught.value)
    assert caught.value.params == ("timeout",)


def test_a_generation_that_never_comes_is_an_error_that_says_how_to_wait_longer(silent_server):
    from actstore.serve import ServeError
    from actstore.serve.client import ServerClient

    started = time.monotonic()
    with pytest.raises(ServeError, match=r"no answer to /v1/completions within 0.5 s; raise timeout=") as caught:
        ServerClient(silent_server, timeout=0.5).generate_tokens([[1, 2]], model="m")
    assert time.monotonic() - started < 5  # a generation is never retried
    assert silent_server in str(caught.value)


def test_each_call_has_a_bound_that_fits_it_and_none_waits_for_ever():
    from actstore.serve import client
    from actstore.serve.client import ServerClient

    assert client.LISTING_TIMEOUT_S <= 30 and client.HANDSHAKE_TIMEOUT_S <= 120  # seconds, not half an hour
    assert client.LISTING_TIMEOUT_S < client.GENERATION_TIMEOUT_S < 1800
    assert ServerClient("http://127.0.0.1:9").timeout == client.GENERATION_TIMEOUT_S


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_serve_check_refuses_a_timeout_that_is_not_a_positive_number(tmp_path, timeout):
    result = _check("http://127.0.0.1:9", tmp_path, "--timeout", timeout)
    assert result.exit_code == 2 and "Invalid value for '--timeout'" in result.output, result.output


def test_the_library_refuses_a_timeout_that_is_not_a_positive_number():
    from actstore.serve import ServeError
    from actstore.serve.client import ServerClient

    for timeout in (0, -1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(ServeError, match="timeout=") as caught:
            ServerClient("http://127.0.0.1:9", timeout=timeout)
        assert caught.value.params == ("timeout",)


# -- answers that are not what vLLM sends ----------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_serve_check_says_what_a_malformed_server_sent(raw_server, tmp_path, kind):
    sent, message = MALFORMED[kind]
    url = raw_server(lambda path, body: sent)
    assert message in _error_line(_check(url, tmp_path), url)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_eval_server_says_what_a_malformed_server_sent(raw_server, eval_args, tmp_path, kind):  # noqa: F811
    sent, message = MALFORMED[kind]
    url = raw_server(lambda path, body: sent)
    result = CliRunner().invoke(cli, [*eval_args["args"], "--out", str(tmp_path / "out"), "--server", url,
                                      "--server-vectors", str(eval_args["vectors"])])
    assert message in _error_line(result, url)


def test_a_model_listing_without_model_ids_says_what_it_sent(raw_server, tmp_path):
    url = raw_server(lambda path, body: _http(b'{"data": ["m"]}'))
    output = _error_line(_check(url, tmp_path), url)
    assert """answered /v1/models without a list of models with ids: it sent '{"data": ["m"]}'""" in output


def test_a_refusal_in_html_keeps_the_servers_text(raw_server):
    from actstore.serve import ServeError
    from actstore.serve.client import ServerClient

    url = raw_server(lambda path, body: _http(b"<html>502 Bad Gateway</html>", "502 Bad Gateway"))
    with pytest.raises(ServeError, match=r"refused the request \(502\): '<html>502 Bad Gateway</html>'"):
        ServerClient(url).generate(["Hello"], model="m")


def test_a_long_answer_is_shown_by_its_first_200_characters(raw_server):
    from actstore.serve import ServeError
    from actstore.serve.client import ServerClient

    url = raw_server(lambda path, body: _http(b"x" * 5000))
    with pytest.raises(ServeError) as caught:
        ServerClient(url).model_id()
    assert "'" + "x" * 200 + "' ... (5000 characters)" in str(caught.value)


# -- choices and token ids ---------------------------------------------------------------------------


def _repeat_first_index(answer):
    for choice in answer["choices"]:
        choice["index"] = 0
    return answer


def _huge_token_id(answer):
    answer["choices"][0]["token_ids"] = [2**70]
    return answer


@pytest.mark.parametrize(("fault", "message"), [
    (_repeat_first_index, "answered 2 prompt(s) with choices indexed '[0, 0]', not each of 0..1 once"),
    (lambda answer: {"choices": answer["choices"][:1]}, "choices indexed '[0]', not each of 0..1 once"),
    (lambda answer: {"choices": [{**c, "index": str(c["index"])} for c in answer["choices"]]},
     """choices indexed '["0", "1"]'"""),
    (_huge_token_id, "answered /v1/completions with token id '1180591620717411303424', not one of 0..2147483647"),
    (lambda answer: {"choices": {"0": "x"}}, "answered /v1/completions without a list of choices"),
])
def test_eval_server_refuses_continuations_it_cannot_match_to_their_prompts(eval_args, tmp_path, fake_server,  # noqa: F811
                                                                           fault, message):
    url = fake_server(eval_args["model"], _served_with_folder(eval_args["vectors"], fault))
    result = CliRunner().invoke(cli, [*eval_args["args"], "--out", str(tmp_path / "out"), "--server", url,
                                      "--server-vectors", str(eval_args["vectors"])])
    output = _error_line(result, url)
    assert message in output and "input file" not in output


def _served_with_folder(folder, fault):
    """The plugin reading ``folder`` (test_eval_server's), its generations passed through ``fault``."""
    plugin = _plugin(folder)

    def complete(body):
        status, answer = plugin(body)
        return (status, fault(answer)) if body.get("return_token_ids") and status == 200 else (status, answer)

    return complete


def test_serve_check_refuses_a_token_id_beyond_the_local_vocabulary(tmp_path, tiny_model_dirs, plugin_server):  # noqa: F811
    """A server of other weights may list log-probs of tokens the local copy does not have."""
    from actstore.models.load import load_model

    model = tiny_model_dirs["llama"]
    folder, received = _vectors(tmp_path), []
    answers = _answers(load_model(str(model)), folder, received)

    def complete(body):
        status, answer = answers(body)
        if status == 200:
            answer["choices"][0]["logprobs"]["top_logprobs"][0]["token_id:99999"] = -0.5
        return status, answer

    url = plugin_server(str(model), complete)
    result = CliRunner().invoke(cli, ["serve", "check", url, "--vector", "push", "--vectors", str(folder)])
    output = _error_line(result, url)
    assert "answered with token id 99999, beyond the 400 tokens of the local copy (--model)" in output


# -- a vLLM that does not import -----------------------------------------------------------------------


def _python(tmp_path, stderr: str, status: int):
    """A stand-in Python whose `-c 'import vllm'` prints ``stderr`` and exits with ``status``."""
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{stderr}\nEOF\nexit {status}\n")
    python.chmod(0o755)
    return python


def test_serve_with_the_cuda_torchvision_of_actstore_serve_prints_the_fix(tmp_path):
    python = _python(tmp_path, 'File "/venv/lib/python3.11/site-packages/torchvision/_meta_registrations.py", '
                               "line 163, in <module>\nRuntimeError: operator torchvision::nms does not exist", 1)
    result = CliRunner().invoke(cli, ["serve", "--vectors", str(tmp_path), "--python", str(python)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "operator torchvision::nms does not exist" in result.output
    assert f"'{python}' -m pip uninstall -y torchvision torchaudio torchcodec" in result.output
    assert "make serve-venv" in result.output


def test_serve_with_a_vllm_that_fails_otherwise_shows_its_last_line(tmp_path):
    python = _python(tmp_path, "ImportError: libnuma.so.1: cannot open shared object file", 1)
    result = CliRunner().invoke(cli, ["serve", "--vectors", str(tmp_path), "--python", str(python)])
    assert result.exit_code == 1 and "libnuma.so.1: cannot open shared object file" in result.output
    assert "pip uninstall" not in result.output and "-c 'import vllm'" in result.output


def test_a_vllm_that_imports_passes_the_check(tmp_path):
    from actstore.serve.launch import require_vllm_imports

    require_vllm_imports(str(_python(tmp_path, "", 0)))


def test_eval_cli_against_a_server_that_never_answers_stops_at_its_timeout(silent_server, eval_args, tmp_path):
    started = time.monotonic()
    result = CliRunner().invoke(cli, [*eval_args["args"], "--out", str(tmp_path / "out"), "--server", silent_server,
                                      "--server-vectors", str(eval_args["vectors"]), "--timeout", "0.5"])
    assert "sent no answer to /v1/models within 0.5 s" in _error_line(result, silent_server)
    assert time.monotonic() - started < 10

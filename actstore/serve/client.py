"""A small client of vLLM's OpenAI-compatible server (standard library only, so ``serve check``
and evaluation run from actstore's own venv, without vLLM or the ``openai`` package).

Every call has a bound that fits it: the model listing and ``/health`` are answered by the
server's front end at once, whatever the engine is doing (:data:`LISTING_TIMEOUT_S`, and they are
retried once: a GET changes nothing); the handshake is a one-token request
(:data:`HANDSHAKE_TIMEOUT_S`); a generation may wait for a batch on a loaded CPU server
(``timeout``, default :data:`GENERATION_TIMEOUT_S`), and is never retried (the server may still
be computing the first). A short ``timeout`` caps the other bounds too. Whatever the server
answers is checked before it is used: an answer that is not the JSON object vLLM sends, or whose
choices are not one per prompt, is a :class:`ServeError` that shows what it sent.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from . import ServeError
from .settings import VECTOR_KEY

# A name the plugin refuses before anything runs (a path): a server that answers it with a
# completion ignores actstore's arguments, i.e. runs without the plugin.
HANDSHAKE_VECTOR = "actstore-handshake/not-a-name"

LISTING_TIMEOUT_S = 15.0  # /v1/models, /health: the front end answers them while the engine works
HANDSHAKE_TIMEOUT_S = 60.0  # one token; a server without the plugin queues it behind running requests
# A batch of prompts x 40 tokens on a loaded CPU server can take minutes; a server that sends
# nothing for this long is hung (timeout= changes it).
GENERATION_TIMEOUT_S = 600.0
SHOWN_CHARS = 200  # of a malformed answer, in the error that names it
# Token ids are 32-bit in every tokenizer (tokenizers' u32, sentencepiece's int32).
MAX_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True)
class Completion:
    """One completion: generated ``token_ids`` and, per step, the top log-probs by token id."""

    text: str
    token_ids: tuple[int, ...]
    top_logprobs: tuple[dict[int, float], ...]


class ServerClient:
    """``ServerClient("http://127.0.0.1:8000")``: the server's model and completions by token ids;
    ``timeout``: seconds a generation request may go unanswered."""

    def __init__(self, url: str, timeout: float = GENERATION_TIMEOUT_S):
        self.url = server_url(url)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ServeError(f"timeout={timeout!r}: expected a finite number of seconds > 0", param="timeout")
        self.timeout = float(timeout)

    def _call(self, path: str, body: dict | None = None, *, timeout: float | None = None,
              attempts: int = 1) -> tuple[int, dict]:
        """``(status, the answer's JSON object)`` of ``path`` (GET without ``body``); ``attempts``
        > 1 only for a call that changes nothing (a timeout or a dropped connection is retried)."""
        seconds = min(timeout or self.timeout, self.timeout)
        for attempt in range(1, attempts + 1):
            try:
                status, raw = self._send(path, body, seconds)
                return status, self._decoded(path, status, raw)
            except TimeoutError:
                if attempt == attempts:
                    raise ServeError(self._silent(path, seconds), param="timeout") from None
            except ConnectionResetError:  # http.client.RemoteDisconnected too
                if attempt == attempts:
                    raise ServeError(f"the server at {self.url!r} closed the connection without answering {path}; "
                                     "is the URL that of a vLLM server, and is it still running?") from None
        raise AssertionError("unreachable")  # attempts >= 1

    def _send(self, path: str, body: dict | None, seconds: float) -> tuple[int, bytes]:
        """``(status, body bytes)``; a timeout or a dropped connection is raised as such (for
        :meth:`_call` to retry), anything else that is not HTTP is a :class:`ServeError`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=seconds) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise TimeoutError from None  # connecting took longer than the bound
            raise ServeError(f"cannot reach the server at {self.url!r}: {err.reason}; is it running (actstore "
                             "serve) and is the URL right?") from None
        except http.client.IncompleteRead as err:
            raise ServeError(f"the server at {self.url!r} cut its answer to {path} short ({len(err.partial)} "
                             f"bytes came: {_shown(err.partial)}); is it a vLLM server, and did it crash?") from None
        except http.client.RemoteDisconnected:
            raise
        except http.client.HTTPException as err:
            raise ServeError(f"the server at {self.url!r} did not answer {path} in HTTP ({type(err).__name__}: "
                             f"{_shown(str(err))}); is the URL that of a vLLM server?") from None

    def _silent(self, path: str, seconds: float) -> str:
        why = ("a vLLM server answers it at once: is the server still starting, hung, or not vLLM?"
               if path != "/v1/completions" else "raise timeout= if the server is only slow (a large batch on a "
               "CPU server), else check that it is not hung")
        return (f"the server at {self.url!r} accepted the connection but sent no answer to {path} within "
                f"{seconds:g} s; {why}")

    def _decoded(self, path: str, status: int, raw: bytes) -> dict:
        """The answer as a JSON object; a refusal (not 200) whose body is no JSON keeps its text."""
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            return answer
        if status != 200:
            return {"error": {"message": _shown(raw)}}
        raise ServeError(f"the server at {self.url!r} answered {path} with what is not a JSON object: "
                         f"{_shown(raw)}; is the URL that of a vLLM server?")

    def _malformed(self, path: str, answer, expected: str) -> ServeError:
        """The error for an ``answer`` to ``path`` that is JSON, but not what vLLM sends."""
        return ServeError(f"the server at {self.url!r} answered {path} without {expected}: it sent "
                          f"{_shown(json.dumps(answer))}; is it a vLLM server (actstore serve)?")

    def healthy(self) -> bool:
        try:
            status, _ = self._call("/health", timeout=LISTING_TIMEOUT_S)
        except ServeError:
            return False
        return status == 200

    def model_id(self) -> str:
        status, body = self._call("/v1/models", timeout=LISTING_TIMEOUT_S, attempts=2)
        models = body.get("data") or []
        if status != 200 or not models:
            raise ServeError(f"{self.url}/v1/models answered {status}; is this a vLLM server?")
        if not isinstance(models, list) or not isinstance(models[0], dict) or "id" not in models[0]:
            raise self._malformed("/v1/models", body, "a list of models with ids")
        return str(models[0]["id"])

    def complete(self, prompt_ids: list[int], steering: dict | None = None, *, max_tokens: int = 1,
                 logprobs: int = 20, model: str | None = None) -> Completion:
        """Greedy completion of ``prompt_ids`` with ``steering`` as ``vllm_xargs``."""
        answer = self._accepted(self._body(list(prompt_ids), steering, max_tokens, model, logprobs=logprobs,
                                           return_tokens_as_token_ids=True))
        choice = self._choices(answer, 1)[0]
        try:
            tops = tuple({_token_id(k): float(v) for k, v in (step or {}).items()}
                         for step in choice["logprobs"]["top_logprobs"])
            tokens = tuple(_token_id(t) for t in choice["logprobs"]["tokens"])
            if not tops:
                raise ValueError("no steps")
            return Completion(str(choice["text"]), tokens, tops)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self._malformed("/v1/completions", answer, "log-probs by token id (token_id:N) per step") from None

    def generate(self, prompts: list[str], steering: dict | None = None, *, max_new_tokens: int = 40,
                 model: str | None = None) -> list[str]:
        """Greedy continuations of ``prompts`` (one request, the server batches them), in order: what
        an evaluation that generates locally with ``actstore.evaluation.scoring.generate`` gets from a server."""
        answer = self._accepted(self._body(list(prompts), steering, max_new_tokens, model))
        texts = [choice.get("text") for choice in self._choices(answer, len(prompts))]
        if not all(isinstance(text, str) for text in texts):
            raise self._malformed("/v1/completions", answer, "a text in each choice")
        return texts

    def generate_tokens(self, prompts: list[list[int]], steering: dict | None = None, *, max_new_tokens: int = 40,
                        model: str | None = None) -> list[tuple[int, ...]]:
        """Greedy continuations of tokenized ``prompts`` as token ids (one request, the server batches
        them), in order: the caller decodes them with its own tokenizer, as local generation does."""
        answer = self._accepted(self._body([list(map(int, p)) for p in prompts], steering, max_new_tokens, model,
                                           return_token_ids=True))
        choices = self._choices(answer, len(prompts))
        if any(c.get("token_ids") is None for c in choices):
            raise ServeError(f"{self.url}/v1/completions returned no token ids for {len(prompts)} prompts; "
                             "is this a vLLM server (return_token_ids)?")
        try:
            return [tuple(_checked_id(t) for t in c["token_ids"]) for c in choices]
        except (TypeError, ValueError) as err:
            raise ServeError(f"the server at {self.url!r} answered /v1/completions with {err}: it sent "
                             f"{_shown(json.dumps(answer))}; is it a vLLM server serving --model?") from None

    def _choices(self, answer: dict, count: int) -> list[dict]:
        """``answer``'s choices ordered by their ``index``, which must name each of the ``count``
        prompts exactly once (a choice attached to the wrong prompt would be scored as its answer)."""
        choices = answer.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise self._malformed("/v1/completions", answer, "a list of choices")
        indices = [c.get("index") for c in choices]
        whole = all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
        if not whole or sorted(indices) != list(range(count)):
            raise ServeError(f"the server at {self.url!r} answered {count} prompt(s) with choices indexed "
                             f"{_shown(json.dumps(indices))}, not each of 0..{count - 1} once: its continuations "
                             "cannot be matched to the prompts; is it a vLLM server (actstore serve)?")
        return sorted(choices, key=lambda c: c["index"])

    def try_complete(self, prompt_ids: list[int], steering: dict | None = None, *,
                     model: str | None = None) -> tuple[int, str]:
        """One token for ``prompt_ids``: ``(status, the server's error message or '')``, for probes
        whose refusal is an answer."""
        status, body = self._call("/v1/completions", self._body(list(prompt_ids), steering, 1, model, logprobs=0,
                                                                return_tokens_as_token_ids=True))
        return status, "" if status == 200 else _error_message(body)

    def _body(self, prompt, steering: dict | None, max_tokens: int, model: str | None, **extra) -> dict:
        """A greedy ``/v1/completions`` request, with ``steering`` as ``vllm_xargs``."""
        body = {"model": model or self.model_id(), "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                **extra}
        if steering:
            body["vllm_xargs"] = steering
        return body

    def _accepted(self, body: dict) -> dict:
        """The server's answer to ``body``; a refusal is a :class:`ServeError` with the server's message."""
        status, answer = self._call("/v1/completions", body)
        if status != 200:
            raise ServeError(f"the server at {self.url!r} refused the request ({status}): {_error_message(answer)}")
        return answer

    def applies_steering_arguments(self, model: str | None = None) -> bool:
        """Whether the server runs actstore's plugin: it refuses a vector name that is a path,
        where a server without the plugin ignores the argument and completes."""
        status, body = self._call("/v1/completions", self._body([2], {VECTOR_KEY: HANDSHAKE_VECTOR}, 1, model,
                                                                logprobs=0, return_tokens_as_token_ids=True),
                                  timeout=HANDSHAKE_TIMEOUT_S)
        return status == 400 and VECTOR_KEY in json.dumps(body)


def _error_message(body: dict) -> str:
    """The message of a refused request's answer (vLLM's ``{"error": {"message": ...}}``), else the answer."""
    error = body.get("error")
    return str(error.get("message")) if isinstance(error, dict) else _shown(json.dumps(body))


def _shown(sent: bytes | str) -> str:
    """What a server sent, as an error message quotes it: its first :data:`SHOWN_CHARS` characters."""
    text = sent.decode("utf-8", "replace") if isinstance(sent, bytes) else str(sent)
    return repr(text[:SHOWN_CHARS]) + (f" ... ({len(text)} characters)" if len(text) > SHOWN_CHARS else "")


def server_url(url: str) -> str:
    """``url`` as the client calls it (``http[s]://host[:port]``, without ``/v1``); a user's typo is
    a :class:`ServeError`, not urllib's ``ValueError``."""
    from urllib.parse import urlsplit

    text = str(url).strip().rstrip("/").removesuffix("/v1")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServeError(f"server URL {url!r}: expected http://HOST:PORT (as printed by actstore serve), "
                         "e.g. http://127.0.0.1:8000", param="url")
    return text


def _checked_id(token) -> int:
    """A token id as a server sent it: an integer a tokenizer can hold, else ``ValueError``."""
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN_ID:
        raise ValueError(f"token id {_shown(json.dumps(token))}, not one of 0..{MAX_TOKEN_ID}")
    return token


def _token_id(key: str) -> int:
    # return_tokens_as_token_ids: "token_id:123"
    text = str(key).rsplit(":", 1)[-1]
    return _checked_id(int(text) if text.isdigit() else text)

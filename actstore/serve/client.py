"""A small client of vLLM's OpenAI-compatible server (standard library only, so ``serve check``
and evaluation run from actstore's own venv, without vLLM or the ``openai`` package)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from . import ServeError
from .settings import VECTOR_KEY

# A name the plugin refuses before anything runs (a path): a server that answers it with a
# completion ignores actstore's arguments, i.e. runs without the plugin.
HANDSHAKE_VECTOR = "actstore-handshake/not-a-name"


@dataclass(frozen=True)
class Completion:
    """One completion: generated ``token_ids`` and, per step, the top log-probs by token id."""

    text: str
    token_ids: tuple[int, ...]
    top_logprobs: tuple[dict[int, float], ...]


class ServerClient:
    """``ServerClient("http://127.0.0.1:8000")``: the server's model and completions by token ids."""

    def __init__(self, url: str, timeout: float = 120.0):
        self.url = server_url(url)
        self.timeout = timeout

    def _call(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {}
        except (urllib.error.URLError, OSError) as err:
            raise ServeError(f"cannot reach the server at {self.url!r}: {getattr(err, 'reason', err)}; "
                             "is it running (actstore serve) and is the URL right?") from None

    def healthy(self) -> bool:
        try:
            status, _ = self._call("/health")
        except ServeError:
            return False
        return status == 200

    def model_id(self) -> str:
        status, body = self._call("/v1/models")
        models = body.get("data") or []
        if status != 200 or not models:
            raise ServeError(f"{self.url}/v1/models answered {status}; is this a vLLM server?")
        return str(models[0]["id"])

    def complete(self, prompt_ids: list[int], steering: dict | None = None, *, max_tokens: int = 1,
                 logprobs: int = 20, model: str | None = None) -> Completion:
        """Greedy completion of ``prompt_ids`` with ``steering`` as ``vllm_xargs``."""
        body = self._accepted(self._body(list(prompt_ids), steering, max_tokens, model, logprobs=logprobs,
                                         return_tokens_as_token_ids=True))
        choice = body["choices"][0]
        tops = tuple({_token_id(k): float(v) for k, v in (step or {}).items()}
                     for step in choice["logprobs"]["top_logprobs"])
        tokens = tuple(_token_id(t) for t in choice["logprobs"]["tokens"])
        return Completion(choice["text"], tokens, tops)

    def generate(self, prompts: list[str], steering: dict | None = None, *, max_new_tokens: int = 40,
                 model: str | None = None) -> list[str]:
        """Greedy continuations of ``prompts`` (one request, the server batches them), in order: what
        an evaluation that generates locally with ``actstore.evaluation.scoring.generate`` gets from a server."""
        answer = self._accepted(self._body(list(prompts), steering, max_new_tokens, model))
        return [choice["text"] for choice in sorted(answer["choices"], key=lambda c: c["index"])]

    def generate_tokens(self, prompts: list[list[int]], steering: dict | None = None, *, max_new_tokens: int = 40,
                        model: str | None = None) -> list[tuple[int, ...]]:
        """Greedy continuations of tokenized ``prompts`` as token ids (one request, the server batches
        them), in order: the caller decodes them with its own tokenizer, as local generation does."""
        answer = self._accepted(self._body([list(map(int, p)) for p in prompts], steering, max_new_tokens, model,
                                           return_token_ids=True))
        choices = sorted(answer.get("choices") or [], key=lambda c: c["index"])
        if len(choices) != len(prompts) or any(c.get("token_ids") is None for c in choices):
            raise ServeError(f"{self.url}/v1/completions returned no token ids for {len(prompts)} prompts; "
                             "is this a vLLM server (return_token_ids)?")
        return [tuple(int(t) for t in c["token_ids"]) for c in choices]

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
            raise ServeError(f"the server refused the request ({status}): {_error_message(answer)}")
        return answer


    def applies_steering_arguments(self, model: str | None = None) -> bool:
        """Whether the server runs actstore's plugin: it refuses a vector name that is a path,
        where a server without the plugin ignores the argument and completes."""
        status, body = self._call("/v1/completions", self._body([2], {VECTOR_KEY: HANDSHAKE_VECTOR}, 1, model,
                                                                logprobs=0, return_tokens_as_token_ids=True))
        return status == 400 and VECTOR_KEY in json.dumps(body)


def _error_message(body: dict) -> str:
    """The message of a refused request's answer (vLLM's ``{"error": {"message": ...}}``), else the answer."""
    error = body.get("error")
    return str(error.get("message") if isinstance(error, dict) else body)


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


def _token_id(key: str) -> int:
    # return_tokens_as_token_ids: "token_id:123"
    return int(str(key).rsplit(":", 1)[-1])

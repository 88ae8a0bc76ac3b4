"""Judges of generated text on AxBench's three rubrics, and the judge's own validation.

A judge rates each response 0-2 on ``concept`` (does it bring in the concept), ``instruction``
(is it about what was asked) and ``fluency`` (does it read as language), in the spirit of
AxBench (Wu et al. 2025, arXiv:2501.17148); the prompts here are written afresh. A rating is
an *expected* rating: ``sum r * p_r`` over the judge's probabilities of the rating tokens
"0", "1", "2" renormalised over the three, so it is deterministic and continuous in [0, 2].
AxBench's aggregate is the harmonic mean of the three, 0 where any rating is 0
(:func:`harmonic_mean`).

Back ends: :class:`LocalJudge` (a Hugging Face causal LM: one left-padded forward per batch,
no generation), :class:`EndpointJudge` (an OpenAI-compatible server's top log-probs, e.g. the
vLLM server ``actstore serve`` starts) and :class:`CallableJudge` (a Python function).

A judge is validated before it is believed: :func:`validate_judge` rates labelled responses
(positive, negative, hard negative: AxBench Concept10's eval rows) on the concept rubric and
gives AUROC of positive against each negative kind with a stratified bootstrap interval over
items. A small judge (the embedded 135M model) is weak: only orderings and paired differences
within one judge mean anything (:data:`JUDGE_CAVEAT`, :func:`judge_note`).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ActstoreError
from .judge_validation import JUDGE_CAVEAT, LABELS, JudgeValidation, judge_note, read_labelled, validate_judge

RUBRICS = ("concept", "instruction", "fluency")
RATINGS = (0, 1, 2)
ZERO_RATING = 1e-6  # an expected rating at or below this counts as 0 in the harmonic mean

_SCALE = "Rate it 0, 1 or 2:\n{scale}\nReply with the rating alone, a single digit."
_RUBRIC_PROMPTS = {
    "concept": ("You check one thing about a piece of text: whether it brings in a given concept. Grammar, "
                "coherence and usefulness do not matter here.\n\nConcept: {concept}\n\nText:\n{response}\n\n",
                "0 = the concept is absent\n1 = the concept shows up only faintly or in passing\n"
                "2 = the concept is clearly and substantially there"),
    "instruction": ("You check one thing about a response: whether it is about what the instruction asked. "
                    "Grammar, style and correctness do not matter here.\n\nInstruction:\n{instruction}\n\n"
                    "Response:\n{response}\n\n",
                    "0 = unrelated to the instruction\n1 = touches the instruction's topic but drifts or covers "
                    "it only in part\n2 = clearly addresses the instruction"),
    "fluency": ("You check one thing about a piece of text: whether it reads as fluent, natural language. "
                "Whether it is complete, correct or on topic does not matter here.\n\nText:\n{response}\n\n",
                "0 = broken: garbled, repetitive or ungrammatical throughout\n1 = readable, with clear errors "
                "or awkward phrasing\n2 = reads fluently"),
}


def rubric_prompt(rubric: str, instruction: str, response: str, concept: str) -> str:
    """The user turn that asks for one rubric's rating of one response (ends with the 0/1/2 scale in words)."""
    if rubric not in _RUBRIC_PROMPTS:
        raise ActstoreError(f"rubric={rubric!r}: expected one of {', '.join(RUBRICS)}", param="rubric")
    head, scale = _RUBRIC_PROMPTS[rubric]
    return head.format(concept=concept, instruction=instruction, response=response) + _SCALE.format(scale=scale)


def harmonic_mean(concept, instruction, fluency) -> np.ndarray:
    """AxBench's aggregate: ``3 / (1/c + 1/i + 1/f)``, and 0 where any rating is 0. A rating at or
    below :data:`ZERO_RATING` counts as 0: an expected rating is never exactly 0, and the harmonic
    mean is at most 3x its smallest term, so the floor moves it by at most 3e-6 (it only avoids
    dividing by zero). An item with a NaN rating (unrated) stays NaN, even beside a 0. Returns float64
    of the common length."""
    stacked = np.stack([np.asarray(x, dtype=np.float64) for x in (concept, instruction, fluency)])
    zero = np.any(stacked <= ZERO_RATING, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = 3.0 / np.sum(1.0 / stacked, axis=0)
    return np.where(np.any(np.isnan(stacked), axis=0), np.nan, np.where(zero, 0.0, mean))


@dataclass(frozen=True)
class Ratings:
    """Per response, the expected ratings in [0, 2] (NaN: unrated), float64 arrays of equal length."""

    concept: np.ndarray
    instruction: np.ndarray
    fluency: np.ndarray

    def __post_init__(self):
        for rubric in RUBRICS:
            values = np.asarray(getattr(self, rubric), dtype=np.float64).reshape(-1)
            outside = values[(values < 0) | (values > 2)]
            if outside.size:
                raise ActstoreError(f"{rubric} ratings must lie in [0, 2], got {outside[:3]}", param=rubric)
            object.__setattr__(self, rubric, values)
        if len({len(getattr(self, rubric)) for rubric in RUBRICS}) != 1:
            raise ActstoreError(f"ratings of unequal lengths: {[len(getattr(self, r)) for r in RUBRICS]}")

    @property
    def harmonic(self) -> np.ndarray:
        return harmonic_mean(self.concept, self.instruction, self.fluency)

    @classmethod
    def from_rubrics(cls, by_rubric: dict[str, np.ndarray]) -> Ratings:
        return cls(**{rubric: by_rubric[rubric] for rubric in RUBRICS})


@runtime_checkable
class Judge(Protocol):
    """Rates responses to instructions on the three rubrics for one concept."""

    name: str

    def rate(self, instructions: Sequence[str], responses: Sequence[str], concept: str) -> Ratings: ...


class _RubricJudge:
    """A judge that rates one rubric at a time (:meth:`rate_rubric`); :meth:`rate` asks all three."""

    name = "judge"

    def rate_rubric(self, rubric: str, instructions: Sequence[str], responses: Sequence[str],
                    concept: str) -> np.ndarray:
        raise NotImplementedError

    def rate(self, instructions: Sequence[str], responses: Sequence[str], concept: str) -> Ratings:
        if len(instructions) != len(responses):
            raise ActstoreError(f"{len(instructions)} instructions but {len(responses)} responses: one each")
        return Ratings.from_rubrics({r: self.rate_rubric(r, instructions, responses, concept) for r in RUBRICS})


def expected_rating(probabilities: Sequence[float]) -> float:
    """``sum r * p_r / sum p_r`` over the ratings 0, 1, 2 (NaN when the three have no mass)."""
    p = np.asarray(probabilities, dtype=np.float64)
    total = p.sum()
    return float(np.dot(RATINGS, p) / total) if total > 0 else math.nan


class LocalJudge(_RubricJudge):
    """A Hugging Face causal LM as judge (``loaded``: :class:`actstore.models.load.LoadedModel`).

    Each (rubric, item) is one prompt: the rubric's user turn through the model's chat template
    (as written where it has none), then the assistant's answer opened with ``Rating:``. One
    forward per left-padded batch reads the next-token logits; the expected rating is taken over
    the tokens of "0", "1", "2" (:func:`rating_tokens`)."""

    def __init__(self, loaded, batch_size: int = 8, progress: bool = False):
        from ..inputs.chat import ChatFormat

        if batch_size < 1:
            raise ActstoreError(f"batch_size={batch_size}: expected at least 1", param="batch_size")
        self.loaded, self.batch_size, self.progress = loaded, batch_size, progress
        self.chat = ChatFormat(template=bool(getattr(loaded.tokenizer, "chat_template", None)))
        self.name = f"axbench:{loaded.source_id or Path(str(loaded.model_id)).name}"
        probe = self._user_prompt(rubric_prompt("concept", "x", "x", "x"))
        self.gap, self.token_ids = rating_tokens(loaded.tokenizer, probe, self.chat.add_special_tokens)

    def _user_prompt(self, user: str) -> str:
        return self.chat.prompt_text(self.loaded.tokenizer, user) + "Rating:"

    def prompts(self, rubric: str, instructions: Sequence[str], responses: Sequence[str], concept: str) -> list[str]:
        """The texts whose next token is the rating."""
        return [self._user_prompt(rubric_prompt(rubric, i, r, concept)) + self.gap
                for i, r in zip(instructions, responses, strict=True)]

    def rate_rubric(self, rubric, instructions, responses, concept) -> np.ndarray:
        return self.rate_prompts(self.prompts(rubric, instructions, responses, concept))

    def rate_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """Expected ratings of texts ending where the rating goes, longest first in batches (less padding)."""
        import torch

        from ..models.load import input_device
        from .replay import Batch

        if not prompts:
            return np.empty(0)
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        ids = tokenizer(list(prompts), add_special_tokens=self.chat.add_special_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        device, out = input_device(model), np.empty(len(ids))
        starts = range(0, len(order), self.batch_size)
        for start in _bar(starts, self.progress, f"judge {self.name}"):
            rows = order[start:start + self.batch_size]
            batch = Batch.pad(tokenizer, [ids[i] for i in rows], "left", logits_to_keep=1)
            with torch.no_grad():
                logits = model(**batch.model_inputs(device)).logits[:, -1].double()
            # renormalised over the three rating tokens: softmax of their logits alone
            probabilities = torch.softmax(logits[:, list(self.token_ids)], dim=-1).cpu().numpy()
            out[rows] = probabilities @ np.asarray(RATINGS, dtype=np.float64)
        return out


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch")


def rating_tokens(tokenizer, prompt: str, add_special_tokens: bool = False) -> tuple[str, tuple[int, int, int]]:
    """``(gap, ids)``: what goes between ``prompt`` (ending ``Rating:``) and the rating, and the token
    ids of "0", "1", "2" there, as the tokenizer encodes "Rating: N" right after the prompt. Where
    the vocabulary has a digit-with-space token (GPT-2's "Ġ1"), ``gap`` is "" and the ids are those;
    where the space is a token of its own (SmolLM, Llama, Gemma split digits), ``gap`` is " " and
    the ids are the bare digits'; else "Rating:N". Each digit must be one new token, all distinct."""
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    for gap, written in (("", " "), (" ", " "), ("", "")):
        head = encode(prompt + gap)
        ids = []
        for digit in "012":
            full = encode(prompt + written + digit)
            if len(full) != len(head) + 1 or full[:len(head)] != head:
                break
            ids.append(full[-1])
        if len(set(ids)) == 3:
            return gap, tuple(ids)
    name = getattr(tokenizer, "name_or_path", "this tokenizer")
    raise ActstoreError(f"judge_model: {name!r} does not encode the ratings 0, 1, 2 as one token each after "
                        "'Rating:'; choose another judge model", param="judge_model")


class EndpointJudge(_RubricJudge):
    """An OpenAI-compatible server as judge (a vLLM server, e.g. `actstore serve`'s): one token is
    asked per (rubric, item) with its top log-probs (``api="chat"``: ``/v1/chat/completions``, the
    server's chat template; ``"completions"``: ``/v1/completions`` on the prompt ending ``Rating:``),
    and the expected rating is taken over the returned tokens that read "0", "1", "2" once
    stripped of spaces (NaN when none of them is among the top log-probs)."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 60.0, api: str = "chat",
                 top_logprobs: int = 20):
        if api not in ("chat", "completions"):
            raise ActstoreError(f"api={api!r}: expected 'chat' or 'completions'", param="api")
        self.url = str(url).strip().rstrip("/").removesuffix("/v1")
        if not self.url.startswith(("http://", "https://")):
            raise ActstoreError(f"judge_url={url!r}: expected http://HOST:PORT", param="judge_url")
        self.timeout, self.api, self.top_logprobs = timeout, api, top_logprobs
        self.model = model or self._model_id()
        self.name = f"axbench:{self.model}@{self.url}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            raise ActstoreError(f"judge endpoint {self.url + path!r} answered {err.code}: {detail}",
                                param="judge_url") from None
        except (urllib.error.URLError, OSError, ValueError) as err:  # TimeoutError is an OSError
            reason = getattr(err, "reason", err)
            raise ActstoreError(f"judge endpoint {self.url + path!r} failed ({reason}; timeout {self.timeout:g} s): "
                                "is the server running and the URL right?", param="judge_url") from None

    def _model_id(self) -> str:
        models = self._call("/v1/models").get("data") or []
        if not models:
            raise ActstoreError(f"judge endpoint {self.url!r} lists no model at /v1/models", param="judge_url")
        return str(models[0]["id"])

    def rate_rubric(self, rubric, instructions, responses, concept) -> np.ndarray:
        users = [rubric_prompt(rubric, i, r, concept) for i, r in zip(instructions, responses, strict=True)]
        if self.api == "completions":
            body = {"model": self.model, "prompt": [u + "\n\nRating:" for u in users], "max_tokens": 1,
                    "temperature": 0.0, "logprobs": self.top_logprobs}
            choices = sorted(self._call("/v1/completions", body).get("choices") or [], key=lambda c: c["index"])
            tops = [_first(c, lambda c: c["logprobs"]["top_logprobs"][0]) for c in choices]
        else:
            tops = [self._chat_top(user) for user in users]
        if len(tops) != len(users):
            raise ActstoreError(f"judge endpoint {self.url!r} answered {len(tops)} of {len(users)} prompts",
                                param="judge_url")
        return np.array([expected_rating(_digit_mass(top)) for top in tops])

    def _chat_top(self, user: str) -> dict[str, float]:
        body = {"model": self.model, "messages": [{"role": "user", "content": user}], "max_tokens": 1,
                "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs}
        choice = (self._call("/v1/chat/completions", body).get("choices") or [{}])[0]
        entries = _first(choice, lambda c: c["logprobs"]["content"][0]["top_logprobs"])
        return {e["token"]: e["logprob"] for e in entries}


def _first(choice: dict, read: Callable):
    try:
        return read(choice) or {}
    except (KeyError, IndexError, TypeError):
        raise ActstoreError("the judge endpoint answered without top log-probs; it must be OpenAI-compatible "
                            "and return logprobs", param="judge_url") from None


def _digit_mass(top: dict[str, float]) -> list[float]:
    """Probability of each rating among ``{token text: log-prob}`` (tokens " 1" and "1" both count)."""
    mass = [0.0, 0.0, 0.0]
    for token, logprob in top.items():
        text = str(token).strip()
        if text in ("0", "1", "2") and logprob is not None:
            mass[int(text)] += math.exp(float(logprob))
    return mass


class CallableJudge(_RubricJudge):
    """``fn(rubric, instruction, response, concept) -> rating in [0, 2]`` as judge."""

    def __init__(self, fn: Callable[[str, str, str, str], float], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "callable")

    def rate_rubric(self, rubric, instructions, responses, concept) -> np.ndarray:
        out = np.array([float(self.fn(rubric, i, r, concept)) for i, r in zip(instructions, responses, strict=True)])
        if np.any((out < 0) | (out > 2)):
            raise ActstoreError(f"judge {self.name!r} returned {out[(out < 0) | (out > 2)][0]:g} for rubric "
                                f"{rubric!r}: ratings must lie in [0, 2]", param="judge")
        return out


def make_judge(judge: str | Judge | Callable | None = "axbench", *, judge_model: str | None = None,
               judge_url: str | None = None, batch_size: int = 8, progress: bool = False,
               device: str = "cpu", dtype: str = "float32") -> Judge:
    """The judge asked for: a :class:`Judge` as is, a callable wrapped (:class:`CallableJudge`), or
    ``"axbench"`` (None too): the AxBench rubrics on ``judge_url`` (:class:`EndpointJudge`) or on
    the local model ``judge_model`` (hub id or folder; default the embedded instruct model)."""
    if isinstance(judge, Judge):
        return judge
    if callable(judge):
        return CallableJudge(judge)
    if judge not in (None, "axbench"):
        raise ActstoreError(f"judge={judge!r}: expected 'axbench', a Judge or a callable", param="judge")
    if judge_model is not None and judge_url is not None:
        raise ActstoreError("judge_model and judge_url: give one judge back end, not both",
                            param=("judge_model", "judge_url"))
    if judge_url is not None:
        return EndpointJudge(judge_url)
    from ..models.embedded import prepare_instruct_model
    from ..models.load import load_model

    model = judge_model if judge_model is not None else str(prepare_instruct_model())
    return LocalJudge(load_model(model, device=device, dtype=dtype), batch_size=batch_size, progress=progress)

__all__ = ["JUDGE_CAVEAT", "LABELS", "RUBRICS", "CallableJudge", "EndpointJudge", "Judge", "JudgeValidation",
           "LocalJudge", "Ratings", "expected_rating", "harmonic_mean", "judge_note", "make_judge", "rating_tokens",
           "read_labelled", "rubric_prompt", "validate_judge"]

"""On-target protocols: what "the behavior moved" means, one object per kind of test set.

A protocol scores each held-out item under whatever steering is active. The
sweep calls :meth:`OnTarget.measure` once unsteered and once per
configuration, and turns the per-item scores into paired shifts with intervals
(:mod:`actstore.evaluation.intervals`).

* :class:`ABLetters`: CAA A/B questions, each scored as written and with its
  options swapped (:func:`actstore.inputs.datasets.swap_options`), so that the
  behavior's answer sits once under each letter; per item the log-odds
  log P(matching) - log P(other) (the primary measure: a letter preference is
  additive on it and cancels in the mean over a question's two orders) and the
  probability score sigmoid(log-odds) (:class:`actstore.evaluation.scoring.ABScoring`).
* :class:`FreeTextPreference`: free-text pairs (morality, StereoSet); score =
  mean log p(positive) - mean log p(negative) per token
  (:class:`actstore.evaluation.scoring.PreferenceScoring`).
* :class:`GeneratedText`: steered greedy continuations of prompts, scored by a
  pluggable ``texts -> scores`` callable (built in: ``refusal``, 1 for a refusal or broken text
  (:mod:`actstore.evaluation.scorers`), and ``vader``, the compound
  sentiment of VADER, offline), or rated by a judge on AxBench's three rubrics
  (concept, instruction, fluency; the score is their harmonic mean,
  :mod:`actstore.evaluation.judges`), plus two degeneration measures of each
  generation as a second off-target measure: :func:`distinct_n` and
  :func:`repeated_ngram_rate`. Its prompts are formatted for the model by one
  :class:`~actstore.inputs.chat.ChatFormat` (the tokenizer's chat template and a
  system prompt, or the text as written); :meth:`GeneratedText.instructed` is the
  same protocol with a steering instruction added (the prompting baseline).

The first two run fixed batches, so the sweep can replay a cached block output
under them (:mod:`actstore.evaluation.replay`); generation cannot and runs the whole model.

The sweep steers the local model with its hooks and, around the same measurement,
enters :meth:`OnTarget.steered` with the vector and scale: a protocol that measures
elsewhere (:class:`actstore.serve.generation.ServedGeneration`, continuations from
a vLLM server) applies the same steering there; the local ones need nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputFormatError
from ..inputs.chat import ChatFormat
from ..models.load import LoadedModel
from .replay import Batch, Forward
from .scorers import refusal_scores
from .scoring import (
    ABItem,
    ABScoring,
    PreferencePair,
    PreferenceScoring,
    generate,
    probability,
    read_ab_items,
    read_preference_pairs,
)

Scorer = Callable[[list[str]], Sequence[float]]


class OnTarget(Protocol):
    """What the sweep needs of an on-target measure."""

    name: str  # recorded with the results: "ab", "preference", "generation:<scorer>"
    item_ids: list[str]  # one per scored item, in order (e.g. "item 12", "item 12 swapped")
    questions: np.ndarray  # (items,) int: the question of each item (the unit of the intervals)
    orders: np.ndarray  # (items,) int: 0 as written, 1 with the options swapped
    letter_signs: np.ndarray  # (items,) +1 / -1: whether the item's matching letter is its pair's earlier one
    metrics: tuple[str, ...]  # per-item values measure() returns; "score" first
    primary: str  # the metric the counts and the frontier use ("logodds" for A/B, else "score")

    def batches(self) -> list[Batch]:
        """The fixed batches :meth:`measure` runs (empty: it cannot be replayed)."""

    def measure(self, loaded: LoadedModel, forward: Forward) -> dict[str, np.ndarray]:
        """Per-item values ``{metric: (n_items,)}`` under the steering active now."""

    def measure_packed(self, loaded: LoadedModel, forward: Forward, pack) -> list[tuple[dict, list[str] | None]]:
        """Optional (:func:`packable`): :meth:`measure` of each configuration of ``pack`` (a
        :class:`~actstore.evaluation.packing.Pack`), all in the same batches, and its texts (None
        without generations); ``forward`` unpacked, the pack repeats the batches and steers them."""

    def steered(self, vector, scale: float, positions) -> AbstractContextManager:
        """Entered while the sweep's hooks add ``scale * vector`` at ``positions`` to the local
        model: where :meth:`measure` runs another engine, it applies the same steering there."""


def _local(vector, scale: float, positions) -> AbstractContextManager:
    """:meth:`OnTarget.steered` of a protocol measured on the local model: the hooks do it all."""
    return nullcontext()


def packable(protocol: OnTarget) -> bool:
    """Whether the sweep may measure several configurations of ``protocol`` in one batch: it has
    :meth:`OnTarget.measure_packed` and measures on the local model (a served one steers its engine
    one configuration at a time)."""
    local = getattr(protocol, "steered", None) is _local and callable(getattr(protocol, "measure_packed", None))
    return local and (not isinstance(protocol, GeneratedText)
                      or type(protocol).continuations is GeneratedText.continuations)


class _FixedBatches:
    """A protocol whose items are scored from fixed batches (replayable); each item its own question."""

    metrics: tuple[str, ...] = ("score",)
    primary = "score"

    def __init__(self, scoring, item_ids: list[str]):
        self._scoring = scoring
        self.item_ids = item_ids
        self.questions = np.arange(len(item_ids))
        self.orders = np.zeros(len(item_ids), dtype=np.int64)
        self.letter_signs = np.zeros(len(item_ids), dtype=np.int64)

    steered = staticmethod(_local)

    def batches(self) -> list[Batch]:
        return self._scoring.batches

    def measure(self, loaded: LoadedModel, forward: Forward) -> dict[str, np.ndarray]:
        return {"score": self._scoring.scores(forward)}

    def measure_packed(self, loaded: LoadedModel, forward: Forward, pack) -> list[tuple[dict, None]]:
        return [({"score": scores}, None) for scores in self._scoring.packed_scores(pack.forward(forward), pack.size)]


class ABLetters(_FixedBatches):
    """CAA A/B questions, each in both answer orders (``both_orders=False``: as written only),
    scored by the log-odds of the behavior-matching letter and its probability."""

    name = "ab"
    metrics = ("score", "logodds")
    primary = "logodds"

    def __init__(self, tokenizer, items: Sequence[ABItem], batch_size: int = 8, both_orders: bool = True):
        from ..inputs.datasets import ABQuestion, swap_options

        scored = list(items)
        questions, orders, ids = list(range(len(scored))), [0] * len(scored), [item.where for item in scored]
        if both_orders:
            for index, item in enumerate(items):
                twin = swap_options(ABQuestion(item.prompt, item.matching, item.other), where=item.where)
                scored.append(ABItem(twin.question, twin.matching, twin.other, f"{item.where} swapped"))
                questions.append(index)
                orders.append(1)
                ids.append(f"{item.where} swapped")
        super().__init__(ABScoring(tokenizer, scored, batch_size), ids)
        self.items = scored
        self.questions = np.asarray(questions, dtype=np.int64)
        self.orders = np.asarray(orders, dtype=np.int64)
        # +1 where the matching letter is the earlier of the item's two letters (A of A/B): half the
        # difference of a question's two orders, signed so, is a push toward the earlier letter.
        self.letter_signs = np.asarray([1 if item.matching < item.other else -1 for item in scored], dtype=np.int64)

    def measure(self, loaded: LoadedModel, forward: Forward) -> dict[str, np.ndarray]:
        logodds = self._scoring.logodds(forward, loaded.model)  # the head cut to the answer letters
        return {"score": probability(logodds), "logodds": logodds}

    def measure_packed(self, loaded: LoadedModel, forward: Forward, pack) -> list[tuple[dict, None]]:
        packed = self._scoring.packed_logodds(pack.forward(forward), pack.size, loaded.model)
        return [({"score": probability(logodds), "logodds": logodds}, None) for logodds in packed]


class FreeTextPreference(_FixedBatches):
    """Free-text pairs scored by the per-token log-likelihood preference for the positive text."""

    name = "preference"

    def __init__(self, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 8):
        super().__init__(PreferenceScoring(tokenizer, pairs, batch_size), [pair.where for pair in pairs])
        self.pairs = list(pairs)


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams of one text (1.0: no n-gram repeats;
    NaN for a text of fewer than ``n`` words)."""
    words = _words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that already occurred earlier in the same text
    (0.0: no repetition; the loops steering can cause push it toward 1)."""
    words = _words(text)
    seen, repeated, total = set(), 0, 0
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        repeated += gram in seen
        total += 1
        seen.add(gram)
    return repeated / total if total else float("nan")


def vader_compound(texts: list[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] per text (``vaderSentiment``, MIT; its
    lexicon ships inside the package, nothing is downloaded)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in texts]


SCORERS: dict[str, Scorer] = {"vader": vader_compound, "refusal": refusal_scores}


JUDGED = ("concept_rating", "instruction_rating", "fluency_rating", "harmonic")  # a judge's per-item metrics


def joined_system(system: str | None, instruction: str) -> str:
    """A system prompt followed by a steering instruction (a paragraph each)."""
    return f"{system}\n\n{instruction}" if system else instruction


class GeneratedText:
    """Prompts continued by the (steered) model, each continuation scored by ``scorer``, or with a
    ``judge`` (:class:`actstore.evaluation.judges.Judge`) rated for ``concept``.

    ``measure`` returns ``score`` (the scorer's; with a judge the harmonic mean of its three
    ratings), with a judge ``concept_rating``, ``instruction_rating``, ``fluency_rating`` and
    ``harmonic`` (each in [0, 2]; the judge reads the prompt as written, never its formatting),
    then ``distinct_2`` and ``repeated_3gram`` per prompt; the generations themselves are kept
    in :attr:`last_texts` (the sweep writes them to generations.jsonl). ``chat``: how a prompt
    becomes what the model continues (default: as written, with the tokenizer's special tokens).
    """

    metrics = ("score", "distinct_2", "repeated_3gram")
    primary = "score"

    def __init__(self, prompts: Sequence[str], scorer: Scorer | str = "vader", max_new_tokens: int = 40,
                 batch_size: int = 8, item_ids: Sequence[str] | None = None, *, chat: ChatFormat | None = None,
                 judge=None, concept: str | None = None):
        if not prompts:
            raise InputFormatError("no prompts to generate from")
        if isinstance(scorer, str):
            if scorer not in SCORERS:
                raise InputFormatError(f"scorer {scorer!r}: expected one of {sorted(SCORERS)}")
            scorer = SCORERS[scorer]
        if judge is not None and not concept:
            raise InputFormatError("a judge rates each continuation for a concept: give concept", param="concept")
        self.prompts = list(prompts)
        self.scorer = scorer
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.item_ids = list(item_ids) if item_ids is not None else [f"prompt {i + 1}" for i in range(len(prompts))]
        self.questions = np.arange(len(self.item_ids))
        self.orders = np.zeros(len(self.item_ids), dtype=np.int64)
        self.letter_signs = np.zeros(len(self.item_ids), dtype=np.int64)
        self.chat = chat if chat is not None else ChatFormat()
        self.judge, self.concept = judge, concept
        if judge is None:
            self.name = f"generation:{getattr(scorer, '__name__', 'scorer')}"
        else:
            self.name = f"generation:judge:{getattr(judge, 'name', 'judge')}"
            self.metrics = ("score", *JUDGED, "distinct_2", "repeated_3gram")
        self.last_texts: list[str] = []

    steered = staticmethod(_local)

    def batches(self) -> list[Batch]:
        return []

    def instructed(self, instruction: str) -> GeneratedText:
        """The same prompts, judge and items with ``instruction`` after any system prompt: a system
        turn with a chat template, else a paragraph before the prompt (:class:`ChatFormat`)."""
        other = copy.copy(self)
        other.chat = ChatFormat(self.chat.template, joined_system(self.chat.system, instruction))
        other.last_texts = []
        return other

    def continuations(self, loaded: LoadedModel) -> list[str]:
        """Greedy continuations of :attr:`prompts`, formatted by :attr:`chat`, one per prompt, under
        the steering active now."""
        return self._generated(loaded, 1, lambda rows: nullcontext())[0]

    def _generated(self, loaded: LoadedModel, copies: int, steering) -> list[list[str]]:
        """Per copy, the continuations of every prompt: each ``generate`` call holds ``copies`` copies
        of up to :attr:`batch_size` prompts (padded as one copy alone), under ``steering(rows)``."""
        formatted = [self.chat.prompt_text(loaded.tokenizer, p) for p in self.prompts]
        texts: list[list[str]] = [[] for _ in range(copies)]
        for start in range(0, len(formatted), self.batch_size):
            chunk = formatted[start : start + self.batch_size]
            with steering(copies * len(chunk)):
                made = generate(loaded.model, loaded.tokenizer, chunk * copies, max_new_tokens=self.max_new_tokens,
                                add_special_tokens=self.chat.add_special_tokens)
            for number in range(copies):
                texts[number] += made[number * len(chunk) : (number + 1) * len(chunk)]
        return texts

    def _scores(self, texts: list[str]) -> dict[str, np.ndarray]:
        """``score`` and, with a judge, its ratings, one per text."""
        if self.judge is None:
            scored = {"score": np.asarray(self.scorer(texts), dtype=np.float64)}
        else:
            ratings = self.judge.rate(self.prompts, texts, self.concept)
            rated = [ratings.concept, ratings.instruction, ratings.fluency, ratings.harmonic]
            scored = {name: np.asarray(values, dtype=np.float64) for name, values in zip(JUDGED, rated)}
            scored = {"score": scored["harmonic"], **scored}
        for name, values in scored.items():
            if values.shape != (len(texts),):
                raise InputFormatError(f"the {'judge' if self.judge is not None else 'scorer'} returned "
                                       f"{values.shape[0] if values.ndim else 0} {name} values for {len(texts)} texts")
        return scored

    def measure(self, loaded: LoadedModel, forward: Forward) -> dict[str, np.ndarray]:
        texts = self.continuations(loaded)
        measured = self._measured(texts)
        self.last_texts = texts
        return measured

    def measure_packed(self, loaded: LoadedModel, forward: Forward, pack) -> list[tuple[dict, list[str]]]:
        """Each configuration's continuations from the same ``generate`` calls (``pack.size`` times
        :attr:`batch_size` rows each), scored and rated as :meth:`measure` scores them."""
        return [(self._measured(texts), texts) for texts in self._generated(loaded, pack.size, pack.steering)]

    def _measured(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {**self._scores(texts),
                "distinct_2": np.array([distinct_n(t, 2) for t in texts]),
                "repeated_3gram": np.array([repeated_ngram_rate(t, 3) for t in texts])}


def read_prompts(path: str | Path, *, param: str = "prompts", fields: tuple[str, ...] = ("prompt",)) -> list[str]:
    """Prompts for generation: a text file (one prompt a line), or a JSON list (``.json``) or JSONL
    (``.jsonl``) of strings or of objects with one of ``fields``. Every refusal names the file, the
    item (JSON) or line (JSONL) at fault, and ``param``."""
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"{param} {str(path)!r} does not exist or is not a file", param=param)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFormatError(f"{param} {str(path)!r} is not valid UTF-8", param=param) from None
    if path.suffix.lower() in (".json", ".jsonl"):
        prompts = _json_prompts(path, text, param, fields)
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputFormatError(f"{param} {str(path)!r} holds no prompts", param=param)
    return prompts


def _json_prompts(path: Path, text: str, param: str, fields: tuple[str, ...]) -> list[str]:
    try:
        if path.suffix.lower() == ".json":
            parsed = json.loads(text)
            records = [(f"item {i + 1}", r) for i, r in enumerate(parsed if isinstance(parsed, list) else [parsed])]
        else:
            records = [(f"line {n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as err:
        raise InputFormatError(f"{param} {str(path)!r}: not valid JSON ({err.msg}, line {err.lineno})",
                               param=param) from None
    prompts = []
    for where, record in records:
        value = next((record[f] for f in fields if f in record), None) if isinstance(record, dict) else record
        if not isinstance(value, str) or not value.strip():
            named = " or ".join(repr(f) for f in fields)
            raise InputFormatError(f"{param} {str(path)!r} {where}: expected a non-empty string or an object with a "
                                   f"non-empty {named} field, got {str(record)[:80]!r}", param=param)
        prompts.append(value)
    return prompts


def protocol_for_file(tokenizer, path: str | Path, batch_size: int = 8, max_items: int | None = None,
                      both_orders: bool = True) -> OnTarget:
    """The on-target protocol a held-out file calls for: A/B letters (both answer orders)
    where every text ends in an answer like ``(A)`` (or the file holds CAA items), the
    free-text preference for other pairs. ``max_items``: the first N questions."""
    from ..inputs.datasets import read_contrast_set

    contrast = read_contrast_set(path)
    if contrast.format == "caa" or (contrast.format == "pairs" and contrast.is_ab):
        return ABLetters(tokenizer, read_ab_items(path)[:max_items], batch_size, both_orders)
    if contrast.format == "pairs":
        return FreeTextPreference(tokenizer, read_preference_pairs(path)[:max_items], batch_size)
    raise InputFormatError(f"{str(path)!r}: held-out items must be A/B items or positive/negative pairs, "
                           "not labeled texts")

"""On-target and off-target measurements of a (steered) model.

* :class:`ABScoring`: CAA-style A/B items. Per item, the log-odds of the answer
  letter that matches the behavior against the other one,
  ``log P(matching) − log P(other)``, and the probability score
  ``sigmoid(log-odds)`` = P(matching) normalised over the two letters. The
  prompt is the item's text without its final ``(X)`` (:func:`actstore.inputs.datasets.ab_question`,
  the one A/B detector); the compared continuations are ``(A`` and ``(B``
  tokenized after it (for most tokenizers ``(`` is shared and only the letter
  token differs). :func:`ab_scores` is the probability score.
* :class:`PerplexityWindows`: perplexity in independent windows, each tagged
  with the document it comes from (the unit of the perplexity's interval).
* :func:`generate`: greedy (or sampled) completions, e.g. for a user scorer.

Run them inside :func:`actstore.steering.steer` to measure a steered model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputFormatError
from .replay import Batch, Forward, padding_side, plain_forward
from .vocab import VocabHead, token_nll


@dataclass(frozen=True)
class ABItem:
    """A held-out A/B item: ``prompt`` ends where the answer ``(X)`` would start."""

    prompt: str
    matching: str
    other: str
    where: str


def read_ab_items(path: str | Path, separator: str = "\n") -> list[ABItem]:
    """Held-out A/B items, as written, from a pairs file (``positive``/``negative`` ending in
    ``(X)``) or a CAA items file (``question``, ``answer_matching_behavior``, ...). Their
    option-swapped twins are made where they are scored (:class:`actstore.evaluation.protocols.ABLetters`)."""
    from ..inputs.datasets import ab_question, read_contrast_set

    path = Path(path)
    contrast = read_contrast_set(path, separator)
    if contrast.format == "labeled":
        raise InputFormatError(f"{str(path)!r}: A/B evaluation needs pairs or CAA items, not labeled texts")
    items = []
    examples = contrast.examples
    for pos, neg in zip(examples[0::2], examples[1::2]):
        question = ab_question(pos.text, neg.text, where=f"{str(path)!r} {pos.where}")
        items.append(ABItem(question.question, question.matching, question.other, pos.where))
    return items


def _continuations(tokenizer, item: ABItem) -> tuple[list[int], list[int], list[int]]:
    """Shared prefix ids and the two continuation ids (``(A`` / ``(B`` after the prompt)."""
    match = tokenizer(item.prompt + "(" + item.matching)["input_ids"]
    other = tokenizer(item.prompt + "(" + item.other)["input_ids"]
    common = 0
    while common < min(len(match), len(other)) and match[common] == other[common]:
        common += 1
    return match[:common], match[common:], other[common:]


def _length_order(sequences: list[list[int]]) -> np.ndarray:
    """Indices that sort ``sequences`` by length (stable)."""
    return np.argsort([len(seq) for seq in sequences], kind="stable")


def _batched(sequences: list, batch_size: int):
    for start in range(0, len(sequences), batch_size):
        yield start, sequences[start : start + batch_size]


class ABScoring:
    """A/B items tokenized and batched once; :meth:`scores` under any forward.

    Where both answer letters are one token after a shared prefix (the usual
    case: ``(`` is shared), an item costs one sequence, the prefix, and its
    log-odds is ``logit[matching] - logit[other]`` at the last position, which is
    log P(matching) - log P(other). Otherwise each item runs both continuations
    and the log-odds is the difference of their summed token log-probabilities.
    """

    def __init__(self, tokenizer, items: Sequence[ABItem], batch_size: int = 8, one_sequence: bool = True):
        if not items:
            raise InputFormatError("no A/B items to score")
        split = [_continuations(tokenizer, item) for item in items]
        # one_sequence=False always runs both continuations (what the sweep did before; benchmarks compare).
        self.single_token = one_sequence and all(len(m) == 1 and len(o) == 1 for _, m, o in split)
        self.n_items = len(items)
        if self.single_token:
            # Batched by length, so a batch pads little; scores come back in item order.
            self.order = _length_order([prefix for prefix, _, _ in split])
            ordered = [split[i] for i in self.order]
            self.letters = torch.tensor([[m[0], o[0]] for _, m, o in ordered])
            self.batches = [Batch.pad(tokenizer, [p for p, _, _ in chunk], "left", logits_to_keep=1)
                            for _, chunk in _batched(ordered, batch_size)]
        else:
            sequences, self.tails = [], []
            for prefix, cont_match, cont_other in split:
                sequences += [prefix + cont_match, prefix + cont_other]
                self.tails += [len(cont_match), len(cont_other)]
            # Left padding: the scored tokens are then the last positions of every row.
            self.batches = [Batch.pad(tokenizer, chunk, "left", logits_to_keep=max(self.tails[s:s + len(chunk)]) + 1)
                            for s, chunk in _batched(sequences, batch_size)]

    def logodds(self, forward: Forward, model=None) -> np.ndarray:
        """Per item: log P(matching) - log P(other), ``(n_items,)`` float64.

        ``model``: the model ``forward`` runs; where every answer is one token, its LM head is cut
        to the answer letters' rows meanwhile (:func:`head_rows`), so no batch computes the logits
        of the whole vocabulary for two of them (the same numbers to float rounding)."""
        return self.packed_logodds(forward, 1, model)[0]

    def packed_logodds(self, forward: Forward, copies: int, model=None) -> np.ndarray:
        """:meth:`logodds` of ``copies`` configurations at once, ``(copies, n_items)``: ``forward``
        returns the logits of each batch :meth:`~actstore.evaluation.replay.Batch.repeated`
        ``copies`` times, copy ``j`` under configuration ``j`` (:class:`~actstore.evaluation.packing.Pack`)."""
        per_batch, done = [], 0
        if self.single_token:
            letters, cut = self.letters, contextlib.nullcontext()
            if model is not None and not hasattr(model.get_output_embeddings(), "_hf_hook"):  # not on a device map
                ids, letters = torch.unique(self.letters, return_inverse=True)
                cut = head_rows(model, ids)
            with cut:
                for index, batch in enumerate(self.batches):
                    last, rows = forward(index, batch)[:, -1], batch.input_ids.shape[0]
                    pair = letters[done:done + rows].to(last.device).repeat(copies, 1)
                    picked = torch.arange(last.shape[0], device=last.device)
                    per_batch.append((last[picked, pair[:, 0]] - last[picked, pair[:, 1]]).double().view(copies, rows))
                    done += rows
            logodds = np.empty((copies, self.n_items))
            logodds[:, self.order] = torch.cat(per_batch, 1).cpu().numpy()
            return logodds
        for index, batch in enumerate(self.batches):
            logits, (rows, keep) = forward(index, batch), (batch.input_ids.shape[0], batch.logits_to_keep)
            targets = batch.input_ids[:, -(keep - 1):].repeat(copies, 1).to(logits.device)
            picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            tails = self.tails[done:done + rows] * copies
            per_batch.append(torch.stack([picked[row, -tail:].double().sum() for row, tail in enumerate(tails)])
                             .view(copies, rows).cpu())
            done += rows
        logprobs = torch.cat(per_batch, 1).numpy()
        return logprobs[:, 0::2] - logprobs[:, 1::2]

    def scores(self, forward: Forward) -> np.ndarray:
        """Per item: P(matching) / (P(matching) + P(other)) = sigmoid(log-odds)."""
        return probability(self.logodds(forward))


@contextlib.contextmanager
def head_rows(model, token_ids: torch.Tensor):
    """Inside, ``model``'s LM head computes the logits of ``token_ids`` only, in that order (a
    ``Linear`` of those rows of its weight; the model's own head is put back on leaving). A
    final logit soft-capping, applied per logit after the head, applies to these as before."""
    head = model.get_output_embeddings()
    ids = torch.as_tensor(token_ids, device=head.weight.device)
    cut = torch.nn.Linear(head.in_features, len(ids), bias=head.bias is not None,
                          device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        cut.weight.copy_(head.weight[ids])
        if head.bias is not None:
            cut.bias.copy_(head.bias[ids])
    model.set_output_embeddings(cut)
    try:
        yield
    finally:
        model.set_output_embeddings(head)


def probability(logodds) -> np.ndarray:
    """sigmoid: log-odds of the matching letter -> its probability normalised over the two letters."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logodds, dtype=np.float64)))


def ab_scores(model, tokenizer, items: Sequence[ABItem], batch_size: int = 8) -> np.ndarray:
    """Per item: P(matching) / (P(matching) + P(other)) for the answer letters."""
    return ABScoring(tokenizer, items, batch_size).scores(plain_forward(model))


def read_text_tokens(tokenizer, path: str | Path, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` tokens of a text file (no special tokens)."""
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"text file {str(path)!r} does not exist")
    # Read only what is needed: about 8 characters a token is plenty.
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            text = handle.read(max_tokens * 8)
        except UnicodeDecodeError:
            raise InputFormatError(f"{str(path)!r} is not valid UTF-8") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise InputFormatError(f"{str(path)!r} holds too little text for a perplexity")
    return ids


def _token_nll(logits: torch.Tensor, targets: torch.Tensor, head: VocabHead | None = None) -> torch.Tensor:
    """``(batch, seq-1)`` next-token NLL; 0 where ``targets`` is -100 (padding). With ``head``,
    ``logits`` are the final hidden states the head reads (:meth:`VocabHead.hidden`) and the logits
    are computed a slice of token rows at a time (:func:`~actstore.evaluation.vocab.token_nll`)."""
    if head is not None:
        return token_nll(logits, targets, head)
    batch, seq, vocab = logits.shape
    # Every row of the contiguous (tokens, vocab) view, the last position's target ignored: cutting
    # that position off first copied the whole logits tensor (7% of a sweep configuration, issue 21),
    # and a transposed view is several times slower.
    full = torch.nn.functional.pad(targets, (0, 1), value=-100)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, vocab), full.reshape(-1), ignore_index=-100, reduction="none"
    ).view(batch, seq)[:, :-1]


class PerplexityWindows:
    """Windows of text for the perplexity, each starting with the tokenizer's BOS (when it
    has one) and tagged with its document, batched once; :meth:`nll` per window.

    ``PerplexityWindows(tokenizer, token_ids, window)`` cuts one token sequence (one
    document) into non-overlapping windows of ``window`` tokens;
    :meth:`from_tagged` takes windows already cut from several documents
    (:func:`actstore.inputs.corpus.document_windows`). ``documents: (windows,)`` int.
    :meth:`prefixed`: the same windows read after a prefix text, only their own tokens counted.
    """

    skipped = 0  # leading targets of every window that are not counted (a prefix's)

    def __init__(self, tokenizer, token_ids: Sequence[int], window: int = 256, batch_size: int = 2):
        tagged = [(0, list(token_ids[i : i + window])) for i in range(0, len(token_ids), window)]
        self._build(tokenizer, tagged, batch_size)
        self.window = int(window)

    @classmethod
    def from_tagged(cls, tokenizer, windows: Sequence[tuple[int, Sequence[int]]], window: int | None = None,
                    batch_size: int = 2) -> PerplexityWindows:
        """``windows``: ``(document, token ids)`` pairs, ids without BOS."""
        self = cls.__new__(cls)
        self._build(tokenizer, [(int(d), list(ids)) for d, ids in windows], batch_size)
        self.window = int(window) if window is not None else max(len(ids) for _, ids in windows)
        return self

    def _build(self, tokenizer, tagged: list[tuple[int, list[int]]], batch_size: int) -> None:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        tagged = [(doc, bos + ids) for doc, ids in tagged if len(bos + ids) >= 2]
        if not tagged:
            raise InputFormatError("too few tokens for a perplexity window")
        self.documents = np.asarray([doc for doc, _ in tagged], dtype=np.int64)
        self.n_tokens = sum(len(ids) - len(bos) for _, ids in tagged)
        self._tagged, self._tokenizer, self._batch_size, self._bos = tagged, tokenizer, batch_size, bos
        self.batches = [Batch.pad(tokenizer, [ids for _, ids in chunk], "right")
                        for _, chunk in _batched(tagged, batch_size)]

    def prefixed(self, prefix: str) -> PerplexityWindows:
        """The same windows with ``prefix`` (a text, tokenized without special tokens) between the
        BOS and each window's tokens, and only the window's tokens counted: the same tokens, each
        predicted from the prefix too, so that a steering instruction's damage (the prompting
        baseline's) is read on the same documents as a vector's. Cannot be replayed from the
        unprefixed windows' cached block outputs: run it with the whole model."""
        prefix_ids = list(self._tokenizer(prefix, add_special_tokens=False)["input_ids"])
        start = len(self._bos)
        tagged = [(doc, ids[:start] + prefix_ids + ids[start:]) for doc, ids in self._tagged]
        other = type(self).__new__(type(self))
        other.documents, other.n_tokens, other.window = self.documents, self.n_tokens, self.window
        other._tagged, other._tokenizer, other._batch_size, other._bos = tagged, self._tokenizer, self._batch_size, \
            self._bos
        # Target j predicts token j + 1: the first len(prefix) targets are the prefix's (after a BOS)
        # or the prefix's and the window's first token (without one), which the plain windows do
        # not predict either.
        other.skipped = self.skipped + len(prefix_ids)
        other.batches = [Batch.pad(self._tokenizer, [ids for _, ids in chunk], "right")
                         for _, chunk in _batched(tagged, self._batch_size)]
        return other

    @property
    def n_documents(self) -> int:
        return int(np.unique(self.documents).size)

    def nll(self, forward: Forward, model=None) -> tuple[np.ndarray, np.ndarray]:
        """``(nll, tokens)``: summed next-token NLL (nats) and predicted tokens, per window.
        ``model``: the model ``forward`` runs; given, the full logits of a batch never exist at once
        (its final hidden states go through the LM head a slice of tokens at a time: :mod:`.vocab`)."""
        nll, tokens = self.packed_nll(forward, 1, model)
        return nll[0], tokens

    def packed_nll(self, forward: Forward, copies: int, model=None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`nll` of ``copies`` configurations at once: ``nll`` ``(copies, windows)``; ``forward``
        as :meth:`ABScoring.packed_logodds`'s."""
        nll, tokens = [], []
        head = None if model is None else VocabHead.of(model)
        for index, batch in enumerate(self.batches):
            logits = forward(index, batch) if head is None else head.hidden(forward, index, batch)
            targets = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100).to(logits.device)
            targets[:, :self.skipped] = -100
            per_token = _token_nll(logits, targets.repeat(copies, 1), head)
            nll.append(per_token.double().sum(-1).view(copies, -1).cpu())
            tokens += (targets != -100).sum(-1).tolist()
        return torch.cat(nll, 1).numpy(), np.asarray(tokens, dtype=np.int64)


def perplexity(model, tokenizer, token_ids: Sequence[int], window: int = 256, batch_size: int = 2) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``window`` tokens,
    each starting with the tokenizer's BOS (when it has one)."""
    nll, tokens = PerplexityWindows(tokenizer, token_ids, window, batch_size).nll(plain_forward(model), model)
    return math.exp(nll.sum() / tokens.sum())


@dataclass(frozen=True)
class PreferencePair:
    """A held-out free-text pair: ``positive`` shows the behavior, ``negative`` does not."""

    positive: str
    negative: str
    where: str


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Held-out free-text pairs (``positive``/``negative``, e.g. bias-pairs/morality/test.json)."""
    from ..inputs.datasets import read_contrast_set

    path = Path(path)
    contrast = read_contrast_set(path)
    if contrast.format != "pairs":
        raise InputFormatError(f"{str(path)!r}: a preference score needs 'positive'/'negative' pairs, "
                               f"not {contrast.format} records")
    examples = contrast.examples
    return [PreferencePair(pos.text, neg.text, pos.where) for pos, neg in zip(examples[0::2], examples[1::2])]


class PreferenceScoring:
    """Free-text pairs tokenized once; :meth:`scores` is the steered model's
    per-token log-likelihood preference for the positive text:
    ``mean log p(positive tokens) - mean log p(negative tokens)`` (nats per token;
    the first token, after BOS, is scored too)."""

    def __init__(self, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 8):
        if not pairs:
            raise InputFormatError("no pairs to score")
        sequences = []
        for pair in pairs:
            for text in (pair.positive, pair.negative):
                ids = tokenizer(text)["input_ids"]
                if len(ids) < 2:
                    raise InputFormatError(f"{pair.where}: {text!r} is too short to score (one token)")
                sequences.append(ids)
        self.order = _length_order(sequences)
        self.batches = [Batch.pad(tokenizer, chunk, "right")
                        for _, chunk in _batched([sequences[i] for i in self.order], batch_size)]

    def scores(self, forward: Forward) -> np.ndarray:
        return self.packed_scores(forward, 1)[0]

    def packed_scores(self, forward: Forward, copies: int) -> np.ndarray:
        """:meth:`scores` of ``copies`` configurations at once, ``(copies, pairs)``; ``forward`` as
        :meth:`ABScoring.packed_logodds`'s."""
        means = []
        for index, batch in enumerate(self.batches):
            logits = forward(index, batch)
            targets = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100).to(logits.device)
            targets = targets.repeat(copies, 1)
            nll = _token_nll(logits, targets).double()
            means.append((-nll.sum(-1) / (targets != -100).sum(-1)).view(copies, -1).cpu())
        in_order = np.empty((copies, len(self.order)))
        in_order[:, self.order] = torch.cat(means, 1).numpy()
        return in_order[:, 0::2] - in_order[:, 1::2]


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0, add_special_tokens: bool = True) -> list[str]:
    """Completions of ``prompts`` (text after the prompt only). ``add_special_tokens=False`` for
    prompts a chat template formatted (:attr:`actstore.inputs.chat.ChatFormat.add_special_tokens`):
    the template brings its own BOS, a second one would change what the model reads."""
    device = next(model.parameters()).device
    with padding_side(tokenizer, "left"):
        torch.manual_seed(seed)
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True,
                          add_special_tokens=add_special_tokens).to(device)
        kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if do_sample:
            kwargs["temperature"] = temperature
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        output = model.generate(**batch, **kwargs)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

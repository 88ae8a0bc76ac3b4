"""On-target and off-target measurements of a (steered) model.

* :func:`ab_scores`: CAA-style A/B behavior score. For each held-out item, the
  probability the model puts on the answer letter that matches the behavior,
  normalised over the two letters. The prompt is the item's text without its
  final ``(X)``; the compared continuations are ``(A`` and ``(B`` tokenized after
  it (for most tokenizers ``(`` is shared and only the letter token differs).
* :func:`perplexity`: perplexity on a text sample, in independent windows.
* :func:`generate`: greedy (or sampled) completions, e.g. for a user scorer.

Run them inside :func:`actstore.steering.steer` to measure a steered model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .capture import position_ids
from .errors import InputFormatError

_FINAL_CHOICE = re.compile(r"\(([A-Za-z])\)\s*$")


@dataclass(frozen=True)
class ABItem:
    """A held-out A/B item: ``prompt`` ends where the answer ``(X)`` would start."""

    prompt: str
    matching: str
    other: str
    where: str


def _split_choice(path: Path, where: str, field: str, text: str) -> tuple[str, str]:
    match = _FINAL_CHOICE.search(text)
    if match is None:
        raise InputFormatError(
            f"{str(path)!r} {where}: field {field!r} does not end with an answer like '(A)'; "
            "A/B evaluation needs the CAA pair format (see ../shared/data/README.md)"
        )
    return text[: match.start()], match.group(1)


def read_ab_items(path: str | Path, separator: str = "\n") -> list[ABItem]:
    """Held-out A/B items from a pairs file (``positive``/``negative`` ending in
    ``(X)``) or a CAA items file (``question``, ``answer_matching_behavior``, ...)."""
    from .datasets import read_contrast_set

    path = Path(path)
    contrast = read_contrast_set(path, separator)
    if contrast.format == "labeled":
        raise InputFormatError(f"{str(path)!r}: A/B evaluation needs pairs or CAA items, not labeled texts")
    items = []
    examples = contrast.examples
    for pos, neg in zip(examples[0::2], examples[1::2]):
        prompt, matching = _split_choice(path, pos.where, "positive", pos.text)
        neg_prompt, other = _split_choice(path, neg.where, "negative", neg.text)
        if neg_prompt != prompt:
            raise InputFormatError(f"{str(path)!r} {pos.where}: positive and negative ask different questions")
        if matching == other:
            raise InputFormatError(f"{str(path)!r} {pos.where}: both answers are ({matching})")
        items.append(ABItem(prompt, matching, other, pos.where))
    return items


@contextmanager
def _padding_side(tokenizer, side: str):
    """Pad on ``side`` inside the block; the tokenizer's own setting is restored after."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def _continuations(tokenizer, item: ABItem) -> tuple[list[int], list[int], list[int]]:
    """Shared prefix ids and the two continuation ids (``(A`` / ``(B`` after the prompt)."""
    match = tokenizer(item.prompt + "(" + item.matching)["input_ids"]
    other = tokenizer(item.prompt + "(" + item.other)["input_ids"]
    common = 0
    while common < min(len(match), len(other)) and match[common] == other[common]:
        common += 1
    return match[:common], match[common:], other[common:]


@torch.no_grad()
def _sequence_logprobs(model, tokenizer, sequences: list[list[int]], tails: list[int], batch_size: int) -> np.ndarray:
    """Sum of log-probs of the last ``tails[i]`` tokens of each sequence."""
    device = next(model.parameters()).device
    out = np.zeros(len(sequences))
    # Left padding: the scored tokens are then the last positions of every row.
    with _padding_side(tokenizer, "left"):
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            batch_tails = tails[start : start + batch_size]
            keep = max(batch_tails) + 1
            padded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
            ids = padded["input_ids"].to(device)
            mask = padded["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                           use_cache=False, logits_to_keep=keep).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts the last keep-1 tokens
            targets = ids[:, -(keep - 1):]
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (batch, keep-1)
            for row, tail in enumerate(batch_tails):
                out[start + row] = float(picked[row, -tail:].sum())
    return out


def ab_scores(model, tokenizer, items: Sequence[ABItem], batch_size: int = 8) -> np.ndarray:
    """Per item: P(matching) / (P(matching) + P(other)) for the answer letters."""
    if not items:
        raise InputFormatError("no A/B items to score")
    sequences, tails = [], []
    for item in items:
        prefix, cont_match, cont_other = _continuations(tokenizer, item)
        sequences += [prefix + cont_match, prefix + cont_other]
        tails += [len(cont_match), len(cont_other)]
    logprobs = _sequence_logprobs(model, tokenizer, sequences, tails, batch_size)
    match, other = logprobs[0::2], logprobs[1::2]
    # Normalised over the two letters, in log space for stability.
    return 1.0 / (1.0 + np.exp(other - match))


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


@torch.no_grad()
def perplexity(model, tokenizer, token_ids: Sequence[int], window: int = 256, batch_size: int = 2) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``window`` tokens,
    each starting with the tokenizer's BOS (when it has one)."""
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    windows = [bos + list(token_ids[i : i + window]) for i in range(0, len(token_ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    total_nll, total_tokens = 0.0, 0
    with _padding_side(tokenizer, "right"):
        for start in range(0, len(windows), batch_size):
            padded = tokenizer.pad({"input_ids": windows[start : start + batch_size]}, return_tensors="pt")
            ids = padded["input_ids"].to(device)
            mask = padded["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Completions of ``prompts`` (text after the prompt only)."""
    device = next(model.parameters()).device
    with _padding_side(tokenizer, "left"):
        torch.manual_seed(seed)
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
        kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        if do_sample:
            kwargs["temperature"] = temperature
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        output = model.generate(**batch, **kwargs)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

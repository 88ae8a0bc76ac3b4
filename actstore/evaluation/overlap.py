"""Train and test kept apart: the held-out questions whose text is in the training data.

A test item that asks a question the vectors were trained on (the same question, perhaps with
other choices) measures recall, not generalisation. :func:`train_overlap` reads the training
files a store records (its group's ``runs``: each capture's source file, checked against the
SHA-256 it had then) and finds the held-out questions whose text appears among them;
:meth:`SweepRequest.check <actstore.evaluation.request.SweepRequest.check>` warns with their
count, or with ``exclude_train_overlap`` (``eval --exclude-train-overlap``) they are dropped
(:func:`protocol_without`) and results.md says so.

A question's text (:func:`question_text`) is what is compared: an A/B text without its answer
letter and its option lines (``What is your favorite color?`` for ``What is your favorite
color?\\n\\nChoices:\\n(A) ...\\n(B) ...\\n(A)``), any other text as it is, whitespace runs made one
space. items.csv carries each item's (``question_text``, :func:`question_texts`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..inputs.ab import AB_END, OPTION_LINE

_CHOICES = re.compile(r"\s*(Choices|Options|Answer choices)\s*:\s*$", re.IGNORECASE)


def question_text(text: str) -> str:
    """The question a text asks, as :func:`train_overlap` compares it (see the module docstring).

    >>> question_text("What's your favorite color?\\n\\nChoices:\\n(A) Blue\\n(B) I have none\\n(B)")
    "What's your favorite color?"
    >>> question_text("I kept  my word.\\n")
    'I kept my word.'
    """
    stem = AB_END.sub("", text)
    option = OPTION_LINE.search(stem)
    if option is not None and option.start() > 0:
        stem = _CHOICES.sub("", stem[: option.start()])
    return " ".join(stem.split())


def question_texts(on_target) -> tuple[str, ...]:
    """Each item's question text, in the protocol's item order, for items.csv's ``question_text``:
    A/B items (``items``, twins included), free-text pairs (``pairs``: the positive text) and
    generation prompts (``prompts``); empty where the protocol keeps none of them."""
    for name, text_of in (("items", lambda item: item.prompt), ("pairs", lambda pair: pair.positive),
                          ("prompts", lambda prompt: prompt)):
        found = getattr(on_target, name, None)
        if found is not None and len(found) == len(on_target.item_ids):
            return tuple(question_text(text_of(x)) for x in found)
    return ()


@dataclass(frozen=True)
class Overlap:
    """The held-out questions found in the training data: ``questions`` (their texts, in test
    order), of ``n_test`` held-out questions; ``sources``: the training files read; ``unread``:
    those the store records that could not be read or changed since the capture (named in
    :meth:`note`)."""

    questions: tuple[str, ...]
    n_test: int
    sources: tuple[str, ...]
    unread: tuple[str, ...] = ()

    def note(self, excluded: bool) -> str | None:
        """What results.md and the warning say; None where nothing overlaps and every file was read."""
        parts = []
        if self.questions:
            what = ("dropped from the test set (exclude_train_overlap)" if excluded else
                    "kept in the test set; exclude_train_overlap (eval --exclude-train-overlap) drops them")
            shown = "; ".join(repr(q[:60]) for q in self.questions[:6]) + ("; ..." if len(self.questions) > 6 else "")
            parts.append(f"{len(self.questions)} of {self.n_test} held-out questions also appear in the training data "
                         f"({', '.join(self.sources)}): {what}. They are {shown}")
        if self.unread:
            parts.append(f"the training file(s) {', '.join(self.unread)} could not be checked for held-out questions "
                         "(missing, unreadable or changed since the capture)")
        return ". ".join(parts) + "." if parts else None


def _training_questions(store) -> tuple[set[str], tuple[str, ...], tuple[str, ...]]:
    """The question texts of every training file ``store`` (a StoreGroup) records, and which
    files were read and which not."""
    from ..errors import ActstoreError
    from ..inputs.datasets import read_contrast_set
    from ..stores.runs import read_runs

    texts, read, unread = set(), [], []
    for source, sha in dict.fromkeys((run.source, run.source_sha256) for run in read_runs(store)):
        try:
            contrast = read_contrast_set(source)
        except (ActstoreError, OSError, ValueError):
            unread.append(repr(source))
            continue
        if contrast.sha256 != sha:
            unread.append(repr(source))
            continue
        read.append(repr(source))
        texts.update(question_text(example.text) for example in contrast.examples)
    return texts, tuple(read), tuple(unread)


def _test_questions(data_test: str | Path) -> list[str]:
    """The held-out file's question texts, one per question, as its protocol reads them."""
    from ..inputs.datasets import read_contrast_set
    from .scoring import read_ab_items, read_preference_pairs

    contrast = read_contrast_set(data_test)
    if contrast.format == "caa" or (contrast.format == "pairs" and contrast.is_ab):
        return [question_text(item.prompt) for item in read_ab_items(data_test)]
    if contrast.format == "pairs":
        return [question_text(pair.positive) for pair in read_preference_pairs(data_test)]
    return []


def train_overlap(store, data_test: str | Path) -> Overlap:
    """The questions of ``data_test`` whose text appears in the training files of ``store``
    (a :class:`~actstore.stores.StoreGroup`: its group's ``runs``)."""
    trained, read, unread = _training_questions(store)
    tested = _test_questions(data_test)
    return Overlap(tuple(q for q in tested if q in trained), len(tested), read, unread)


def checked_overlap(store, data_test: str | Path, exclude: bool) -> Overlap:
    """:func:`train_overlap`, its count given in a warning where the overlapping questions are kept
    (``exclude`` False)."""
    import warnings

    overlap = train_overlap(store, data_test)
    if overlap.questions and not exclude:
        warnings.warn(f"data_test {str(data_test)!r}: {overlap.note(False)}", stacklevel=3)
    return overlap


def protocol_without(tokenizer, path: str | Path, drop: set[str], batch_size: int = 8,
                     max_items: int | None = None, both_orders: bool = True):
    """The protocol :func:`~actstore.evaluation.protocols.protocol_for_file` builds for ``path``,
    without the items whose question text is in ``drop`` (then the first ``max_items`` of the rest)."""
    from ..errors import InputFormatError
    from ..inputs.datasets import read_contrast_set
    from .protocols import ABLetters, FreeTextPreference
    from .scoring import read_ab_items, read_preference_pairs

    contrast = read_contrast_set(path)
    if contrast.format == "caa" or (contrast.format == "pairs" and contrast.is_ab):
        items = [i for i in read_ab_items(path) if question_text(i.prompt) not in drop][:max_items]
        protocol = ABLetters(tokenizer, items, batch_size, both_orders)
    elif contrast.format == "pairs":
        pairs = [p for p in read_preference_pairs(path) if question_text(p.positive) not in drop][:max_items]
        protocol = FreeTextPreference(tokenizer, pairs, batch_size)
        protocol.pairs = pairs  # items.csv's question_text (question_texts)
    else:
        raise InputFormatError(f"{str(path)!r}: held-out items must be A/B items or positive/negative pairs, "
                               "not labeled texts")
    return protocol

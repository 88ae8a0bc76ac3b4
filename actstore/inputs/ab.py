"""A/B items: the one detector, and the option-swapped twins.

A text is an A/B answer when it ends in ``(X)``, X an upper-case letter ``A``-``Z``
(:func:`answer_letter`, the one place that recognises them). Upper case only: every CAA set and its
option lines use it, and a lower-case ``(a)`` closes many an ordinary sentence or list.
:func:`ab_question` reads a pair of texts as one question and its two answers, :func:`swap_options`
makes an item's option-swapped twin (:func:`actstore.inputs.datasets.with_twins` makes a set of them, whatever
file format it was read from). Every name here is importable from :mod:`actstore.inputs.datasets` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DatasetError

# The final answer of an A/B text: "(X)", X upper case, then optional trailing whitespace.
AB_END = re.compile(r"\(([A-Z])\)(\s*)$")
# An option line of an A/B question: indentation, "(X)", the option's text (to the line's end).
OPTION_LINE = re.compile(r"^([ \t]*)\(([A-Z])\)(.*)$", re.MULTILINE)
# What may follow the last option: whitespace, or CAA's closing "Answer:" line after a blank line.
_QUESTION_TRAILER = re.compile(r"(\n[ \t]*\n[ \t]*Answer:)?\s*\Z")


def answer_letter(text: str) -> str | None:
    """The answer letter ``X`` of a text ending in ``(X)`` (X in ``A``-``Z``, trailing whitespace
    allowed), else None: the one test of "is this an A/B answer" (see the module docstring)."""
    match = AB_END.search(text)
    return match.group(1) if match else None


def with_answer_letter(text: str, letter: str) -> str:
    """``text`` (ending in ``(X)``, :func:`answer_letter`) answered with ``letter`` instead."""
    return AB_END.sub(lambda match: f"({letter}){match.group(2)}", text)


@dataclass(frozen=True)
class ABQuestion:
    """One A/B question and its two answers.

    ``question`` is the text without its final ``(X)``, options as written (it ends where the answer
    starts, e.g. ``"...\\n(B) No\\n"``); ``matching`` is the letter of the behavior-matching answer,
    ``other`` the letter of the other one; ``tail`` is whatever followed the final ``)`` (whitespace;
    empty in every shared set). :attr:`positive` and :attr:`negative` rebuild the two texts exactly.
    """

    question: str
    matching: str
    other: str
    tail: str = ""

    @property
    def positive(self) -> str:
        """The full text answered with the behavior-matching letter."""
        return f"{self.question}({self.matching}){self.tail}"

    @property
    def negative(self) -> str:
        """The full text answered with the other letter."""
        return f"{self.question}({self.other}){self.tail}"

    def options(self, *, where: str) -> dict[str, str]:
        """The options' texts by letter (what follows ``(X)``; see :func:`swap_options`).
        Raises :class:`DatasetError` (naming ``where``) as :func:`swap_options` does."""
        return {letter: self.question[a:b] for letter, (a, b) in _option_spans(self, where).items()}


def ab_question(positive: str, negative: str, *, where: str) -> ABQuestion:
    """The A/B question of a pair whose texts end in its two answers, ``...(A)`` and ``...(B)``.

    Both texts must be the same question followed by different letters (:func:`answer_letter`);
    otherwise :class:`DatasetError` names ``where`` (e.g. ``"'train.json' item 3"``) and says why.
    """
    found = []
    for field, text in (("positive", positive), ("negative", negative)):
        match = AB_END.search(text)
        if match is None:
            raise DatasetError(f"{where}: the {field} text does not end with an answer like '(A)' "
                               f"(it ends {text[-20:]!r}); an A/B item's texts end in its answer letter")
        found.append((text[: match.start()], match.group(1), match.group(2)))
    (question, matching, tail), (other_question, other, other_tail) = found
    if question != other_question or tail != other_tail:
        raise DatasetError(f"{where}: the positive and negative texts ask different questions (they differ "
                           "before the final answer); an A/B item's texts differ only in the answer letter")
    if matching == other:
        raise DatasetError(f"{where}: both texts answer ({matching}); an A/B item needs two different letters")
    return ABQuestion(question, matching, other, tail)


def _option_spans(q: ABQuestion, where: str) -> dict[str, tuple[int, int]]:
    """Where the text of each option of ``q.question`` lies, by letter: from after its ``(X)`` at the
    start of a line up to the next option line (an option may run over several lines), the last one
    to the end of the question less :data:`_QUESTION_TRAILER`; trailing whitespace (blank lines
    between options) stays in place."""
    matches = list(OPTION_LINE.finditer(q.question))
    letters = [m.group(2) for m in matches]
    for letter in (q.matching, q.other):
        if letters.count(letter) != 1:
            shown = ", ".join(f"({x})" for x in letters) or "none"
            raise DatasetError(
                f"{where}: answer ({letter}) starts {letters.count(letter)} lines, not one (option lines "
                f"found: {shown}); a twin needs each answer on a line of its own, '(X) text'. Capture with "
                "swap_options=False (--no-swap-options) to keep the texts as written")
    duplicated = sorted({x for x in letters if letters.count(x) > 1})
    if duplicated:
        raise DatasetError(f"{where}: option letter(s) {', '.join(f'({x})' for x in duplicated)} start "
                           "several lines; the options cannot be told apart. Capture with swap_options=False "
                           "(--no-swap-options) to keep the texts as written")
    spans = {}
    end = _QUESTION_TRAILER.search(q.question).start()
    for i, m in enumerate(matches):
        stop = matches[i + 1].start() if i + 1 < len(matches) else max(end, m.end(2) + 1)
        text = q.question[m.end(2) + 1 : stop]
        spans[m.group(2)] = (m.end(2) + 1, m.end(2) + 1 + len(text.rstrip()))
    return spans


def swap_options(q: ABQuestion, *, where: str) -> ABQuestion:
    """The option-swapped twin of ``q``: the texts of the matching and the other options are
    exchanged, and so are the final letters, so the behavior-matching answer is shown under the
    other letter (``twin.matching == q.other``). Letters, indentation and the blank lines between
    options stay where they are; other options (items with more than two) stay in place.
    ``swap_options(swap_options(q)) == q``.

    An option starts a line with ``(X)`` (after spaces or tabs) and runs, over as many lines as it
    takes, to the next such line; the last option runs to the end of the question, less trailing
    whitespace and CAA's closing ``Answer:`` line. So a question whose options are followed by
    other text (an instruction such as "Answer with A or B") would carry that text along with its
    last option: such sets need ``swap_options=False``. Raises :class:`DatasetError` naming
    ``where`` when an answer's letter starts no line or several. Every item of
    ``../shared/data/caa-pairs`` swaps (tests/inputs/test_twins.py).
    """
    spans = _option_spans(q, where)
    (m_start, m_stop), (o_start, o_stop) = spans[q.matching], spans[q.other]
    text = q.question
    matching_text, other_text = text[m_start:m_stop], text[o_start:o_stop]
    first, second = sorted([(m_start, m_stop, other_text), (o_start, o_stop, matching_text)])
    swapped = text[: first[0]] + first[2] + text[first[1] : second[0]] + second[2] + text[second[1] :]
    return ABQuestion(swapped, q.other, q.matching, q.tail)

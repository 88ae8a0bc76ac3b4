"""Read contrast sets into labeled examples.

Three formats are accepted, as a JSON list or as JSONL (one object per line);
the format is recognised from the keys of the first record and every record
must then be of that format:

1. CAA A/B items: ``question``, ``answer_matching_behavior``,
   ``answer_not_matching_behavior``. Each item gives two examples in one pair:
   class ``pos`` = question + separator + matching answer, class ``neg`` =
   question + separator + the other answer.
2. Paired: ``positive``, ``negative`` -> classes ``pos`` / ``neg`` in one pair
   (the format of every set in ``../shared/data``).
3. Labeled: ``text``, ``label`` (any class names); an optional integer
   ``pair_id`` groups records, otherwise each record is its own pair.

Errors name the file, the line (JSONL) or item (JSON list), and the field.

A/B items (:func:`ab_question`, the one place that recognises them): a text is an A/B answer
when it ends in ``(X)``, X an upper-case letter ``A``-``Z``. Upper case only: every CAA set
and its option lines use it, and a lower-case ``(a)`` closes many an ordinary sentence or list.
:func:`swap_options` makes an item's option-swapped twin, and :func:`with_twins` a set in
which every question shows its behavior-matching answer once under each letter.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import DatasetError, InputFormatError
from .sources import check_label

POS, NEG = "pos", "neg"
# The final answer of an A/B text: "(X)", X upper case, then optional trailing whitespace.
_AB_END = re.compile(r"\(([A-Z])\)(\s*)$")
# An option line of an A/B question: indentation, "(X)", the option's text (to the line's end).
_OPTION_LINE = re.compile(r"^([ \t]*)\(([A-Z])\)(.*)$", re.MULTILINE)
# What may follow the last option: whitespace, or CAA's closing "Answer:" line after a blank line.
_QUESTION_TRAILER = re.compile(r"(\n[ \t]*\n[ \t]*Answer:)?\s*\Z")
DEFAULT_SEPARATOR = "\n"

_FORMATS = {
    "caa": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "pairs": ("positive", "negative"),
    "labeled": ("text", "label"),
}


@dataclass(frozen=True)
class Example:
    """One text to capture.

    ``prompt``/``completion`` are kept for A/B items so a chat template can put
    the question in the user turn and the answer in the assistant turn.
    """

    text: str
    label: str
    pair_id: int
    where: str  # "line 12" (JSONL) or "item 12" (JSON list), 1-based
    prompt: str | None = None
    completion: str | None = None
    question: int | None = None  # the pair id of the question as written (shared with its twin); None: pair_id
    order: int = 0  # 0: options as written; 1: the option-swapped twin (:func:`with_twins`)

    @property
    def question_id(self) -> int:
        """The question this text asks: its pair id, or for a twin the pair id of the pair as written."""
        return self.pair_id if self.question is None else self.question


@dataclass(frozen=True)
class ContrastSet:
    """Examples read from one file, with provenance."""

    path: str
    format: str
    sha256: str
    examples: list[Example]
    swapped: bool = False  # every pair is followed by its option-swapped twin (:func:`with_twins`)

    @property
    def is_ab(self) -> bool:
        """An A/B set: every text ends in a parenthesised answer letter, ``(A)``, ``(B)``, ...
        (CAA items and the pairs made of them; :func:`answer_letter`); read at the letter, not the final ``)``."""
        return bool(self.examples) and all(answer_letter(e.text) is not None for e in self.examples)

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.examples})

    def __len__(self) -> int:
        return len(self.examples)


def text_hash(text: str) -> str:
    """16 hex digits of BLAKE2b: identifies a text in the store without storing it."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _records(path: Path, raw: str) -> list[tuple[str, Any]]:
    try:
        return _parsed_records(path, raw)
    except RecursionError:  # json's parser recurses per level of nesting
        raise InputFormatError(f"{str(path)!r} is nested too deeply to read (thousands of levels of [ or {{); "
                               "expected a flat JSON list or JSONL of records") from None


def _parsed_records(path: Path, raw: str) -> list[tuple[str, Any]]:
    stripped = raw.lstrip()
    if not stripped:
        raise InputFormatError(f"{str(path)!r} is empty: expected a JSON list or JSONL of records")
    if stripped.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputFormatError(
                f"{str(path)!r} line {err.lineno}: invalid JSON ({err.msg})"
            ) from None
        if not items:
            raise InputFormatError(f"{str(path)!r} is an empty JSON list: expected records")
        return [(f"item {i + 1}", item) for i, item in enumerate(items)]
    if stripped.startswith("{"):
        try:
            whole = json.loads(raw)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and "\n" in raw.strip():
            raise InputFormatError(
                f"{str(path)!r} holds one JSON object; expected a JSON list of records or JSONL "
                f"(one record per line); its top-level keys are {sorted(whole)!r}"
            )
    records = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputFormatError(
                f"{str(path)!r} line {lineno}: invalid JSON ({err.msg}); "
                "expected one JSON object per line (JSONL) or a JSON list"
            ) from None
    if not records:
        raise InputFormatError(f"{str(path)!r} holds no records")
    return records


def _detect_format(path: Path, where: str, record: Any) -> str:
    if not isinstance(record, dict):
        raise InputFormatError(
            f"{str(path)!r} {where}: expected a JSON object, got {type(record).__name__}"
        )
    for name, keys in _FORMATS.items():
        if all(k in record for k in keys):
            return name
    # A partial match is most likely that format with a field missing or misspelled:
    # say which field (the per-field check below names it).
    overlap = {name: sum(k in record for k in keys) for name, keys in _FORMATS.items()}
    best = max(overlap, key=overlap.get)
    if overlap[best] > 0:
        return best
    expected = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in _FORMATS.items())
    raise InputFormatError(
        f"{str(path)!r} {where}: unrecognised record with fields {sorted(record)!r}; "
        f"expected one of the formats ({expected})"
    )


def _field(path: Path, where: str, record: Any, key: str, fmt: str) -> str:
    if not isinstance(record, dict):
        raise InputFormatError(
            f"{str(path)!r} {where}: expected a JSON object, got {type(record).__name__}"
        )
    if key not in record:
        raise InputFormatError(
            f"{str(path)!r} {where}: missing field {key!r} "
            f"(the {fmt} format needs {', '.join(map(repr, _FORMATS[fmt]))})"
        )
    value = record[key]
    # Some CAA files hold a one-element list for an answer.
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if key == "label" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputFormatError(
            f"{str(path)!r} {where}: field {key!r} must be a string, got {type(value).__name__}"
        )
    if key != "label" and not value.strip():
        raise InputFormatError(f"{str(path)!r} {where}: field {key!r} is empty")
    if key == "label" and not value:
        raise InputFormatError(f"{str(path)!r} {where}: field 'label' is empty")
    if key == "label":
        check_label(path, where, value)
    return value


def read_contrast_set(path: str | Path, separator: str = DEFAULT_SEPARATOR) -> ContrastSet:
    """Read a contrast-set file (see the module docstring for the formats).

    ``separator`` joins an A/B question and its answer (default a newline, which
    reproduces the texts of ``../shared/data/caa-pairs``).
    """
    from ._files import input_file_problem

    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise InputFormatError(f"contrast-set file {str(path)!r} {problem}")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputFormatError(
            f"{str(path)!r} line {line}: not valid UTF-8 (byte {err.start}); save the file as UTF-8"
        ) from None
    records = _records(path, raw)
    fmt = _detect_format(path, *records[0])
    examples: list[Example] = []
    for index, (where, record) in enumerate(records):
        if fmt == "caa":
            question = _field(path, where, record, "question", fmt)
            matching = _field(path, where, record, "answer_matching_behavior", fmt)
            other = _field(path, where, record, "answer_not_matching_behavior", fmt)
            for label, answer in ((POS, matching), (NEG, other)):
                examples.append(
                    Example(question + separator + answer, label, index, where, question, answer)
                )
        elif fmt == "pairs":
            positive = _field(path, where, record, "positive", fmt)
            negative = _field(path, where, record, "negative", fmt)
            examples.append(Example(positive, POS, index, where))
            examples.append(Example(negative, NEG, index, where))
        else:
            text = _field(path, where, record, "text", fmt)
            label = _field(path, where, record, "label", fmt)
            pair_id = record.get("pair_id", index)
            if not isinstance(pair_id, int) or isinstance(pair_id, bool) or not 0 <= pair_id < 2**62:
                raise InputFormatError(
                    f"{str(path)!r} {where}: field 'pair_id' must be a non-negative integer below 2**62, "
                    f"got {pair_id!r}"
                )
            examples.append(Example(text, label, pair_id, where))
    return ContrastSet(str(path), fmt, hashlib.sha256(data).hexdigest(), examples)


def read_data(path: str | Path, separator: str = DEFAULT_SEPARATOR, *, text_column: str | None = None,
              label_column: str | None = None, tokenizer=None, max_length: int | None = None):
    """``--data``: a contrast-set file (JSON, JSONL) as a :class:`ContrastSet`, or a dataset or a
    plain-text corpus as a lazily read :class:`actstore.sources.TextSource` (a corpus needs the
    ``tokenizer``)."""
    from .sources import is_source, open_source

    if is_source(path):
        return open_source(path, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                           max_length=max_length)
    if text_column is not None or label_column is not None:
        raise InputFormatError(f"{str(path)!r} is a contrast-set file: --text-column and --label-column are for "
                               "datasets (Arrow, Parquet)", param="text_column")
    return read_contrast_set(path, separator)


def needs_tokenizer(path: str | Path) -> bool:
    """Whether :func:`read_data` needs the tokenizer for ``path`` (a plain-text corpus)."""
    from .sources import CORPUS_SUFFIXES

    path = Path(path)
    return path.is_file() and path.suffix.lower() in CORPUS_SUFFIXES


# --- A/B items and their option-swapped twins ---------------------------------------------------

def answer_letter(text: str) -> str | None:
    """The answer letter ``X`` of a text ending in ``(X)`` (X in ``A``-``Z``, trailing whitespace
    allowed), else None: the one test of "is this an A/B answer" (see the module docstring)."""
    match = _AB_END.search(text)
    return match.group(1) if match else None


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
        match = _AB_END.search(text)
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
    matches = list(_OPTION_LINE.finditer(q.question))
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
    ``../shared/data/caa-pairs`` swaps (tests/test_twins.py).
    """
    spans = _option_spans(q, where)
    (m_start, m_stop), (o_start, o_stop) = spans[q.matching], spans[q.other]
    text = q.question
    matching_text, other_text = text[m_start:m_stop], text[o_start:o_stop]
    first, second = sorted([(m_start, m_stop, other_text), (o_start, o_stop, matching_text)])
    swapped = text[: first[0]] + first[2] + text[first[1] : second[0]] + second[2] + text[second[1] :]
    return ABQuestion(swapped, q.other, q.matching, q.tail)


def with_twins(contrast: ContrastSet) -> ContrastSet:
    """``contrast`` with each pair followed by its option-swapped twin (:func:`swap_options`).

    A pair (the two texts of one ``pair_id``; labeled sets: exactly two per id) keeps its pair id,
    ``question`` = that id and ``order`` 0; its twin has ``order`` 1, the same ``question`` and a
    pair id of its own (``max pair id + 1 + question``), so pos and neg of each still pair one to one.
    A CAA item's twin swaps the options in its prompt and the letter of its completion. Raises
    :class:`DatasetError` naming the item whose texts or options cannot be parsed.
    """
    if contrast.swapped:
        return contrast
    pairs: dict[int, list[Example]] = {}
    for e in contrast.examples:
        pairs.setdefault(e.pair_id, []).append(e)
    offset = max(pairs) + 1 if pairs else 0
    examples: list[Example] = []
    for pair_id, members in pairs.items():
        where = f"{contrast.path!r} {members[0].where}"
        if len(members) != 2:
            raise DatasetError(f"{where}: pair_id {pair_id} has {len(members)} text(s); a twin is made of a "
                               "pair of two texts. Capture with swap_options=False (--no-swap-options)")
        first, second = members
        q = ab_question(first.text, second.text, where=where)
        twin = swap_options(q, where=where)
        twin_texts = (twin.positive, twin.negative)
        examples += [replace(e, question=pair_id, order=0) for e in members]
        for e, text in zip(members, twin_texts):
            prompt = completion = None
            if e.prompt is not None:
                prompt = swap_options(ABQuestion(e.prompt, q.matching, q.other), where=where).question
                completion = _AB_END.sub(lambda match, t=text: f"({answer_letter(t)}){match.group(2)}",
                                         e.completion)
            examples.append(replace(e, text=text, pair_id=offset + pair_id, prompt=prompt,
                                    completion=completion, question=pair_id, order=1))
    return replace(contrast, examples=examples, swapped=True)

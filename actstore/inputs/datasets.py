"""Read contrast sets into labeled examples, whatever the file format.

Every input is read through one contract (:mod:`actstore.inputs.records`): a JSON list, JSONL (one
object per line), a Parquet file or folder, an Arrow file or a folder written by
``Dataset.save_to_disk`` is a table of rows with named fields (a JSON record's keys, a dataset's
columns), and what the rows mean is recognised from those fields, the same way for every format:

1. CAA A/B items: ``question``, ``answer_matching_behavior``,
   ``answer_not_matching_behavior``. Each item gives two examples in one pair:
   class ``pos`` = question + separator + matching answer, class ``neg`` =
   question + separator + the other answer.
2. Paired: ``positive``, ``negative`` -> classes ``pos`` / ``neg`` in one pair
   (the format of every set in ``../shared/data``).
3. Chat exchanges, a user turn and the assistant's response (:mod:`actstore.inputs.chat` formats
   them, with the model's chat template under ``chat_template``):

   * ``prompt``, ``positive``, ``negative``: one pair, two responses to the same prompt: class
     ``pos`` = (prompt, positive), ``neg`` = (prompt, negative);
   * ``prompt``, ``response`` and, where there is one, ``label`` (else class ``text``), an
     integer ``pair_id`` (else each record is its own pair) and a ``system`` prompt (else the
     capture's): one exchange per record (what ``capture --respond`` writes).

   Without a template an exchange reads ``prompt``, a blank line, ``response``. Positions
   relative to the turns (``prompt-last``, ``response-mean``, ``response-all``) read these.
4. Labeled: ``text`` and, where there is one, ``label`` (any class names; a field named
   ``label`` is the class unless ``label_column`` says otherwise, the Hugging Face convention;
   without one every text is of class ``text``); an optional integer ``pair_id`` groups
   records, otherwise each record is its own pair. ``text_column`` and ``label_column`` name
   other fields (and make the rows labeled).

So the same rows give the same examples from every format: an A/B set (every text ends in its
answer letter, :func:`actstore.inputs.ab.answer_letter`) is one, and gets its option-swapped twins
(:func:`with_twins`), from Parquet as from JSON. Errors name the file, the line (JSONL), item (JSON
list) or row (datasets), and the field.

:func:`read_data` is what a capture reads: a labeled dataset that is neither A/B nor paired by
``pair_id`` stays a lazily read :class:`actstore.inputs.sources.TextSource` (read a window at a time,
whatever its size); everything else is read whole into a :class:`ContrastSet` (pairs and twins
need the whole set). A plain-text corpus (:mod:`actstore.inputs.sources`) has no fields: it is cut into
windows of one class and is never an A/B set. The A/B detector lives in :mod:`actstore.inputs.ab`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DatasetError, InputFormatError
from .ab import ABQuestion, ab_question, answer_letter, swap_options, with_answer_letter
from .fields import MISSING, label_value, missing_field, pair_id_value, text_value
from .records import Table, blocks, labeled_fields, open_table
from .sources import CORPUS_CLASS, CORPUS_SUFFIXES, open_source, table_source

POS, NEG = "pos", "neg"
DEFAULT_SEPARATOR = "\n"

_FORMATS = {
    "caa": ("question", "answer_matching_behavior", "answer_not_matching_behavior"),
    "exchange-pairs": ("prompt", "positive", "negative"),
    "pairs": ("positive", "negative"),
    "exchanges": ("prompt", "response"),
    "labeled": ("text", "label"),
}
EXCHANGE_FORMATS = ("exchange-pairs", "exchanges")  # rows that are chat exchanges (prompt, response)


@dataclass(frozen=True)
class Example:
    """One text to capture.

    ``prompt``/``completion`` are kept for A/B items and chat exchanges so a chat template can put
    the question in the user turn and the answer in the assistant turn; ``system``: the system
    prompt of this exchange (on-policy capture: the one its response was written under; None:
    the capture's).
    """

    text: str
    label: str
    pair_id: int
    where: str  # "line 12" (JSONL) or "item 12" (JSON list), 1-based
    prompt: str | None = None
    completion: str | None = None
    question: int | None = None  # the pair id of the question as written (shared with its twin); None: pair_id
    order: int = 0  # 0: options as written; 1: the option-swapped twin (:func:`with_twins`)
    system: str | None = None

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
    settings: dict | None = None  # how the set was made, recorded with a capture's run (on-policy responses)

    @property
    def is_ab(self) -> bool:
        """An A/B set: every text ends in a parenthesised answer letter, ``(A)``, ``(B)``, ...
        (CAA items and the pairs made of them; :func:`answer_letter`); read at the letter, not the final ``)``."""
        return bool(self.examples) and self.format not in EXCHANGE_FORMATS \
            and all(answer_letter(e.text) is not None for e in self.examples)

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.examples})

    def __len__(self) -> int:
        return len(self.examples)


def text_hash(text: str) -> str:
    """16 hex digits of BLAKE2b: identifies a text in the store without storing it."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Shape:
    """What a table's rows are (see the module docstring): the format, and for a labeled table its
    text and label fields and whether its rows carry a ``pair_id``."""

    format: str
    text: str = "text"
    label: str | None = None
    pair_id: bool = False
    system: bool = False  # exchanges: a system prompt per record

    @property
    def fields(self) -> tuple[str, ...]:
        if self.format == "exchanges":
            optional = ((self.label,) if self.label else ()) + (("pair_id",) if self.pair_id else ())
            return _FORMATS["exchanges"] + optional + (("system",) if self.system else ())
        if self.format != "labeled":
            return _FORMATS[self.format]
        return (self.text,) + ((self.label,) if self.label else ()) + (("pair_id",) if self.pair_id else ())


def detect_shape(table: Table, text_column: str | None = None, label_column: str | None = None) -> Shape:
    """The :class:`Shape` of ``table`` from its fields (the same rules for every format)."""
    fields = table.fields
    if text_column is None and all(k in fields for k in _FORMATS["exchanges"]) and "positive" not in fields:
        label = label_column if label_column is not None else "label" if "label" in fields else None
        if label and label not in fields:
            labeled_fields(table, "prompt", label)  # names the missing field
        return Shape("exchanges", "prompt", label or None, "pair_id" in fields, "system" in fields)
    if text_column is None and label_column is None:
        for fmt in ("caa", "exchange-pairs", "pairs"):
            if all(k in fields for k in _FORMATS[fmt]):
                return Shape(fmt)
        if "text" not in fields:
            return _partial_shape(table)
    text, label = labeled_fields(table, text_column, label_column)
    return Shape("labeled", text, label, "pair_id" in fields)


def _partial_shape(table: Table) -> Shape:
    """A table with fields of a format but not all of them: most likely that format with a field
    missing or misspelled. A JSON file names the record that lacks it; a dataset lacks a column."""
    fields = table.fields
    # 'prompt' alone says nothing (many files have one): an exchange format needs it and a field of its own
    overlap = {name: sum(k in fields for k in keys if k != "prompt")
               if name not in EXCHANGE_FORMATS or "prompt" in fields else 0 for name, keys in _FORMATS.items()}
    best = max(overlap, key=overlap.get)
    expected = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in _FORMATS.items())
    if overlap[best] == 0:
        record = "record" if table.noun == "field" else "row"
        raise InputFormatError(f"{str(table.path)!r}: unrecognised {record} with {table.noun}s {list(fields)!r}: no "
                               f"{table.noun} 'text' (text_column) and not one of the formats ({expected}; a label is "
                               "optional)", param="text_column")
    shape = Shape(best, label="label" if best == "labeled" else None)
    for key in shape.fields:
        if table.lazy and key not in fields:
            raise InputFormatError(f"{str(table.path)!r} has no column {key!r} (the {best} format needs "
                                   f"{', '.join(map(repr, _FORMATS[best]))}); its columns are {list(fields)!r}")
    return shape


def _examples(table: Table, shape: Shape, separator: str) -> list[Example]:
    """Every row of ``table`` as examples, read a block at a time."""
    class_names = table.class_names(shape.label) if shape.label else None
    examples: list[Example] = []
    for start, values in blocks(table, shape.fields):
        for i in range(len(values[shape.fields[0]])):
            row = {key: column[i] for key, column in values.items()}
            examples += _row_examples(table, shape, start + i, row, class_names, separator)
    return examples


def _row_examples(table: Table, shape: Shape, index: int, row: dict, class_names, separator: str) -> list[Example]:
    """The examples of one row, each value checked by :mod:`actstore.inputs.records` (file, row, field)."""
    path, fmt, where = table.path, shape.format, table.where(index)
    for key in shape.fields:
        if row[key] is MISSING and key not in ("pair_id", "system"):
            raise missing_field(path, where, key, _FORMATS[fmt], fmt)
    if fmt == "caa":
        question, matching, other = (text_value(path, where, k, row[k]) for k in _FORMATS["caa"])
        return [Example(question + separator + answer, label, index, where, question, answer)
                for label, answer in ((POS, matching), (NEG, other))]
    if fmt == "pairs":
        positive, negative = (text_value(path, where, k, row[k]) for k in _FORMATS["pairs"])
        return [Example(positive, POS, index, where), Example(negative, NEG, index, where)]
    if fmt == "exchange-pairs":
        prompt, positive, negative = (text_value(path, where, k, row[k]) for k in _FORMATS[fmt])
        return [exchange(prompt, response, label, index, where)
                for label, response in ((POS, positive), (NEG, negative))]
    if fmt == "exchanges":
        prompt, response = (text_value(path, where, k, row[k]) for k in _FORMATS[fmt])
        label = label_value(path, where, shape.label, row[shape.label], class_names) if shape.label else CORPUS_CLASS
        pair_id, system = row.get("pair_id", MISSING), row.get("system", MISSING)
        system = None if system is MISSING or system is None else text_value(path, where, "system", system)
        return [exchange(prompt, response, label, index if pair_id is MISSING else pair_id_value(path, where, pair_id),
                         where, system)]
    text = text_value(path, where, shape.text, row[shape.text])
    label = label_value(path, where, shape.label, row[shape.label], class_names) if shape.label else CORPUS_CLASS
    pair_id = row.get("pair_id", MISSING)
    return [Example(text, label, index if pair_id is MISSING else pair_id_value(path, where, pair_id), where)]


def exchange(prompt: str, response: str, label: str, pair_id: int, where: str, system: str | None = None) -> Example:
    """A chat exchange as an example; its ``text`` is the exchange without a template (the prompt,
    a blank line, the response), which a capture formats again as its options say."""
    text = f"{system}\n\n{prompt}\n\n{response}" if system else f"{prompt}\n\n{response}"
    return Example(text, label, pair_id, where, prompt, response, system=system)


def contrast_set(table: Table, shape: Shape, separator: str = DEFAULT_SEPARATOR) -> ContrastSet:
    """The whole of ``table`` read as ``shape`` says."""
    if not len(table):
        raise InputFormatError(f"{str(table.path)!r} holds no rows")
    return ContrastSet(str(table.path), shape.format, table.sha256, _examples(table, shape, separator))


def read_contrast_set(path: str | Path, separator: str = DEFAULT_SEPARATOR, *, text_column: str | None = None,
                      label_column: str | None = None) -> ContrastSet:
    """Read a contrast set whole, from any format (see the module docstring).

    ``separator`` joins an A/B question and its answer (default a newline, which
    reproduces the texts of ``../shared/data/caa-pairs``).
    """
    table = open_table(path)
    return contrast_set(table, detect_shape(table, text_column, label_column), separator)


def _ab_texts(table: Table, field: str) -> bool:
    """Whether every text of ``field`` is an A/B answer; stops at the first that is not (a dataset
    of ordinary texts costs one block)."""
    for _, values in blocks(table, [field], size=256):
        if not all(isinstance(t, str) and answer_letter(t) is not None for t in values[field]):
            return False
    return True


def read_data(path: str | Path, separator: str = DEFAULT_SEPARATOR, *, text_column: str | None = None,
              label_column: str | None = None, tokenizer=None, max_length: int | None = None):
    """``--data``: a :class:`ContrastSet`, or, for a labeled dataset that is neither A/B nor paired
    by ``pair_id`` and for a plain-text corpus, a lazily read :class:`actstore.inputs.sources.TextSource` (a
    corpus needs the ``tokenizer``). The same rows give the same examples in every format."""
    if needs_tokenizer(path):
        return open_source(path, text_column=text_column, label_column=label_column, tokenizer=tokenizer,
                           max_length=max_length)
    table = open_table(path)
    shape = detect_shape(table, text_column, label_column)
    if table.lazy and len(table) and shape.format == "labeled" and not shape.pair_id \
            and not _ab_texts(table, shape.text):
        return table_source(table, shape.text, shape.label)
    return contrast_set(table, shape, separator)


QUESTION_FIELDS = ("prompt", "question")


def read_questions(path: str | Path, text_column: str | None = None) -> tuple[list[str], list[str], str]:
    """The questions of a file (any format of :func:`open_table`): field ``text_column``, else
    ``prompt``, else ``question`` (a CAA file's questions); ``(questions, where each is, sha256)``."""
    table = open_table(path)
    names = (text_column,) if text_column else QUESTION_FIELDS
    field = next((name for name in names if name in table.fields), None)
    if field is None:
        raise InputFormatError(f"{str(path)!r} has no {table.noun} {' or '.join(map(repr, names))} of questions; its "
                               f"{table.noun}s are {list(table.fields)!r} (name one with text_column)",
                               param="text_column")
    questions, where = [], []
    for start, values in blocks(table, [field]):
        for i, value in enumerate(values[field]):
            where.append(table.where(start + i))
            if value is MISSING:
                raise InputFormatError(f"{str(path)!r} {where[-1]}: missing field {field!r} (the question)")
            questions.append(text_value(path, where[-1], field, value))
    if not questions:
        raise InputFormatError(f"{str(path)!r} holds no questions")
    return questions, where, table.sha256


def needs_tokenizer(path: str | Path) -> bool:
    """Whether :func:`read_data` needs the tokenizer for ``path`` (a plain-text corpus)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in CORPUS_SUFFIXES


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
                completion = with_answer_letter(e.completion, answer_letter(text))
            examples.append(replace(e, text=text, pair_id=offset + pair_id, prompt=prompt,
                                    completion=completion, question=pair_id, order=1))
    return replace(contrast, examples=examples, swapped=True)

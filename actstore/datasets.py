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
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputFormatError

POS, NEG = "pos", "neg"
_AB_END = re.compile(r"\([A-Z]\)\s*$")
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


@dataclass(frozen=True)
class ContrastSet:
    """Examples read from one file, with provenance."""

    path: str
    format: str
    sha256: str
    examples: list[Example]

    @property
    def is_ab(self) -> bool:
        """An A/B set: every text ends in a parenthesised answer letter, ``(A)``, ``(B)``, ...
        (CAA items and the pairs made of them); read at the letter, not the final ``)``."""
        return bool(self.examples) and all(_AB_END.search(e.text) for e in self.examples)

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
        _check_label(path, where, value)
    return value


def _check_label(path, where: str, label: str) -> None:
    """Refuse a label with characters a reader cannot see (control, format, separators other
    than a plain space, leading/trailing space): 'pos' and 'pos\\x00' would be two classes that
    print alike."""
    import unicodedata

    if unicodedata.normalize("NFC", label) != label:
        raise InputFormatError(f"{str(path)!r} {where}: field 'label' {label!r} is not in Unicode NFC form "
                               f"(it would differ from {unicodedata.normalize('NFC', label)!r}, which prints "
                               "alike); save the file NFC-normalised")
    hidden = [ch for ch in label if unicodedata.category(ch)[0] in "CZ" and ch != " "]
    if hidden or label != label.strip():
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in hidden) or "leading or trailing spaces"
        raise InputFormatError(f"{str(path)!r} {where}: field 'label' {label!r} holds invisible characters "
                               f"({shown}); labels that print alike must be equal: remove them")


def read_contrast_set(path: str | Path, separator: str = DEFAULT_SEPARATOR) -> ContrastSet:
    """Read a contrast-set file (see the module docstring for the formats).

    ``separator`` joins an A/B question and its answer (default a newline, which
    reproduces the texts of ``../shared/data/caa-pairs``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFormatError(f"contrast-set file {str(path)!r} does not exist or is not a file")
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

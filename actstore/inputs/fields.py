"""The checks every value of an input goes through, whatever its format (:mod:`actstore.inputs.records`):
a text, a label, a pair id, the fields a labeled table names. Each refusal names the file, the row
(``line 3``, ``item 3``, ``row 3``), the field and what was expected."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from ..errors import InputFormatError

MISSING = object()  # a field a JSON record does not have
NO_LABELS = ""  # label_column=NO_LABELS: read no labels even where a field named "label" exists
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_TEXT_COLUMN = "text"



def missing_field(path, where: str, key: str, needed: Sequence[str], fmt: str) -> InputFormatError:
    return InputFormatError(f"{str(path)!r} {where}: missing field {key!r} "
                            f"(the {fmt} format needs {', '.join(map(repr, needed))})")


def text_value(path, where: str, key: str, value) -> str:
    """A text (or an answer): a non-empty string (a one-element list, as some CAA files hold
    their answers, is its element)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        raise InputFormatError(f"{str(path)!r} {where}: field {key!r} is null; expected a string")
    if not isinstance(value, str):
        raise InputFormatError(f"{str(path)!r} {where}: field {key!r} must be a string, got {type(value).__name__} "
                               f"{value!r}"[:300])
    if not value.strip():
        raise InputFormatError(f"{str(path)!r} {where}: field {key!r} is empty")
    return value


def label_value(path, where: str, key: str, value, names: Sequence[str] | None = None) -> str:
    """A label as its class name: a string, an integer (an integer-valued float too: an integer column
    with a missing value reads as floats) or, with ``names`` (a ``ClassLabel``), an index into them.
    A missing label (null, NaN, ClassLabel -1) and a look-alike one (:func:`check_label`) are refused."""
    if names is not None:  # a ClassLabel: an index into its names; -1 is the datasets convention for "missing"
        if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 0 <= value < len(names):
            raise InputFormatError(f"{str(path)!r} {where}: the label is {value!r}, which is not one of the "
                                   f"ClassLabel's {len(names)} classes (-1 means a missing label); drop the row "
                                   "or give it a class", param="label_column")
        value = names[value]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise InputFormatError(f"{str(path)!r} {where}: the label is missing ({value!r}) in field {key!r}; drop the "
                               "row or give it a class", param="label_column")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise InputFormatError(f"{str(path)!r} {where}: the label is {type(value).__name__} {value!r}, expected a "
                               "string or an integer", param="label_column")
    label = str(value)
    if not label:
        raise InputFormatError(f"{str(path)!r} {where}: the label is empty", param="label_column")
    check_label(path, where, label)
    return label


def check_label(path, where: str, label: str) -> None:
    """Refuse a label with characters a reader cannot see (control, format, separators other
    than a plain space, leading/trailing space): 'pos' and 'pos\\x00' would be two classes that
    print alike."""
    if unicodedata.normalize("NFC", label) != label:
        raise InputFormatError(f"{str(path)!r} {where}: field 'label' {label!r} is not in Unicode NFC form "
                               f"(it would differ from {unicodedata.normalize('NFC', label)!r}, which prints "
                               "alike); save the file NFC-normalised")
    hidden = [ch for ch in label if unicodedata.category(ch)[0] in "CZ" and ch != " "]
    if hidden or label != label.strip():
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in hidden) or "leading or trailing spaces"
        raise InputFormatError(f"{str(path)!r} {where}: field 'label' {label!r} holds invisible characters "
                               f"({shown}); labels that print alike must be equal: remove them")


def pair_id_value(path, where: str, value) -> int:
    """A ``pair_id``: a non-negative integer below 2**62."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise InputFormatError(f"{str(path)!r} {where}: field 'pair_id' must be a non-negative integer below 2**62, "
                               f"got {value!r}")
    return int(value)

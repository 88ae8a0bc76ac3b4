"""Perplexity text as a set of documents, and windows drawn from many of them.

A perplexity interval over windows of one contiguous passage describes that passage:
2048 tokens of WikiText-2 are two articles, adjacent windows are correlated, and the
text a steered model will meet is other documents. So the text is read as documents
and the windows come from at least ``min_documents`` of them (a few each); an interval
then resamples documents (studies/results/PLAN.md gives the measurement behind the
defaults).

Inputs (:func:`read_documents`):

* a WikiText file (``.txt``/``.raw`` with top-level headings `` = Title = `` on lines of their
  own, each followed by a blank line): one document per article, split at those headings (not
  at `` = = Section = = ``);
* JSONL or a JSON list of objects, or a Parquet/Arrow dataset (:mod:`actstore.inputs.sources`):
  one document per record, its text in ``text_column`` (default ``text``);
* any other text file: one document.

:func:`default_corpus` finds the text when none is given (works from any folder), by the rule
:func:`beside_repository` shares with the library's other default files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError, InputFormatError

MIN_DOCUMENTS = 32
DEFAULT_WINDOW = 128  # tokens per window, before BOS (4096 tokens from 32 documents: one window each)
TEXT_ENV = "ACTSTORE_TEXT"
# Relative to the folder that holds the package's repository (the layout of a clone beside ../shared).
_SHARED_TEXT = Path("shared") / "data" / "wikitext-2" / "test.txt"
# A WikiText article heading: " = Title = " (one '=' each side; sections have two or more) on a
# line of its own followed by a blank line (an equation line " = 1 / s = " inside an article is not).
_TOP_HEADING = re.compile(r"^ = ([^=].*?) = *$(?=\n[ \t]*\n)", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    """One document: its position in the corpus, its title where the format has one, its text."""

    index: int
    text: str
    title: str | None = None


@dataclass(frozen=True)
class DocumentWindow:
    """``token_ids`` (no special tokens) of one window: tokens ``start .. start+len-1`` of document
    ``document`` (its :attr:`Document.index`)."""

    document: int
    start: int
    token_ids: tuple[int, ...]


def split_wikitext(text: str) -> list[Document]:
    """Documents of a WikiText file: each top-level heading `` = Title = `` starts one (heading
    line included in its text); non-blank text before the first heading is a document of its own."""
    headings = list(_TOP_HEADING.finditer(text))
    starts = [m.start() for m in headings]
    pieces: list[tuple[str | None, str]] = []
    if not starts or text[: starts[0]].strip():
        pieces.append((None, text[: starts[0]] if starts else text))
    for i, match in enumerate(headings):
        stop = starts[i + 1] if i + 1 < len(starts) else len(text)
        pieces.append((match.group(1).strip(), text[match.start() : stop]))
    return [Document(i, body, title) for i, (title, body) in enumerate(pieces)]


def read_documents(path: str | Path, *, text_column: str | None = None) -> Sequence[Document] | Sequence[str]:
    """The documents of ``path`` (see the module docstring): a list of :class:`Document`, or for
    a Parquet/Arrow dataset its lazy column of texts (read a block at a time)."""
    from .sources import is_dataset_folder

    path = Path(path)
    if not path.exists():
        raise InputFormatError(f"text {str(path)!r} does not exist", param="text")
    suffix = path.suffix.lower()
    if path.is_dir() and is_dataset_folder(path) or suffix in (".parquet", ".arrow"):
        from .sources import open_source

        return open_source(path, text_column=text_column).texts
    if not path.is_file():
        raise InputFormatError(f"text {str(path)!r} is a folder that holds no dataset", param="text")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputFormatError(f"text {str(path)!r} is not valid UTF-8", param="text") from None
    if suffix in (".jsonl", ".json"):
        return _json_documents(path, raw, text_column or "text")
    if text_column is not None:
        raise InputFormatError(f"text {str(path)!r} is a plain text file: it has no columns; text_column is for "
                               "JSONL, Parquet and Arrow documents", param="text_column")
    documents = split_wikitext(raw) if _TOP_HEADING.search(raw) else [Document(0, raw)]
    if not any(d.text.strip() for d in documents):
        raise InputFormatError(f"text {str(path)!r} is empty", param="text")
    return documents


def _json_documents(path: Path, raw: str, column: str) -> list[Document]:
    stripped = raw.lstrip()
    try:
        if stripped.startswith("["):
            records = [(f"item {i + 1}", r) for i, r in enumerate(json.loads(raw))]
        else:
            records = [(f"line {n}", json.loads(line)) for n, line in enumerate(raw.splitlines(), start=1)
                       if line.strip()]
    except json.JSONDecodeError as err:
        raise InputFormatError(f"{str(path)!r}: invalid JSON ({err.msg}, line {err.lineno})", param="text") from None
    documents = []
    for where, record in records:
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise InputFormatError(f"{str(path)!r} {where}: expected an object with a string field {column!r} "
                                   "(text_column names another)", param="text_column")
        documents.append(Document(len(documents), record[column], record.get("title")))
    if not documents:
        raise InputFormatError(f"{str(path)!r} holds no documents", param="text")
    return documents


def _text_of(document) -> str:
    return document.text if isinstance(document, Document) else str(document)


def document_windows(tokenizer, documents: Sequence[Document] | Sequence[str], n_tokens: int, *,
                     window: int = DEFAULT_WINDOW, min_documents: int = MIN_DOCUMENTS,
                     seed: int = 0) -> list[DocumentWindow]:
    """``n_tokens // window`` windows of ``window`` tokens, a few from each of at least
    ``min_documents`` documents.

    Each chosen document gives ``max(1, n_windows // min_documents)`` windows (the first few
    one more, to make up the count), at distinct positions drawn at random within it; the
    documents are drawn at random (``seed``) among those long enough. Returned in document
    order, then position. Raises :class:`InputFormatError` when the windows are fewer than
    ``min_documents`` (ask for more tokens or shorter windows) or too few documents are long
    enough.
    """
    if window < 1 or n_tokens < window:
        raise InputFormatError(f"n_tokens={n_tokens}, window={window}: need at least one window of >= 1 token",
                               param=("n_tokens", "window"))
    n_windows = n_tokens // window
    if n_windows < min_documents:
        raise InputFormatError(
            f"n_tokens={n_tokens} in windows of {window} tokens makes {n_windows} windows, fewer than "
            f"min_documents={min_documents}: ask for at least {min_documents * window} tokens or windows of at "
            f"most {n_tokens // min_documents} tokens", param=("n_tokens", "window"))
    per_document = max(1, n_windows // min_documents)
    n_chosen = n_windows // per_document
    extra = n_windows - n_chosen * per_document  # the first `extra` chosen documents give one more
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, list[int]]] = []
    long_enough = 0
    for position in rng.permutation(len(documents)):
        need = per_document + (1 if len(chosen) < extra else 0)
        ids = tokenizer(_text_of(documents[int(position)]), add_special_tokens=False)["input_ids"]
        if len(ids) < need * window:
            continue
        long_enough += 1
        chosen.append((int(position), ids))
        if len(chosen) == n_chosen:
            break
    if len(chosen) < n_chosen:
        raise InputFormatError(
            f"only {long_enough} of {len(documents)} documents hold {per_document * window}+ tokens; "
            f"{n_chosen} are needed for {n_windows} windows of {window} tokens from at least {min_documents} "
            "documents: give more documents, fewer tokens or shorter windows", param=("n_tokens", "window"))
    out = []
    for rank, (position, ids) in enumerate(chosen):
        count = per_document + (1 if rank < extra else 0)
        slots = np.sort(rng.choice(len(ids) // window, size=count, replace=False))
        document = documents[position]
        index = document.index if isinstance(document, Document) else position
        out += [DocumentWindow(index, int(s) * window, tuple(ids[int(s) * window : (int(s) + 1) * window]))
                for s in slots]
    return sorted(out, key=lambda w: (w.document, w.start))


def beside_repository(relative: str | Path) -> Path:
    """``relative`` in the folder that holds the package's repository (``shared/...`` is then
    ``../shared`` beside a clone, as the project's data README lays it out), whatever the working
    folder; the path may not exist. The default files of the library are found so."""
    return Path(__file__).resolve().parents[2].parent / relative


def default_corpus() -> Path:
    """The perplexity text when none is given, found by this rule (from any working folder):

    1. the file named by the environment variable ``ACTSTORE_TEXT``;
    2. ``shared/data/wikitext-2/test.txt`` in the folder that holds the package's repository
       (``../shared`` beside a clone, as the project's data README lays it out);
    3. otherwise an error that says to pass ``--text`` (Python: ``text=``).
    """
    named = os.environ.get(TEXT_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise ActstoreError(f"${TEXT_ENV}={named!r} does not exist; point it at a text file or pass --text",
                                param="text")
        return path
    beside = beside_repository(_SHARED_TEXT)
    if beside.is_file():
        return beside
    raise ActstoreError(f"no perplexity text given and none found (${TEXT_ENV} unset, no {str(beside)!r}); pass "
                        "--text with a WikiText file, a JSONL/Parquet of documents or a plain text file",
                        param="text")


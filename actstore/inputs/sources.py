"""Inputs at dataset scale, read window by window: Hugging Face datasets and plain-text corpora.

A contrast-set file (:mod:`actstore.inputs.datasets`) is read whole. The sources here
are read a window of texts at a time, so a capture's memory does not grow with
the input:

* a labeled table (:mod:`actstore.inputs.records`: a Hugging Face ``datasets`` dataset on disk,
  a folder written by ``Dataset.save_to_disk`` or a single ``.arrow`` file, memory-mapped by
  ``datasets``, or a ``.parquet`` file or a folder of them, read a row group at a time with
  pyarrow): ``text_column`` (default ``text``) holds the texts, ``label_column`` their
  classes (default: a column named ``label`` where there is one; a ``ClassLabel`` gives its
  names; ``label_column=""`` none); without one every text is of class ``text``. Each row is its
  own pair. Texts and labels are checked as a contrast-set file's are. A table whose rows are
  A/B answers or carry a ``pair_id`` is read whole instead (:func:`actstore.inputs.datasets.read_data`),
  so that it gets what the same rows get from JSON.
* a plain-text corpus (a ``.txt`` file, e.g. WikiText-2), for a one-class,
  SAE-style capture: tokenized once, streaming, in blocks of lines, and cut into
  windows of ``max_length`` tokens (the tokenizer's special tokens included);
  only the windows' boundaries are kept (four integers per window), and each
  window's text is read back from the file when its turn comes. A window is
  re-tokenized on its own for the capture, so its token count can differ from
  the cut by a merge at its edges (a longer one keeps its last ``max_length``
  tokens, with a warning).

Every source has a length, a SHA-256 of its bytes (so ``--resume`` knows it),
and lazy columns (:class:`Column`) that the capture slices window by window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputFormatError
from .fields import label_value, text_value
from .records import Table, file_sha256, labeled_fields, open_table

CORPUS_SUFFIXES = (".txt", ".text", ".raw")
CORPUS_CLASS = "text"
DEFAULT_CORPUS_TOKENS = 512
_BLOCK_BYTES = 1 << 20


def is_dataset_folder(path: str | Path) -> bool:
    """A folder of Parquet files, or one that ``save_to_disk`` wrote (a dataset or a dict of splits)."""
    path = Path(path)
    return any(path.glob("*.parquet")) or any(
        (path / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json"))


class Column(Sequence):
    """A lazy column of ``n`` values: ``fetch(start, stop)`` returns values ``start .. stop-1``
    (a list or a numpy array). Slices are views; the last block fetched is kept, so
    a window's texts, labels and ids read the source once."""

    def __init__(self, n: int, fetch: Callable[[int, int], Sequence], offset: int = 0,
                 cache: dict | None = None):
        self._n, self._fetch, self._offset = n, fetch, offset
        self._cache = cache if cache is not None else {}

    def __len__(self) -> int:
        return self._n

    def _block(self, start: int, stop: int):
        start, stop = start + self._offset, stop + self._offset
        held = self._cache.get("block")
        if held is None or not held[0] <= start <= stop <= held[1]:
            held = (start, stop, self._fetch(start, stop))
            self._cache["block"] = held
        return held[2][start - held[0]: stop - held[0]]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            if step != 1:
                raise IndexError("a Column is sliced with step 1 only")
            return Column(max(0, stop - start), self._fetch, self._offset + start, self._cache)
        index = int(key)
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._block(index, index + 1)[0]

    def __iter__(self) -> Iterator:
        return iter(self._block(0, self._n))

    def to_numpy(self) -> np.ndarray:
        """All values (one fetch): for slices of a window."""
        return np.asarray(self._block(0, self._n))


@dataclass
class TextSource:
    """A dataset or corpus opened for capture: ``texts``, ``labels`` (str), ``pair_ids`` (int64)
    and ``where`` (``'path' row 12``) as lazy columns of ``n_texts`` values."""

    path: str
    format: str  # "arrow", "parquet" or "text"
    sha256: str
    texts: Column
    labels: Column
    pair_ids: Column
    where: Column

    def __len__(self) -> int:
        return len(self.texts)


def open_source(path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
                tokenizer=None, max_length: int | None = None) -> TextSource:
    """Open ``path`` (see the module docstring). A corpus needs the ``tokenizer`` and cuts windows of
    ``max_length`` tokens (default :data:`DEFAULT_CORPUS_TOKENS`)."""
    path = Path(path)
    if not path.exists():
        raise InputFormatError(f"data {str(path)!r} does not exist")
    if path.is_file() and path.suffix.lower() in CORPUS_SUFFIXES:
        if text_column is not None or label_column is not None:
            raise InputFormatError(f"{str(path)!r} is a plain-text corpus: it has no columns; "
                                   "text_column and label_column are for datasets",
                                   param=("text_column", "label_column"))
        if tokenizer is None:
            raise InputFormatError(f"{str(path)!r}: a plain-text corpus is cut into windows by the tokenizer")
        return _corpus(path, tokenizer, max_length or DEFAULT_CORPUS_TOKENS)
    table = open_table(path)
    return table_source(table, *labeled_fields(table, text_column, label_column))


def table_source(table: Table, text: str, label: str | None) -> TextSource:
    """The texts of field ``text`` of a table and their classes (field ``label``; None: every text is
    of class :data:`CORPUS_CLASS`), as lazy columns read a block of rows at a time; each row is its own
    pair. Texts and labels are checked as a contrast-set file's are (:mod:`actstore.inputs.records`)."""
    path, n = table.path, len(table)
    if n == 0:
        raise InputFormatError(f"{str(path)!r} holds no rows")
    names = [text] + ([label] if label else [])
    class_names = table.class_names(label) if label else None
    cache: dict = {}

    def rows(start: int, stop: int) -> dict:
        held = cache.get("rows")
        if held is None or (held[0], held[1]) != (start, stop):
            held = (start, stop, table.values(start, stop, names))
            cache["rows"] = held
        return held[2]

    def texts(start: int, stop: int) -> list[str]:
        return [text_value(path, table.where(start + i), text, v) for i, v in enumerate(rows(start, stop)[text])]

    def labels(start: int, stop: int) -> np.ndarray:
        if label is None:
            return np.full(stop - start, CORPUS_CLASS)
        return np.asarray([label_value(path, table.where(start + i), label, v, class_names)
                           for i, v in enumerate(rows(start, stop)[label])])

    return _text_source(path, table.kind, table.sha256, n, texts, labels, table.where)


def _text_source(path: Path, fmt: str, sha: str, n: int, texts: Callable, labels: Callable,
                 where: Callable[[int], str]) -> TextSource:
    return TextSource(
        str(path), fmt, sha, texts=Column(n, texts), labels=Column(n, labels),
        pair_ids=Column(n, lambda a, b: np.arange(a, b, dtype=np.int64)),
        where=Column(n, lambda a, b: [f"{str(path)!r} {where(i)}" for i in range(a, b)]),
    )


def _corpus(path: Path, tokenizer, max_length: int) -> TextSource:
    if not getattr(tokenizer, "is_fast", False):
        raise InputFormatError(f"{str(path)!r}: cutting a corpus into token windows needs a fast tokenizer "
                               "(offsets); this one is not")
    content = max(1, max_length - tokenizer.num_special_tokens_to_add())
    bounds = np.asarray(list(_corpus_windows(path, tokenizer, content)), dtype=np.int64).reshape(-1, 4)
    if not len(bounds):
        raise InputFormatError(f"{str(path)!r} holds no text")
    held: dict = {}

    def block(start_byte: int, size: int) -> str:
        if held.get("at") != start_byte:  # windows come in order: one block of the file at a time
            with path.open("rb") as handle:
                handle.seek(start_byte)
                held["at"], held["text"] = start_byte, handle.read(size).decode("utf-8")
        return held["text"]

    def texts(start: int, stop: int) -> list[str]:
        return [block(b0, size)[c0:c1] for b0, size, c0, c1 in bounds[start:stop].tolist()]

    return _text_source(path, "text", file_sha256([path]), len(bounds), texts,
                        lambda a, b: np.full(b - a, CORPUS_CLASS), lambda i: f"row {i + 1}")


def _corpus_windows(path: Path, tokenizer, content_tokens: int) -> Iterator[tuple[int, int, int, int]]:
    """``(block byte offset, block bytes, first char, end char)`` of each window of ``content_tokens``
    tokens; blocks are about 1 MiB of whole lines, and windows do not cross them."""
    with path.open("rb") as handle:
        offset, line_no = 0, 0
        while True:
            lines = handle.readlines(_BLOCK_BYTES)
            if not lines:
                return
            raw = b"".join(lines)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                line = line_no + raw[: err.start].count(b"\n") + 1
                raise InputFormatError(f"{str(path)!r} line {line}: not valid UTF-8; save the file as UTF-8") \
                    from None
            spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            for k in range(0, len(spans), content_tokens):
                part = spans[k:k + content_tokens]
                first, end = part[0][0], part[-1][1]
                if text[first:end].strip():
                    yield offset, len(raw), first, end
            offset += len(raw)
            line_no += len(lines)

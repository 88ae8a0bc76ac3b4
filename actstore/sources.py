"""Inputs at dataset scale, read window by window: Hugging Face datasets and plain-text corpora.

A contrast-set file (:mod:`actstore.datasets`) is read whole. The sources here
are read a window of texts at a time, so a capture's memory does not grow with
the input:

* a Hugging Face ``datasets`` dataset on disk: a folder written by
  ``Dataset.save_to_disk`` or a single ``.arrow`` file (memory-mapped by
  ``datasets``), or a ``.parquet`` file or a folder of them (read a row group at
  a time with pyarrow). ``text_column`` (default ``text``) holds the texts,
  ``label_column`` (optional) their classes (a ``ClassLabel`` gives its names);
  without one every text is of class ``text``. Each row is its own pair.
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

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputFormatError

CORPUS_SUFFIXES = (".txt", ".text", ".raw")
CORPUS_CLASS = "text"
DEFAULT_CORPUS_TOKENS = 512
_BLOCK_BYTES = 1 << 20


def is_dataset_folder(path: str | Path) -> bool:
    """A folder of Parquet files, or one that ``save_to_disk`` wrote (a dataset or a dict of splits)."""
    path = Path(path)
    return any(path.glob("*.parquet")) or any(
        (path / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json"))


def is_source(path: str | Path) -> bool:
    """Whether ``path`` is read here (a dataset or a corpus) rather than as a contrast-set file."""
    path = Path(path)
    if path.is_dir():
        return True
    return path.suffix.lower() in (".arrow", ".parquet", *CORPUS_SUFFIXES)


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
    is_ab: bool = False

    def __len__(self) -> int:
        return len(self.texts)


def file_sha256(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes, in order (read in blocks: memory does not grow)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


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
    parquet = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.suffix.lower() == ".parquet" else []
    if parquet:
        return _parquet(path, parquet, text_column, label_column)
    return _arrow(path, text_column, label_column)


NO_LABELS = ""  # label_column=NO_LABELS: read no labels even where a column named "label" exists
DEFAULT_LABEL_COLUMN = "label"


def _columns(path: Path, names: Sequence[str], text_column: str | None,
             label_column: str | None) -> tuple[str, str | None]:
    text = text_column or "text"
    if label_column is None:  # the Hugging Face convention, as "text" is for the texts
        label_column = DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in names else None
    elif label_column == NO_LABELS:
        label_column = None
    for role, name in (("text_column", text), ("label_column", label_column)):
        if name is not None and name not in names:
            raise InputFormatError(f"{str(path)!r} has no column {name!r} ({role}); its columns are "
                                   f"{list(names)!r}", param=role)
    return text, label_column


def _texts_checked(path: Path, values: list, start: int) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InputFormatError(f"{str(path)!r} row {start + i + 1}: the text column holds "
                                   f"{type(value).__name__} {value!r}, expected a string")
        if not value.strip():
            raise InputFormatError(f"{str(path)!r} row {start + i + 1}: the text is empty")
    return values


def check_label(path, where: str, label: str) -> None:
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


def _label_checked(path: Path, value, row: int, names: Sequence[str] | None) -> str:
    """One label as its class name; a missing or look-alike label is refused with its row."""
    where = f"row {row}"
    if names is not None:  # a ClassLabel: an index into its names; -1 is the datasets convention for "missing"
        if value is None or isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 0 <= value < len(names):
            raise InputFormatError(f"{str(path)!r} {where}: the label is {value!r}, which is not one of the "
                                   f"ClassLabel's {len(names)} classes (-1 means a missing label); drop the row "
                                   "or give it a class", param="label_column")
        value = names[value]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise InputFormatError(f"{str(path)!r} {where}: the label is missing ({value!r}); drop the row or give it "
                               "a class", param="label_column")
    if isinstance(value, float) and value.is_integer():  # an integer column with a missing value reads as floats
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise InputFormatError(f"{str(path)!r} {where}: the label is {type(value).__name__} {value!r}, expected a "
                               "string or an integer", param="label_column")
    label = str(value)
    if not label:
        raise InputFormatError(f"{str(path)!r} {where}: the label is empty", param="label_column")
    check_label(path, where, label)
    return label


def _source(path: Path, fmt: str, sha: str, n: int, fetch_rows: Callable[[int, int], dict],
            names: Sequence[str] | None = None) -> TextSource:
    """Lazy columns over ``fetch_rows(start, stop) -> {"text": [...], "label": [...] or None}``;
    ``names``: a ClassLabel's class names (labels are then indices into them)."""
    if n == 0:
        raise InputFormatError(f"{str(path)!r} holds no rows")
    cache: dict = {}

    def rows(start: int, stop: int) -> dict:
        held = cache.get("rows")
        if held is None or (held[0], held[1]) != (start, stop):
            held = (start, stop, fetch_rows(start, stop))
            cache["rows"] = held
        return held[2]

    def labels(start: int, stop: int) -> np.ndarray:
        values = rows(start, stop)["label"]
        if values is None:
            return np.full(stop - start, CORPUS_CLASS)
        return np.asarray([_label_checked(path, v, start + i + 1, names) for i, v in enumerate(values)])

    return TextSource(
        str(path), fmt, sha,
        texts=Column(n, lambda a, b: _texts_checked(path, rows(a, b)["text"], a)),
        labels=Column(n, labels),
        pair_ids=Column(n, lambda a, b: np.arange(a, b, dtype=np.int64)),
        where=Column(n, lambda a, b: [f"{str(path)!r} row {i + 1}" for i in range(a, b)]),
    )


def _arrow(path: Path, text_column: str | None, label_column: str | None) -> TextSource:
    try:
        import datasets
    except ImportError:
        raise InputFormatError(f"{str(path)!r}: reading a Hugging Face dataset needs the datasets package "
                               "(pip install 'actstore[datasets]')") from None
    try:
        dataset = datasets.Dataset.from_file(str(path)) if path.is_file() else datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise InputFormatError(f"{str(path)!r} is not a contrast-set file (.json, .jsonl), a corpus (.txt), a "
                               f"Parquet file or folder, or a dataset saved with save_to_disk: {err}") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise InputFormatError(f"{str(path)!r} holds several splits ({', '.join(dataset)}); pass the folder of "
                               f"one, e.g. {str(path / next(iter(dataset)))!r}")
    text, label = _columns(path, dataset.column_names, text_column, label_column)
    names = None
    feature = dataset.features.get(label) if label else None
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
    dataset = dataset.select_columns([text] + ([label] if label else []))
    files = sorted(Path(f["filename"]) for f in dataset.cache_files)

    def fetch(start: int, stop: int) -> dict:
        batch = dataset[start:stop]
        return {"text": batch[text], "label": batch[label] if label else None}

    return _source(path, "arrow", file_sha256(files), len(dataset), fetch, names)


def _parquet(path: Path, files: list[Path], text_column: str | None, label_column: str | None) -> TextSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handles = [pq.ParquetFile(f) for f in files]
    except (OSError, pa.ArrowException) as err:
        raise InputFormatError(f"{str(path)!r}: not a readable Parquet file ({err})") from None
    text, label = _columns(path, handles[0].schema_arrow.names, text_column, label_column)
    for f, handle in zip(files, handles):
        _columns(f, handle.schema_arrow.names, text, label)
    groups = [(h, g) for h in handles for g in range(h.num_row_groups)]
    firsts = np.cumsum([0] + [h.metadata.row_group(g).num_rows for h, g in groups])
    columns = [text] + ([label] if label else [])
    held: dict = {}

    def group_rows(i: int) -> dict:
        if held.get("index") != i:  # one row group in memory at a time
            handle, g = groups[i]
            held["index"], held["table"] = i, handle.read_row_group(g, columns=columns).to_pydict()
        return held["table"]

    def fetch(start: int, stop: int) -> dict:
        out: dict = {"text": [], "label": [] if label else None}
        i = int(np.searchsorted(firsts, start, side="right")) - 1
        while start < stop:
            table = group_rows(i)
            a, b = start - firsts[i], min(stop, firsts[i + 1]) - firsts[i]
            out["text"] += table[text][a:b]
            if label:
                out["label"] += table[label][a:b]
            start, i = firsts[i] + b, i + 1
        return out

    return _source(path, "parquet", file_sha256(files), int(firsts[-1]), fetch)


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

    def fetch(start: int, stop: int) -> dict:
        texts = [block(b0, size)[c0:c1] for b0, size, c0, c1 in bounds[start:stop].tolist()]
        return {"text": texts, "label": None}

    return _source(path, "text", file_sha256([path]), len(bounds), fetch)


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

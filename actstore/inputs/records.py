"""One reader contract for every input file: a :class:`Table` of rows with named fields.

A JSON list or JSONL file (its records, read whole), a Parquet file or folder of them (a row
group at a time, with pyarrow) and an Arrow dataset (an ``.arrow`` file or a folder written by
``Dataset.save_to_disk``, memory-mapped by ``datasets``) are all read through the same few
calls: :attr:`Table.fields` (a JSON file's keys, a dataset's columns), ``len(table)``,
:meth:`Table.values` (the values of some fields for rows ``start .. stop-1``, a field a JSON
record lacks as :data:`MISSING`) and :meth:`Table.where` (``item 3``, ``line 3`` or ``row 3``,
1-based). What the rows mean (A/B items, pairs, labeled texts) is decided once, from the fields,
whatever the format (:mod:`actstore.inputs.datasets`); every value is checked by the same functions
here (:func:`text_value`, :func:`label_value`, :func:`pair_id_value`), so a mistake is told the
same way for every format: the file, the row, the field and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFormatError
from .fields import DEFAULT_LABEL_COLUMN, DEFAULT_TEXT_COLUMN, MISSING, NO_LABELS


class Table:
    """Rows with named fields, read from one input (see the module docstring)."""

    path: Path
    kind: str  # "json", "parquet" or "arrow"
    sha256: str
    fields: list[str]
    noun = "column"  # what a field is called in messages ("field" for JSON)
    lazy = True  # read a block of rows at a time (a JSON file is read whole)

    def __len__(self) -> int:
        raise NotImplementedError

    def values(self, start: int, stop: int, names: Sequence[str]) -> dict[str, list]:
        raise NotImplementedError

    def where(self, index: int) -> str:
        return f"row {index + 1}"

    def class_names(self, name: str) -> list[str] | None:
        """The class names of a ``ClassLabel`` field (its values are indices into them), else None."""
        return None


def _hf_class_names(schema, name: str) -> list[str] | None:
    """The names of a ``ClassLabel`` column from the features ``datasets`` writes into an Arrow or
    Parquet schema's metadata (key ``huggingface``), else None."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][name] if raw else None
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(x) for x in feature["names"]]
    return None


def file_sha256(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' bytes, in order (read in blocks: memory does not grow)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def open_table(path: str | Path) -> Table:
    """The table of a contrast-set file (``.json``, ``.jsonl``), a ``.parquet`` file or folder, or an
    Arrow dataset (``.arrow`` file or ``save_to_disk`` folder)."""
    from .._files import input_file_problem

    path = Path(path)
    if not path.is_dir():
        problem = input_file_problem(path)
        if problem:
            raise InputFormatError(f"data {str(path)!r} {problem}")
    parquet = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.suffix.lower() == ".parquet" else []
    if parquet:
        return ParquetTable(path, parquet)
    if path.is_dir():
        return DatasetTable(path)
    if path.suffix.lower() == ".arrow":
        return ArrowFileTable(path)
    return JsonTable(path)


# --- JSON list and JSONL --------------------------------------------------------------------------

class JsonTable(Table):
    """A JSON list or JSONL file, read whole. Its fields are the keys of its records, in the order
    they first appear; a record that is not a JSON object is refused, naming it."""

    kind, noun, lazy = "json", "field", False

    def __init__(self, path: Path):
        self.path = path
        data = path.read_bytes()
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise InputFormatError(
                f"{str(path)!r} line {line}: not valid UTF-8 (byte {err.start}); save the file as UTF-8"
            ) from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self.records = _parsed_records(path, raw)
        except RecursionError:  # json's parser recurses per level of nesting
            raise InputFormatError(f"{str(path)!r} is nested too deeply to read (thousands of levels of [ or {{); "
                                   "expected a flat JSON list or JSONL of records") from None
        fields: dict[str, None] = {}
        for where, record in self.records:
            fields.update(dict.fromkeys(_json_object(path, where, record)))
        self.fields = list(fields)

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        return self.records[index][0]

    def values(self, start: int, stop: int, names: Sequence[str]) -> dict[str, list]:
        rows = [record for _, record in self.records[start:stop]]
        return {name: [record.get(name, MISSING) for record in rows] for name in names}


def _json_object(path: Path, where: str, record: Any) -> dict:
    if not isinstance(record, dict):
        raise InputFormatError(f"{str(path)!r} {where}: expected a JSON object, got {type(record).__name__}")
    return record


def _parsed_records(path: Path, raw: str) -> list[tuple[str, Any]]:
    stripped = raw.lstrip()
    if not stripped:
        raise InputFormatError(f"{str(path)!r} is empty: expected a JSON list or JSONL of records")
    if stripped.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputFormatError(f"{str(path)!r} line {err.lineno}: invalid JSON ({err.msg})") from None
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


# --- Parquet and Arrow ----------------------------------------------------------------------------

def _pyarrow(path: Path):
    try:
        import pyarrow
    except ImportError:
        raise InputFormatError(f"{str(path)!r}: reading Parquet or Arrow files needs pyarrow "
                               "(pip install 'actstore[datasets]')") from None
    return pyarrow


class ParquetTable(Table):
    """A Parquet file or a folder of them (in name order), read a row group at a time."""

    kind = "parquet"

    def __init__(self, path: Path, files: list[Path]):
        pa = _pyarrow(path)
        import pyarrow.parquet as pq

        self.path = path
        try:
            self._handles = [pq.ParquetFile(f) for f in files]
        except (OSError, pa.ArrowException) as err:
            raise InputFormatError(f"{str(path)!r}: not a readable Parquet file ({err})") from None
        self.fields = list(self._handles[0].schema_arrow.names)
        for f, handle in zip(files, self._handles):
            if list(handle.schema_arrow.names) != self.fields:
                raise InputFormatError(f"{str(f)!r} has columns {list(handle.schema_arrow.names)!r}, the folder's "
                                       f"first file {self.fields!r}: every file of a dataset has the same columns")
        self._groups = [(h, g) for h in self._handles for g in range(h.num_row_groups)]
        self._firsts = np.cumsum([0] + [h.metadata.row_group(g).num_rows for h, g in self._groups])
        self.sha256 = file_sha256(files)
        self._held: dict = {}

    def __len__(self) -> int:
        return int(self._firsts[-1])

    def _group(self, i: int, names: tuple[str, ...]) -> dict:
        if self._held.get("key") != (i, names):  # one row group in memory at a time
            handle, g = self._groups[i]
            self._held["key"], self._held["table"] = (i, names), handle.read_row_group(g, columns=list(names)) \
                .to_pydict()
        return self._held["table"]

    def values(self, start: int, stop: int, names: Sequence[str]) -> dict[str, list]:
        names = tuple(names)
        out: dict[str, list] = {name: [] for name in names}
        firsts = self._firsts
        i = int(np.searchsorted(firsts, start, side="right")) - 1
        while start < stop:
            table = self._group(i, names)
            a, b = start - firsts[i], min(stop, firsts[i + 1]) - firsts[i]
            for name in names:
                out[name] += table[name][a:b]
            start, i = firsts[i] + b, i + 1
        return out


    def class_names(self, name: str) -> list[str] | None:
        return _hf_class_names(self._handles[0].schema_arrow, name)


class ArrowFileTable(Table):
    """One ``.arrow`` file, memory-mapped: the Arrow IPC file format, or the stream format that
    ``datasets`` writes its cache files in (a ``ClassLabel`` keeps its names)."""

    kind = "arrow"

    def __init__(self, path: Path):
        pa = _pyarrow(path)
        self.path = path
        try:
            source = pa.memory_map(str(path))
            try:
                table = pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowException) as err:
            raise InputFormatError(f"{str(path)!r}: not a readable Arrow file (IPC file or stream format): {err}") \
                from None
        self._table, self.fields = table, list(table.schema.names)
        self.sha256 = file_sha256([path])

    def __len__(self) -> int:
        return self._table.num_rows

    def values(self, start: int, stop: int, names: Sequence[str]) -> dict[str, list]:
        return self._table.slice(start, stop - start).select(list(names)).to_pydict()

    def class_names(self, name: str) -> list[str] | None:
        return _hf_class_names(self._table.schema, name)


class DatasetTable(Table):
    """A folder written by ``Dataset.save_to_disk``, read with ``datasets`` (memory-mapped)."""

    kind = "arrow"

    def __init__(self, path: Path):
        try:
            import datasets
        except ImportError:
            raise InputFormatError(f"{str(path)!r}: reading a Hugging Face dataset needs the datasets package "
                                   "(pip install 'actstore[datasets]')") from None
        self.path = path
        try:
            dataset = datasets.load_from_disk(str(path))
        except (OSError, ValueError, FileNotFoundError) as err:
            raise InputFormatError(f"{str(path)!r} is a folder of neither Parquet files nor a dataset written by "
                                   f"save_to_disk: {err}") from None
        if isinstance(dataset, datasets.DatasetDict):
            raise InputFormatError(f"{str(path)!r} holds several splits ({', '.join(dataset)}); pass the folder of "
                                   f"one, e.g. {str(path / next(iter(dataset)))!r}")
        self._dataset, self.fields = dataset, list(dataset.column_names)
        self._class_label, self._selected = datasets.ClassLabel, {}
        self.sha256 = file_sha256(sorted(Path(f["filename"]) for f in dataset.cache_files))

    def __len__(self) -> int:
        return len(self._dataset)

    def values(self, start: int, stop: int, names: Sequence[str]) -> dict[str, list]:
        key = tuple(names)
        if key not in self._selected:
            self._selected = {key: self._dataset.select_columns(list(names))}
        batch = self._selected[key][start:stop]
        return {name: batch[name] for name in names}

    def class_names(self, name: str) -> list[str] | None:
        feature = self._dataset.features.get(name)
        return list(feature.names) if isinstance(feature, self._class_label) else None


def labeled_fields(table: Table, text_column: str | None, label_column: str | None) -> tuple[str, str | None]:
    """The text field (``text_column``, default ``text``) and label field of a labeled table:
    ``label_column`` None takes a field named ``label`` where there is one (the Hugging Face
    convention, as ``text`` is for the texts), :data:`NO_LABELS` none. A named field that is
    not there is refused, listing the fields that are."""
    text = text_column or DEFAULT_TEXT_COLUMN
    if label_column is None:
        label_column = DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in table.fields else None
    elif label_column == NO_LABELS:
        label_column = None
    for role, name in (("text_column", text), ("label_column", label_column)):
        if name is not None and name not in table.fields:
            raise InputFormatError(f"{str(table.path)!r} has no {table.noun} {name!r} ({role}); its {table.noun}s "
                                   f"are {list(table.fields)!r}", param=role)
    return text, label_column


def blocks(table: Table, names: Sequence[str], size: int = 1024) -> Iterator[tuple[int, dict[str, list]]]:
    """The table's values of ``names``, ``size`` rows at a time: ``(first row, {name: values})``."""
    for start in range(0, len(table), size):
        yield start, table.values(start, min(len(table), start + size), names)

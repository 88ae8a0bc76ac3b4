"""Reading a sweep folder's tables back, and knowing when a configuration's rows are complete.

The ledger (:mod:`actstore.evaluation.ledger`) opens its folder's tables through these functions:
:func:`read_csv` (a damaged or foreign table named), :func:`read_csv_salvaged` (the rows that still
read, for a folder opened to resume it), :func:`read_baseline` (baseline.json, damage named).

Every configuration of a folder scores the same items, windows and KL prompts, so each has the
same number of rows in items.csv, windows.csv and kl.csv: baseline.json records those counts
(``rows``, written with the unsteered rows: :func:`row_counts`), and :func:`short_keys` names every
configuration, the unsteered one included, that has another count (rows lost to a cut file or
damage): the ledger measures it again. A folder written before ``rows`` existed takes the item and
KL prompt counts from its settings (``items``, ``kl_prompts``) and, for windows, the most rows any
configuration has (a cut only takes rows away): never the most common count, which on a tie (one
configuration beside the unsteered one) could take the cut count for the whole one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from .files import complete_lines, replace_file
from .rows import KEY

APPENDED = ("items.csv", "windows.csv", "kl.csv")  # tables written by appending: a kill may cut their last line
# text columns: "12e4..." is no number
TEXT_COLUMNS = {"k": str, "method": str, "item": str, "prompt_id": str, "split": str, "question_text": str}
COUNTED = {"items.csv": "items", "kl.csv": "kl_prompts"}  # the settings that give a table's rows per configuration


def config_key(layer, method, k, alpha) -> tuple:
    """A configuration's key as the ledger keeps it: (layer, method, k, alpha), typed."""
    return (int(layer), str(method), str(k), float(alpha))


def table_bytes(path: Path) -> bytes | None:
    """A table's bytes, without a last line cut by a kill while it was appended to."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    return complete_lines(data) if path.name in APPENDED else data


def read_csv(path: Path, required: tuple[str, ...] = tuple(KEY)):
    """A sweep table, or None if absent or empty; one that does not read, or lacks the
    ``required`` columns, is named."""
    import pandas as pd

    data = table_bytes(path)
    if not data:
        return None
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=TEXT_COLUMNS)
        missing = [c for c in required if c not in frame]
        if missing:  # a header cut, damaged or of another file
            raise ValueError(f"no column {missing[0]!r}")
        return frame
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:  # a damaged or foreign file
        raise ActstoreError(f"{str(path)!r} cannot be read as this sweep's table ({str(err).splitlines()[0]}); "
                            "move it away (the sweep rebuilds it) or choose another --out folder") from None


def read_csv_salvaged(path: Path, numeric: tuple[str, ...], required: tuple[str, ...] = tuple(KEY)):
    """``(frame, clean)``: the rows of a table that still read, for a folder opened to resume it.
    Lines that do not parse, bytes that are not UTF-8 and rows whose ``numeric`` fields are not
    numbers are dropped (``clean`` is False then): the configurations they belonged to come out
    short, and the ledger measures those again instead of refusing the folder."""
    import pandas as pd

    try:
        return read_csv(path, required), True
    except ActstoreError:
        pass
    try:
        frame = pd.read_csv(io.BytesIO(table_bytes(path)), dtype=TEXT_COLUMNS,
                            on_bad_lines="skip", encoding_errors="replace", engine="python")
    except (ValueError, pd.errors.ParserError):  # not even its header reads: nothing in it is kept
        return None, False
    if any(c not in frame for c in required):  # nor its header's columns
        return None, False
    bad = np.zeros(len(frame), dtype=bool)
    for column in ("layer", *numeric):  # layer may be empty (the baseline's rows), never garbled
        if column in frame:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad |= (values.isna() & (frame[column].notna() if column == "layer" else True)).to_numpy()
            frame[column] = values
    return frame[~bad], False


def row_keys(frame) -> list:
    """Each row's configuration: "baseline" for the unsteered rows, else (layer, method, k, alpha)."""
    return ["baseline" if r.method == "none" else config_key(r.layer, r.method, r.k, r.alpha)
            for r in frame[KEY].itertuples(index=False)]


def row_counts(items, windows, kl_rows=None) -> dict[str, int]:
    """What baseline.json records as ``rows``: each table's rows per configuration (those of the
    unsteered model's, which every configuration repeats)."""
    counts = {"items.csv": len(items.item), "windows.csv": len(windows.nll)}
    if kl_rows is not None:
        counts["kl.csv"] = len(kl_rows.kl)
    return counts


def expected_rows(baseline: dict | None, name: str) -> int | None:
    """The rows per configuration of table ``name`` the folder must hold: baseline.json's ``rows``,
    else (a folder written before them) its settings' count, else None (not known)."""
    if not isinstance(baseline, dict):
        return None
    recorded = baseline.get("rows")
    if isinstance(recorded, dict) and isinstance(recorded.get(name), int):
        return recorded[name]
    setting = baseline.get("settings", {}).get(COUNTED.get(name, ""))
    return setting if isinstance(setting, int) and not isinstance(setting, bool) else None


def short_keys(frame, expected: set, want: int | None = None) -> set:
    """Of the ``expected`` configurations, those whose row count is not ``want`` (None: the most
    rows any of them has), none at all included: their rows were lost to damage or a cut file."""
    counts = dict.fromkeys(expected, 0)
    for key in row_keys(frame) if frame is not None else ():
        counts[key] = counts.get(key, 0) + 1
    full = want if want is not None else max((counts[key] for key in expected), default=0)
    return {key for key in expected if counts[key] != full or not full}


def read_baseline(path: Path):
    """baseline.json as a dict with its settings, or None if absent; damage is named."""
    if not path.exists():
        return None
    try:
        baseline = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as err:
        baseline, problem = None, f"not readable JSON ({err})"
    else:
        problem = None if isinstance(baseline, dict) and isinstance(baseline.get("settings"), dict) else \
            f"holds {type(baseline).__name__} {str(baseline)[:60]!r}, not the sweep's settings and figures"
    if problem:
        raise ActstoreError(f"{str(path)!r} is damaged: {problem}; without it the folder's settings cannot be "
                            "checked, so its results cannot be resumed: choose another --out folder (or move the "
                            "folder away)")
    return baseline


def replace_csv(frame, path: Path) -> None:
    replace_file(path, frame.to_csv(index=False))  # one rename: a kill leaves the old file or the new one


def header_columns(path: Path) -> list[str] | None:
    """The columns of an appended table's header line, or None where the file has none yet."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as handle:
        first = handle.readline()
    if not first.endswith(b"\n"):
        return None
    import csv

    return next(csv.reader([first.decode("utf-8", errors="replace").rstrip("\r\n")]), None)

"""The files of one sweep folder, and resuming it.

    baseline.json   the settings the folder was measured with, the unsteered figures, and ``rows``: each
                    table's rows per configuration (:func:`~actstore.evaluation.tables.row_counts`)
    results.csv     one row per configuration (layer, method, k, alpha): effects with intervals
                    (:class:`~actstore.evaluation.rows.ResultRow`)
    items.csv       one row per (configuration, scored item): layer, k, alpha, method, item,
                    question, order, score (+ the protocol's other per-item metrics: A/B
                    logodds); the unsteered rows have alpha 0, method "none", k "none" and no layer,
                    and (where the protocol has them) each item's question_text
    windows.csv     one row per (configuration, perplexity window): document, nll (nats, summed), tokens
    kl.csv          (``damage`` kl: settings ``damage`` "ppl,kl") one row per (configuration, KL
                    prompt): prompt_id, kl_first, kl (nats); the unsteered rows are 0 by definition;
                    the prompting baseline (method ``prompt``) has none
    judge.txt       (a judged sweep) the judge's validation summary, or that it was not validated
    generations.jsonl  (generation protocols) the generated texts per configuration

A configuration is done when its row is in results.csv. Its items, windows and KL rows are
appended before that row: rows of a configuration a kill left not done (or a results row cut
short) are dropped when the folder is opened again, and it is measured anew. Every figure of
results.csv can be recomputed from items.csv, windows.csv and kl.csv; a done configuration whose
rows in any of them were lost (damage, a cut file) is measured again: it has fewer rows than
baseline.json says every configuration has (:func:`~actstore.evaluation.tables.short_keys`), the
unsteered rows included (then measured again, the configurations done kept).

Files are written through :mod:`actstore.evaluation.files`: results.csv, baseline.json and the
report's files replaced whole in one rename; items.csv, windows.csv, kl.csv and generations.jsonl
appended to (a line a kill cut is ignored by readers and cut off by the next writer). A kill or a
full disk at any write leaves a folder the next run resumes (tests/contracts/test_sweep_killpoints.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from .files import append_file, claim_folder, drop_cut_line, remove_partials, replace_file
from .grid import family_of, is_prompt
from .intervals import bh_q_values
from .rows import (
    BASELINE,
    KEY,
    ItemRows,
    KLRows,
    ResultRow,
    WindowRows,
    as_record,
    columns,
    control_seed,
    item_metrics,
)
from .tables import config_key as _key
from .tables import expected_rows, header_columns, read_baseline, row_counts, row_keys, short_keys
from .tables import read_csv as _read_csv
from .tables import read_csv_salvaged as _read_csv_salvaged
from .tables import replace_csv as _replace_csv


def _read_as_today(settings, today: dict):  # positions 'generated' is 'response'; a folder older than
    if not isinstance(settings, dict):  # "store_data" (its store's identity) cannot say which store it read
        return settings
    return {**settings, **({"positions": "response"} if settings.get("positions") == "generated" else {}),
            **({"store_data": today["store_data"]} if "store_data" in today.keys() - settings.keys() else {})}




class Ledger:
    """Owns a sweep folder: baseline, results, per-item and per-window rows, resume."""

    def __init__(self, out_dir: str | Path, settings: dict, columns: list[str] | None = None,
                 readonly: bool = False):
        self.out_dir = Path(out_dir)
        claim_folder(self.out_dir, readonly)  # never rewrite files of these names that no sweep wrote
        self.settings = settings
        self.columns = list(columns) if columns is not None else _result_columns()
        self.results_csv, self.items_csv = self.out_dir / "results.csv", self.out_dir / "items.csv"
        self.windows_csv, self.kl_csv = self.out_dir / "windows.csv", self.out_dir / "kl.csv"
        self.measures_kl = "kl" in str(settings.get("damage", "ppl")).split(",")
        self.generations = self.out_dir / "generations.jsonl"
        self.baseline_file = self.out_dir / "baseline.json"
        self.separation_csv = self.out_dir / "separation.csv"
        self._separated: set[tuple[int, str, str]] | None = None
        baseline = read_baseline(self.baseline_file)
        measures = ("on_target_shift", "ppl_inflation")
        results, clean = (_read_csv(self.results_csv), True) if readonly else \
            _read_csv_salvaged(self.results_csv, ("alpha", *measures))
        if results is not None:
            results = results.dropna(subset=[c for c in measures if c in results])
        if baseline is not None and _read_as_today(baseline.get("settings"), settings) != settings:
            raise ActstoreError(
                f"{str(self.out_dir)!r} holds results of another setting ({baseline.get('settings')}); "
                f"this run's is {settings}; use a new --out folder"
            )
        if baseline is None and results is not None and len(results):
            raise ActstoreError(f"{str(self.out_dir)!r} holds results.csv but no baseline.json; "
                                "use a new --out folder")
        self.baseline = baseline
        self.done = set() if results is None else {_key(*row) for row in results[KEY].itertuples(index=False)}
        self.readonly = readonly
        if not readonly:  # a reader leaves a running sweep's files alone
            self._drop_unfinished(results, clean)

    def _keep(self, frame):
        """Rows of done configurations and, if the baseline is recorded, the unsteered ones."""
        keys = [(_key(r.layer, r.method, r.k, r.alpha) if r.method != "none" else "baseline")
                for r in frame[KEY].itertuples(index=False)]
        return frame[[key in self.done or (key == "baseline" and self.baseline is not None) for key in keys]]

    def _drop_unfinished(self, results, clean: bool = True) -> None:
        """Drop the rows of configurations not done, and measure again those whose rows damage
        took (lines that do not read, rows lost from a cut items.csv or windows.csv): only they
        are lost, never the folder."""
        remove_partials(self.out_dir)  # a kill's leftovers; this run is the folder's only writer
        for path in (self.items_csv, self.windows_csv, self.kl_csv, self.generations):
            drop_cut_line(path)  # the next append starts on a line of its own
        appended = [(self.items_csv, ("alpha", "score")), (self.windows_csv, ("alpha", "nll", "tokens"))]
        if self.measures_kl:
            appended.append((self.kl_csv, ("alpha", "kl_first", "kl")))
        tables = {path: _read_csv_salvaged(path, numeric) for path, numeric in appended}
        expected = set(self.done) | ({"baseline"} if self.baseline is not None else set())
        no_kl = {key for key in expected if key != "baseline" and is_prompt(key[1])}  # the prompting baseline's
        damaged = set().union(*(short_keys(frame, expected - no_kl if path == self.kl_csv else expected,
                                           expected_rows(self.baseline, path.name))
                                for path, (frame, _) in tables.items()))
        damaged |= self._separation_lost()
        if "baseline" in damaged:
            # The unsteered rows are measured again (the same model on the same items gives the same
            # figures; baseline.json is replaced when they are): the configurations done stay done.
            self.baseline = None
        self.done -= damaged
        if results is not None:  # columns added since the folder was written are empty in its old rows
            kept = results[[key in self.done for key in row_keys(results)]] if len(results) else results
            _replace_csv(kept.reindex(columns=list(self.columns)), self.results_csv)
        elif not clean:
            self.results_csv.unlink(missing_ok=True)
        for path, (frame, table_clean) in tables.items():
            if frame is None:
                if not table_clean:
                    path.unlink(missing_ok=True)
                continue
            kept = self._keep(frame)
            if len(kept) != len(frame) or not table_clean:
                _replace_csv(kept, path)
        if self.generations.exists():
            lines = [line for line in self.generations.read_text().splitlines() if line.strip()]
            kept_lines = []
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                key = "baseline" if record["method"] == "none" else _key(*[record[c] for c in KEY])
                if key in self.done or (key == "baseline" and self.baseline is not None):
                    kept_lines.append(line)
            if len(kept_lines) != len(lines):
                replace_file(self.generations, "".join(line + "\n" for line in kept_lines))

    def _separation_lost(self) -> set:
        """The configurations done whose vector lost its separation.csv row to damage (lines that do
        not read): measured again, which measures the vector's separation again too. The rows that
        read are kept."""
        if not self.separation_csv.exists():
            return set()
        frame, clean = _read_csv_salvaged(self.separation_csv, ("auroc", "cohens_d"), ("layer", "method", "k"))
        if clean:
            return set()
        kept = set() if frame is None else {(int(r.layer), str(r.method), str(r.k))
                                            for r in frame[["layer", "method", "k"]].itertuples(index=False)}
        if frame is None:
            self.separation_csv.unlink()
        else:
            _replace_csv(frame, self.separation_csv)
        return {key for key in self.done if key[:3] not in kept}

    @classmethod
    def open_existing(cls, out_dir: str | Path) -> Ledger:
        """A sweep folder as it is (its own settings), read-only, e.g. to rewrite its report
        while a sweep may still be appending to it."""
        baseline_file = Path(out_dir) / "baseline.json"
        if not baseline_file.is_file():
            raise ActstoreError(f"{str(out_dir)!r} is not a sweep folder (no baseline.json)")
        return cls(out_dir, read_baseline(baseline_file)["settings"], readonly=True)

    def is_done(self, layer: int, method: str, k: str, alpha: float) -> bool:
        return _key(layer, method, k, alpha) in self.done

    def _append_measures(self, items: ItemRows, windows: WindowRows, texts: list[str] | None,
                         kl_rows: KLRows | None = None) -> None:
        if self.measures_kl != (kl_rows is not None) and not (kl_rows is None and is_prompt(items.key.method)):
            raise ValueError(f"this folder's settings {'ask for' if self.measures_kl else 'have no'} KL rows")
        for path, rows in ((self.items_csv, items), (self.windows_csv, windows), (self.kl_csv, kl_rows)):
            if rows is None:
                continue
            header, frame = header_columns(path), rows.frame()
            if header is not None:  # a folder written before a column was added keeps its own columns
                frame = frame.reindex(columns=header)
            append_file(path, frame.to_csv(header=header is None, index=False))
        if texts is not None:
            key = items.key
            append_file(self.generations, "".join(
                json.dumps({"layer": None if key.layer != key.layer else key.layer, "method": key.method,
                            "k": key.k, "alpha": key.alpha, "item": item, "text": text}) + "\n"
                for item, text in zip(items.item, texts)))

    def record_baseline(self, items: ItemRows, windows: WindowRows, texts=None, kl_rows: KLRows | None = None,
                        **figures) -> dict:
        """The unsteered per-item, per-window and (``damage`` kl) per-prompt rows (key
        :data:`~actstore.evaluation.rows.BASELINE`), then baseline.json (the commit)."""
        if any(rows.key != BASELINE for rows in (items, windows, kl_rows) if rows is not None):
            raise ValueError("the baseline's rows carry the BASELINE key")
        self._append_measures(items, windows, texts, kl_rows)
        # each table's rows per configuration: a configuration (this one included) found short is measured again
        baseline = {"settings": self.settings, **figures, "rows": row_counts(items, windows, kl_rows)}
        replace_file(self.baseline_file, json.dumps(baseline, indent=2))
        self.baseline = baseline
        return self.baseline

    def baseline_measures(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The unsteered per-item metrics and per-window (nll, tokens), in item/window order."""
        items, windows = _read_csv(self.items_csv), _read_csv(self.windows_csv)
        items = items[items["method"] == "none"]
        windows = windows[windows["method"] == "none"].sort_values("window")
        metrics = item_metrics(items.columns)
        return ({m: items[m].to_numpy(dtype=np.float64) for m in metrics},
                windows["nll"].to_numpy(dtype=np.float64), windows["tokens"].to_numpy(dtype=np.int64))

    def record(self, row: ResultRow, items: ItemRows, windows: WindowRows, texts=None,
               kl_rows: KLRows | None = None) -> None:
        """One configuration: its items, windows and KL rows, then its results row (the commit)."""
        import pandas as pd

        record = as_record(row) if isinstance(row, ResultRow) else dict(row)
        self._append_measures(items, windows, texts, kl_rows)
        exists = self.results_csv.exists() and self.results_csv.stat().st_size > 0
        line = pd.DataFrame([record], columns=self.columns).to_csv(header=not exists, index=False)
        # The old bytes plus the row, renamed into place: a kill never leaves a cut row counted as done.
        replace_file(self.results_csv, (self.results_csv.read_bytes() if exists else b"") + line.encode())
        self.done.add(_key(record["layer"], record["method"], record["k"], record["alpha"]))

    def finish(self):
        """results.csv with its ``q_value`` column filled (Benjamini-Hochberg per behavior over
        every configuration done; the controls a family of their own), replaced whole; returns it."""
        results = self.results()
        if len(results) and not self.readonly:
            _replace_csv(results.reindex(columns=self.columns), self.results_csv)
        return results

    def results(self):
        import pandas as pd

        frame = _read_csv(self.results_csv)
        if frame is None:
            return pd.DataFrame(columns=self.columns)
        frame = frame.dropna(subset=["on_target_shift", "ppl_inflation"])  # a row cut by a kill
        if "p_value" in frame and "behavior" in frame:
            # q depends on the whole family: recomputed from the p-values whenever the table is read.
            # Controls (not hypotheses about the behavior) and the prompting baseline: families of their own.
            frame = frame.assign(q_value=np.nan)
            family = frame["method"].map(family_of)
            for _, rows in frame.groupby([frame["behavior"], family], sort=False):
                frame.loc[rows.index, "q_value"] = bh_q_values(rows["p_value"].to_numpy(dtype=np.float64))
        if "seed" in self.columns:  # derived from method: a folder written before the column gets it too
            frame = frame.assign(seed=frame["method"].map(control_seed).astype("Int64"))
        if "selected" in frame:  # like q, made again whenever read: it depends on every alpha of a vector
            from .selection import selected

            frame = frame.assign(selected=selected(frame, self.items()) if self.settings.get("select_split") else False)
        return frame

    def windows(self):
        """windows.csv, without the rows of a configuration not (yet) done."""
        frame = _read_csv(self.windows_csv)
        return None if frame is None else self._keep(frame)

    def items(self):
        """items.csv, without the rows of a configuration not (yet) done."""
        frame = _read_csv(self.items_csv)
        return None if frame is None else self._keep(frame)

    def kl(self):
        """kl.csv, without the rows of a configuration not (yet) done; None where the folder has none."""
        frame = _read_csv(self.kl_csv) if self.measures_kl else None
        return None if frame is None else self._keep(frame)

    def separation(self):
        """separation.csv (held-out AUROC and Cohen's d per vector), or None. The folder's writer
        keeps the rows that still read of a damaged one (those lost are measured again with their
        vector's next configuration)."""
        required = ("layer", "method", "k")
        if self.readonly:
            return _read_csv(self.separation_csv, required)
        return _read_csv_salvaged(self.separation_csv, ("auroc", "cohens_d"), required)[0]

    def is_separated(self, layer: int, method: str, k: str) -> bool:
        """Whether separation.csv has this vector (read once, then kept up to date by
        :meth:`record_separation`)."""
        if self._separated is None:
            frame = self.separation()
            rows = () if frame is None else frame[["layer", "method", "k"]].itertuples(index=False)
            self._separated = {(int(r.layer), str(r.method), str(r.k)) for r in rows}
        return (int(layer), str(method), str(k)) in self._separated

    def record_separation(self, row: dict) -> None:
        """Add (or replace) one vector's held-out separation; the file is replaced whole."""
        import pandas as pd

        frame = self.separation()
        new = pd.DataFrame([row])
        if frame is not None:
            same = ((frame["layer"] == row["layer"]) & (frame["method"] == row["method"])
                    & (frame["k"] == str(row["k"])))
            new = pd.concat([frame[~same], new], ignore_index=True)
        _replace_csv(new, self.separation_csv)
        if self._separated is not None:
            self._separated.add((int(row["layer"]), str(row["method"]), str(row["k"])))


def _result_columns() -> list[str]:
    return columns(ResultRow)

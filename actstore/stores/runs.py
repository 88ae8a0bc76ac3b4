"""Runs: one record per source file captured into a group, and the shards of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import StoreError
from .schema import SHARDS


@dataclass(frozen=True)
class RunRecord:
    """One capture of one source file into a group, as the group's ``runs`` attribute stores it.

    Its texts are ``text_index_offset ..`` in the group and its pair ids start at
    ``pair_id_offset``; ``texts_done`` of ``n_texts`` are committed. A run captured in
    shards (``--shard i/n`` or a cluster) has ``shards`` and ``merged`` (how many of
    them are in the group so far).
    """

    run: int
    source: str
    source_sha256: str
    settings: dict[str, Any]
    n_texts: int
    texts_done: int = 0
    complete: bool = False
    text_index_offset: int = 0
    pair_id_offset: int = 0
    shards: int | None = None
    merged: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer versions, kept as they are

    @classmethod
    def from_attrs(cls, record: dict[str, Any]) -> RunRecord:
        known = {k: record[k] for k in _KEYS if k in record}
        return cls(**known, extra={k: v for k, v in record.items() if k not in _KEYS})

    def to_attrs(self) -> dict[str, Any]:
        record = {k: v for k, v in asdict(self).items() if k != "extra"}
        if self.shards is None:
            del record["shards"], record["merged"]
        return {**record, **self.extra}

    def matches(self, source_sha256: str, settings: dict[str, Any]) -> bool:
        """Same file contents and same settings."""
        return self.source_sha256 == source_sha256 and self.settings == settings

    def advanced(self, texts_done: int, **changes) -> RunRecord:
        return replace(self, texts_done=texts_done, complete=texts_done >= self.n_texts, **changes)

    @property
    def state(self) -> str:
        """``complete``, ``sharded`` (shards still to merge) or ``interrupted`` (rerun with resume)."""
        if self.complete:
            return "complete"
        return "sharded" if self.shards else "interrupted"

    def to_resume(self) -> str:
        """How to finish it, for messages."""
        return f"its {self.shards} shards (--shard i/n)" if self.shards else "that capture with --resume"


_KEYS = ("run", "source", "source_sha256", "settings", "n_texts", "texts_done", "complete", "text_index_offset",
         "pair_id_offset", "shards", "merged")


def read_runs(group) -> list[RunRecord]:
    return [RunRecord.from_attrs(r) for r in group.attrs.get("runs", [])]


def runs_attr(runs: list[RunRecord]) -> list[dict[str, Any]]:
    return [r.to_attrs() for r in runs]


def shard_bounds(n_texts: int, index: int, count: int) -> tuple[int, int]:
    """Texts ``[lo, hi)`` of shard ``index`` of ``count``: contiguous, sizes differing by at most one."""
    if not (count >= 1 and 0 <= index < count):
        raise StoreError(f"shard {index}/{count}: expected 0 <= i < n, e.g. 0/4 .. 3/4")
    if n_texts and count > n_texts:  # n_texts=0: the check before the input is read
        raise StoreError(f"shard {index}/{count}: {count} shards of {n_texts} texts would leave shards empty; "
                         f"use at most {n_texts} shards", param="shard")
    return n_texts * index // count, n_texts * (index + 1) // count


def staging_leaf(run: int, index: int, count: int) -> str:
    return f"run{run}-{index}of{count}"


def staging_group_name(group_name: str, run: int, index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` of run ``run`` stages its rows."""
    return f"{group_name}/{SHARDS}/{staging_leaf(run, index, count)}"

"""Where capture reads in each text: one :class:`Position` value.

  ``last``    the last real (non-pad) token of each text, whatever the padding side;
              ``last-N`` (offset N) the token N before it, e.g. the answer letter of ``... (A)``;
  ``mean``    the mean over the real tokens of each text;
  ``all``     every real token, one row each, with its token index.

A position is a name (what a store records), how many rows a text gives, and how those rows are
read out of a block's output. Each kind is one entry of :data:`_KINDS`: a new position is a
reducer function and an entry there, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputFormatError

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (rows, row_batch, row_token)


def _real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.long().cumsum(-1) - 1  # token index among real tokens


def _last(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int) -> Rows:
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    seq_positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = torch.where(attention_mask.bool(), seq_positions, -1).max(dim=-1).values - offset
    return hidden[batch, last].float(), batch, _real_index(attention_mask)[batch, last]


def _mean(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int) -> Rows:
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    weights = attention_mask.to(torch.float32).unsqueeze(-1)
    rows = (hidden.float() * weights).sum(1) / weights.sum(1)
    return rows, batch, torch.full_like(batch, -1)


def _all(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int) -> Rows:
    mask = attention_mask.bool()
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    row_example = batch.unsqueeze(1).expand_as(mask)[mask]
    return hidden[mask].float(), row_example, _real_index(attention_mask)[mask]


@dataclass(frozen=True)
class _Kind:
    """What a kind of position does: its reducer, whether it gives a row per token (else one per
    text), whether it takes an offset, and the texts per commit it suits."""

    reduce: Callable[[torch.Tensor, torch.Tensor, int], Rows]
    row_per_token: bool = False
    takes_offset: bool = False
    window: int = 512


_KINDS = {
    "last": _Kind(_last, takes_offset=True),
    "mean": _Kind(_mean),
    "all": _Kind(_all, row_per_token=True, window=64),  # many rows per text: commit more often
}
POSITIONS = tuple(_KINDS)


@dataclass(frozen=True)
class Position:
    """A capture position: ``kind`` (:data:`POSITIONS`) and, for ``last``, the ``offset`` back from
    the last real token. ``Position.parse("last-1")`` reads what a store records (:attr:`name`)."""

    kind: str = "last"
    offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputFormatError(f"position={self.kind!r}: expected one of {', '.join(POSITIONS)}",
                                   param="position")
        if not isinstance(self.offset, int) or self.offset < 0 or (self.offset and not _KINDS[self.kind].takes_offset):
            raise InputFormatError(f"offset={self.offset}: must be >= 0 and is only for position last",
                                   param=("offset", "position"))

    @classmethod
    def parse(cls, name: str) -> Position:
        """The position a store records as ``name`` (``last``, ``last-N``, ``mean``, ``all``)."""
        kind, _, offset = str(name).partition("-")
        if kind not in _KINDS or (offset and (not _KINDS[kind].takes_offset or not offset.isdigit())):
            raise InputFormatError(f"position {name!r} is not one a store records (last, last-N, mean, all)")
        return cls(kind, int(offset) if offset else 0)

    @property
    def name(self) -> str:
        """As a store records it: ``last``, ``last-1``, ``mean``, ``all``."""
        return f"{self.kind}-{self.offset}" if self.offset else self.kind

    @property
    def takes_offset(self) -> bool:
        """Whether an offset back from the last token means anything here (the A/B answer letter)."""
        return _KINDS[self.kind].takes_offset

    def __str__(self) -> str:
        return self.name

    def rows(self, n_tokens: int) -> int:
        """Rows a text of ``n_tokens`` real tokens gives."""
        return n_tokens if _KINDS[self.kind].row_per_token else 1

    @property
    def codec(self) -> str:
        """The ``auto`` codec of a new group at this position: ``lz4`` where every token is a row
        (texts sharing a prompt compress 1.6x), else ``none`` (1.04x: not worth half the read speed)."""
        return "lz4" if _KINDS[self.kind].row_per_token else "none"

    def window(self, hint: int) -> int:
        """Texts per commit: small enough that an interruption loses seconds of work, large enough
        that a commit (a rewrite of one partly filled chunk) is cheap; ``hint``: the store's."""
        return min(hint, _KINDS[self.kind].window)

    def check_tokens(self, n_tokens: int, where: str) -> None:
        """Refuse a text too short for this position (``last-N`` needs more than N tokens)."""
        if self.takes_offset and n_tokens <= self.offset:
            raise InputFormatError(f"{where}: text has {n_tokens} token(s); offset={self.offset} needs more",
                                   param="offset")

    def reduce(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Rows:
        """Rows out of ``hidden: (batch, seq, hidden)``: ``(rows (n_rows, hidden) float32, the batch
        index of each row, its token index among the real tokens (-1 for mean))``."""
        return _KINDS[self.kind].reduce(hidden, attention_mask, self.offset)


def reduce_positions(hidden: torch.Tensor, attention_mask: torch.Tensor, position: str, offset: int = 0) -> Rows:
    """``Position(position, offset).reduce(hidden, attention_mask)`` (the earlier spelling)."""
    return Position(position, offset).reduce(hidden, attention_mask)

"""Where capture reads in each text: one :class:`Position` value.

  ``last``    the last real (non-pad) token of each text, whatever the padding side;
              ``last-N`` (offset N) the token N before it, e.g. the answer letter of ``... (A)``;
  ``mean``    the mean over the real tokens of each text;
  ``all``     every real token, one row each, with its token index (and, for chat exchanges, its
              role: system, user, assistant or template, and its place in the response);

and, for chat exchanges (a prompt and a response, :mod:`actstore.inputs.chat`), relative to the turns:

  ``prompt-last``    the last token before the assistant's response starts (the end of the
                     generation prompt: what the model reads just before it answers);
  ``response-mean``  the mean over the assistant's tokens;
  ``response-all``   every assistant token, one row each.

These read each token's role (``roles: (batch, seq)`` codes of :data:`actstore.inputs.chat.ROLES`,
-1 at padding), carried from the planning with the texts.

A position is a name (what a store records), how many rows a text gives, and how those rows are
read out of a block's output. Each kind is one entry of :data:`_KINDS`: a new position is a
reducer function and an entry there, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputFormatError
from ..inputs.chat import ASSISTANT

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (rows, row_batch, row_token)


def _real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.long().cumsum(-1) - 1  # token index among real tokens


def _last(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    seq_positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = torch.where(attention_mask.bool(), seq_positions, -1).max(dim=-1).values - offset
    return hidden[batch, last].float(), batch, _real_index(attention_mask)[batch, last]


def _mean(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    weights = attention_mask.to(torch.float32).unsqueeze(-1)
    rows = (hidden.float() * weights).sum(1) / weights.sum(1)
    return rows, batch, torch.full_like(batch, -1)


def _all(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    mask = attention_mask.bool()
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    row_example = batch.unsqueeze(1).expand_as(mask)[mask]
    return hidden[mask].float(), row_example, _real_index(attention_mask)[mask]


def _in_response(attention_mask: torch.Tensor, roles: torch.Tensor | None) -> torch.Tensor:
    if roles is None:
        raise InputFormatError("this position reads the assistant's response: capture chat exchanges (records with "
                               "'prompt' and 'response', or --respond)", param="position")
    return (roles == ASSISTANT) & attention_mask.bool()


def _prompt_last(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    first = _in_response(attention_mask, roles).int().argmax(dim=-1)  # the first assistant token
    return hidden[batch, first - 1].float(), batch, _real_index(attention_mask)[batch, first - 1]


def _response_mean(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    return _mean(hidden, _in_response(attention_mask, roles), offset)


def _response_all(hidden: torch.Tensor, attention_mask: torch.Tensor, offset: int, roles=None) -> Rows:
    mask = _in_response(attention_mask, roles)
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[mask].float(), batch.unsqueeze(1).expand_as(mask)[mask], _real_index(attention_mask)[mask]


@dataclass(frozen=True)
class _Kind:
    """What a kind of position does: its reducer, whether it gives a row per token (else one per
    text), whether it takes an offset, and the texts per commit it suits."""

    reduce: Callable[..., Rows]
    row_per_token: bool = False
    takes_offset: bool = False
    window: int = 512
    reads_response: bool = False  # needs each token's role, and a response in every text


_KINDS = {
    "last": _Kind(_last, takes_offset=True),
    "mean": _Kind(_mean),
    "all": _Kind(_all, row_per_token=True, window=64),  # many rows per text: commit more often
    "prompt-last": _Kind(_prompt_last, reads_response=True),
    "response-mean": _Kind(_response_mean, reads_response=True),
    "response-all": _Kind(_response_all, row_per_token=True, window=64, reads_response=True),
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
        if name in _KINDS and not _KINDS[name].takes_offset:
            return cls(name)
        kind, _, offset = str(name).partition("-")
        if kind not in _KINDS or (offset and (not _KINDS[kind].takes_offset or not offset.isdigit())):
            raise InputFormatError(f"position {name!r} is not one a store records (last, last-N, "
                                   f"{', '.join(POSITIONS[1:])})")
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

    @property
    def per_token(self) -> bool:
        """Whether each token read is a row of its own (``all``, ``response-all``)."""
        return _KINDS[self.kind].row_per_token

    @property
    def reads_response(self) -> bool:
        """Whether it reads relative to the assistant's response (needs each token's role)."""
        return _KINDS[self.kind].reads_response

    def rows(self, n_tokens: int, roles: np.ndarray | None = None) -> int:
        """Rows a text of ``n_tokens`` real tokens (their ``roles``) gives."""
        if not _KINDS[self.kind].row_per_token:
            return 1
        return int((roles == ASSISTANT).sum()) if self.reads_response else n_tokens

    @property
    def codec(self) -> str:
        """The ``auto`` codec of a new group at this position: ``lz4`` where every token is a row
        (texts sharing a prompt compress 1.6x), else ``none`` (1.04x: not worth half the read speed)."""
        return "lz4" if _KINDS[self.kind].row_per_token else "none"

    def window(self, hint: int) -> int:
        """Texts per commit: small enough that an interruption loses seconds of work, large enough
        that a commit (a rewrite of one partly filled chunk) is cheap; ``hint``: the store's."""
        return min(hint, _KINDS[self.kind].window)

    def check_tokens(self, n_tokens: int, where: str, roles: np.ndarray | None = None) -> None:
        """Refuse a text too short for this position (``last-N`` needs more than N tokens; a position
        relative to the response, a response and a token before it)."""
        if self.takes_offset and n_tokens <= self.offset:
            raise InputFormatError(f"{where}: text has {n_tokens} token(s); offset={self.offset} needs more",
                                   param="offset")
        if self.reads_response:
            if roles is None:
                _in_response(None, None)
            in_response = np.flatnonzero(roles == ASSISTANT)
            if not len(in_response) or in_response[0] == 0:
                raise InputFormatError(f"{where}: position {self.kind} needs a response and a token before it; this "
                                       "text has none left (an empty response, or the prompt cut by max_length)",
                                       param="position")

    def reduce(self, hidden: torch.Tensor, attention_mask: torch.Tensor, roles: torch.Tensor | None = None) -> Rows:
        """Rows out of ``hidden: (batch, seq, hidden)``: ``(rows (n_rows, hidden) float32, the batch
        index of each row, its token index among the real tokens (-1 for mean))``. ``roles: (batch,
        seq)`` each token's role code (-1 at padding), for the positions relative to the response."""
        return _KINDS[self.kind].reduce(hidden, attention_mask, self.offset, roles)


def reduce_positions(hidden: torch.Tensor, attention_mask: torch.Tensor, position: str, offset: int = 0) -> Rows:
    """``Position(position, offset).reduce(hidden, attention_mask)`` (the earlier spelling)."""
    return Position(position, offset).reduce(hidden, attention_mask)

"""Texts -> activations, window by window: tokenize, batch by length, run the model to the
deepest block, read each text's rows where its :class:`~.positions.Position` says.

No storage knowledge here: a :class:`WindowReader` yields numpy arrays (or tensors) that a
store writer, or anything else, consumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..errors import ActstoreError, InputFormatError
from ..inputs.chat import ASSISTANT
from ..models.hooks import forward_blocks
from ..models.load import input_device
from .options import CaptureOptions


class CaptureError(ActstoreError, RuntimeError):
    """The model produced activations that cannot be stored (NaN/Inf)."""


@dataclass
class Window:
    """Activations of the examples ``start .. stop-1``, in example order.

    ``acts: (rows, layer, hidden) float32`` (numpy, or a torch tensor on the
    model's device with ``as_tensors``); ``row_example: (rows,)`` index of
    each row's example (absolute, into the full list); ``row_token: (rows,)``
    token index among the real tokens (``-1`` for ``mean``). Where the texts' token roles were
    given (chat exchanges): ``row_role: (rows,) int8``, the role code of each row's token
    (:data:`actstore.inputs.chat.ROLES`; -1 for a mean) and ``row_response: (rows,) int64`` its
    place in the response (-1 outside it and for a mean); else None.
    """

    start: int
    stop: int
    acts: np.ndarray | torch.Tensor
    row_example: np.ndarray
    row_token: np.ndarray
    n_tokens: int
    row_role: np.ndarray | None = None
    row_response: np.ndarray | None = None


def tokenize(tokenizer, texts: Sequence[str], where: Sequence[str], max_length: int | None,
             add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each text (no padding). Empty results are refused; texts
    longer than ``max_length`` keep their last ``max_length`` tokens (warning)."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    truncated = 0
    for i, ids in enumerate(encoded):
        if not ids:
            raise InputFormatError(f"{where[i]}: text tokenizes to nothing: {texts[i]!r}")
        if max_length is not None and len(ids) > max_length:
            # Keep the end: the last token is what 'last' captures.
            encoded[i] = ids[-max_length:]
            truncated += 1
    if truncated:
        warnings.warn(f"{truncated} text(s) longer than {max_length} tokens were truncated to their last "
                      f"{max_length} tokens (max_length)", stacklevel=2)
    return encoded


@dataclass(frozen=True)
class WindowReader:
    """Reads texts through one model: its ``model``, ``tokenizer`` and decoder ``blocks``, at
    ``layers`` (sorted), as ``options`` say (position, batch size, site, ...)."""

    model: torch.nn.Module
    tokenizer: object
    blocks: torch.nn.ModuleList
    layers: tuple[int, ...]
    options: CaptureOptions
    # The window buffer kept between windows when the caller reads them one at a time (``reuse``).
    _scratch: dict = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def device(self) -> torch.device:
        return input_device(self.model)

    def _rows_buffer(self, shape: tuple[int, ...], like: torch.Tensor, reuse: bool) -> torch.Tensor:
        """A ``shape`` tensor for a window's rows (``like``'s dtype and device). With ``reuse`` one
        buffer serves every window (grown when a window needs more): a fresh buffer of a few hundred
        MB is new pages from the kernel every window (tens of thousands of page faults per 64 texts
        at every layer and token, measured), which a bare forward pass never pays."""
        if not reuse:
            return like.new_empty(shape)
        need = int(np.prod(shape))
        buffer = self._scratch.get("rows")
        if buffer is None or buffer.numel() < need or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = like.new_empty(need + need // 4)  # headroom: windows differ in length
            self._scratch["rows"] = buffer
        return buffer[:need].view(shape)

    def windows(self, texts: Sequence[str], *, where: Sequence[str] | None = None, start: int = 0,
                add_special_tokens: bool = True, on_batch: Callable[[int, int], None] | None = None,
                as_tensors: bool = False, roles: Sequence[np.ndarray] | None = None,
                reuse: bool = False) -> Iterator[Window]:
        """Capture ``texts[start:]`` window by window (``options.window`` texts each, 256 if unset).

        Within a window texts are batched by length (less padding); rows come out in example
        order. ``on_batch(n_texts, n_tokens)`` is called after every batch (progress bars). With
        ``as_tensors`` the windows' ``acts`` stay torch tensors on the model's device. ``roles``:
        each text's token roles (:attr:`actstore.inputs.chat.ChatTokens.roles`), for chat exchanges.
        ``reuse``: every window's ``acts`` are views of one buffer, valid until the next window is
        asked for (a caller that consumes each window before the next, as capture does when it
        writes in line)."""
        size = self.options.window or 256
        # Not copied: texts and where may be lazy columns of a large source (actstore.inputs.sources).
        where = where if where is not None else [f"text {i + 1}" for i in range(len(texts))]
        for first in range(start, len(texts), size):
            stop = min(first + size, len(texts))
            yield self.window(texts[first:stop], where[first:stop], first, add_special_tokens, on_batch, as_tensors,
                              None if roles is None else roles[first:stop], reuse)

    def window(self, texts, where, first: int, add_special_tokens: bool = True, on_batch=None,
               as_tensors: bool = False, roles: Sequence[np.ndarray] | None = None, reuse: bool = False) -> Window:
        """One window: ``texts`` (examples ``first ..``) as a :class:`Window`."""
        at, where = self.options.at, list(where)
        ids = tokenize(self.tokenizer, list(texts), where, self.options.max_length, add_special_tokens)
        roles = None if roles is None else _aligned_roles(roles, ids, where)
        for i, (token_ids, place) in enumerate(zip(ids, where)):
            at.check_tokens(len(token_ids), place, None if roles is None else roles[i])
        # Rows go straight to their place in example order: one scatter per batch into a buffer of
        # the window (its size is known from the token counts), one copy off the device per window.
        counts = np.array([at.rows(len(token_ids), None if roles is None else roles[i])
                           for i, token_ids in enumerate(ids)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        token_rows = torch.empty(int(offsets[-1]), dtype=torch.int64, device=self.device)
        buffer: list[torch.Tensor] = []  # the window's (rows, layer, hidden) buffer, made at the first rows
        n_tokens = 0
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for b in range(0, len(order), self.options.batch_size):
            members = order[b : b + self.options.batch_size]
            # Rows of a batch come in batch order, each example's in token order.
            dest = torch.from_numpy(np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members]))
            dest = dest.to(self.device)

            def write(j: int, rows: torch.Tensor, dest=dest) -> None:  # each layer's rows to their place as it runs
                if not buffer:
                    buffer.append(self._rows_buffer((int(offsets[-1]), len(self.layers), rows.shape[-1]), rows, reuse))
                buffer[0][dest, j] = rows

            row_token, batch_tokens = self._batch([ids[i] for i in members], [where[i] for i in members],
                                                  None if roles is None else [roles[i] for i in members], write)
            token_rows[dest] = row_token
            n_tokens += batch_tokens
            if on_batch is not None:
                on_batch(len(members), batch_tokens)
        example_rows = np.repeat(np.arange(first, first + len(ids), dtype=np.int64), counts)
        acts_out = buffer[0] if as_tensors else buffer[0].cpu().numpy()
        window = Window(first, first + len(ids), acts_out, example_rows, token_rows.cpu().numpy(), n_tokens)
        if roles is not None:
            window.row_role, window.row_response = _row_roles(roles, example_rows - first, window.row_token)
        return window

    def _batch(self, batch_ids: list[list[int]], where: Sequence[str], batch_roles: list[np.ndarray] | None,
               write: Callable[[int, torch.Tensor], None]) -> tuple[torch.Tensor, int]:
        """One padded forward pass: each captured layer's rows ``(rows, hidden)`` handed to ``write(j,
        rows)`` (``j``: the layer's place in :attr:`layers`) as its block runs, every row finite (else
        :class:`CaptureError` naming the text); returns ``(row_token, real tokens)``."""
        padded = self.tokenizer.pad({"input_ids": batch_ids}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        attention_mask = padded["attention_mask"].to(self.device)
        roles = None
        if batch_roles is not None:  # real tokens are contiguous in each row: filled in row-major order
            roles = torch.full(attention_mask.shape, -1, dtype=torch.int8, device=self.device)
            roles[attention_mask.bool()] = torch.from_numpy(np.concatenate(batch_roles)).to(self.device)
        at, place, found = self.options.at, {layer: j for j, layer in enumerate(self.layers)}, []

        def reduce(layer: int, hidden: torch.Tensor) -> None:
            # With a device map, blocks sit on several devices: rows are gathered where the inputs are.
            rows, row_batch, row_token = at.reduce(hidden.to(self.device), attention_mask, roles)
            finite = torch.isfinite(rows).all(dim=1)
            if not bool(finite.all()):
                bad = int(row_batch[~finite][0])
                raise CaptureError(f"{where[bad]}: non-finite activation (NaN/Inf) at a captured layer; with dtype "
                                   "float16 this is usually overflow: use bfloat16 or float32", param="dtype")
            write(place[layer], rows)
            found[:] = [row_token]

        forward_blocks(self.model, self.blocks, input_ids, attention_mask, self.layers, self.options.stop_early,
                       self.options.site, on_output=reduce)
        return found[0], int(attention_mask.sum())


def _aligned_roles(roles: Sequence[np.ndarray], ids: list[list[int]], where: Sequence[str]) -> list[np.ndarray]:
    """Each text's roles cut as its tokens were (a text over max_length keeps its last tokens)."""
    aligned = []
    for text_roles, token_ids, place in zip(roles, ids, where):
        if len(text_roles) < len(token_ids):
            raise ActstoreError(f"{place}: {len(text_roles)} token roles for {len(token_ids)} tokens (the roles were "
                                "computed with another tokenizer or other special tokens)")
        aligned.append(np.asarray(text_roles[len(text_roles) - len(token_ids):], dtype=np.int8))
    return aligned


def _row_roles(roles: list[np.ndarray], row_text: np.ndarray, row_token: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's role code and place in the response (-1 for a row that is no one token: a mean)."""
    if not roles:
        return np.zeros(0, np.int8), np.zeros(0, np.int64)
    flat = np.concatenate(roles)
    response = np.concatenate([np.where(r == ASSISTANT, np.cumsum(r == ASSISTANT) - 1, -1) for r in roles])
    starts = np.cumsum([0] + [len(r) for r in roles[:-1]]).astype(np.int64)
    single = row_token >= 0
    index = starts[row_text] + np.where(single, row_token, 0)
    return np.where(single, flat[index], -1).astype(np.int8), np.where(single, response[index], -1).astype(np.int64)


_READING = ("where", "start", "add_special_tokens", "on_batch", "as_tensors", "roles")


def iter_windows(model: torch.nn.Module, tokenizer, blocks: torch.nn.ModuleList, texts: Sequence[str],
                 layers: Sequence[int], options: CaptureOptions | None = None, **keywords) -> Iterator[Window]:
    """``WindowReader(model, tokenizer, blocks, layers, options).windows(texts, ...)``.

    ``keywords``: those of :meth:`WindowReader.windows` (``where``, ``start``,
    ``add_special_tokens``, ``on_batch``, ``as_tensors``) and option fields by name
    (``position="all", batch_size=4``; ``last_offset`` is ``offset``)."""
    reading = {name: keywords.pop(name) for name in _READING if name in keywords}
    if "last_offset" in keywords:
        keywords["offset"] = keywords.pop("last_offset")
    unknown = sorted(set(keywords) - CaptureOptions.field_names())
    if unknown:
        raise TypeError(f"iter_windows() got unexpected keyword argument(s) {unknown}")
    options = (options or CaptureOptions()).replace(**keywords)
    return WindowReader(model, tokenizer, blocks, tuple(sorted(layers)), options).windows(texts, **reading)

"""One vLLM engine step: which of its rows get which edit, and the edits made to those rows only.

vLLM flattens a step's requests into one ``(tokens, hidden)`` batch: rows ``start:stop`` hold one
request's tokens of this step (:class:`StepTokens`). :func:`steered_rows` picks each steered
request's rows by :meth:`Positions.selects <actstore.steering.Positions.selects>`, the rule of
actstore's own hooks; :func:`plan_step` gathers what each hooked module does to them
(:class:`SlotSteering`): additions as two scatters however many vectors the step holds
(:class:`LayerAddition`, :func:`add_to_rows`), projections and clamps as a
:class:`~actstore.steering.DirectionEdit` applied to its rows (:func:`edit_rows`), one per distinct
(vector, alpha). An unsteered request's rows are never touched. No vLLM import: the plugin's
worker uses this, and tests check it against :func:`actstore.steering.steer` without an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..steering import DirectionEdit, Positions


@dataclass(frozen=True)
class StepTokens:
    """One steered request's tokens in a step: rows ``start:stop`` of the flattened batch hold
    the tokens at positions ``first, first + 1, ...`` of its sequence, whose first
    ``prompt_length`` are its prompt; ``positions``: the request's ``actstore_positions``."""

    positions: Positions
    start: int
    stop: int
    first: int
    prompt_length: int


def steered_rows(requests: Sequence[StepTokens]) -> list[np.ndarray]:
    """For each request, the rows (int64 numpy) that get its vector: those whose tokens
    :meth:`Positions.selects <actstore.steering.Positions.selects>` picks, the rule of actstore's
    own hooks, called once per distinct ``positions`` of the step, not once per request."""
    by_spec: dict[str, list[int]] = {}
    for number, request in enumerate(requests):
        by_spec.setdefault(str(request.positions), []).append(number)
    rows: list = [None] * len(requests)
    for members in by_spec.values():
        spans = [requests[i] for i in members]
        counts = [span.stop - span.start for span in spans]
        index = np.concatenate([np.arange(s.first, s.first + n) for s, n in zip(spans, counts)]).astype(np.int64)
        is_prompt = index < np.repeat([span.prompt_length for span in spans], counts)
        chosen = spans[0].positions.selects(torch.from_numpy(index), torch.from_numpy(is_prompt)).numpy()
        offsets = np.cumsum([0, *counts])
        for number, span, low, high in zip(members, spans, offsets[:-1], offsets[1:]):
            rows[number] = span.start + np.flatnonzero(chosen[low:high])
    return rows


class LayerAddition:
    """What one step adds at one hooked module. Dense vectors: ``dense_rows`` (R,) and their rows of
    ``alpha * v`` (R, hidden), one ``index_add``. Sparse vectors: flat (row, kept coordinate)
    positions and values, one ``index_add`` over exactly the kept coordinates. Two scatters per
    module however many distinct vectors the batch holds."""

    def __init__(self, dense_rows, dense_values, sparse_rows, sparse_columns, sparse_values):
        self.dense_rows, self.dense_values = dense_rows, dense_values
        self.sparse_rows, self.sparse_columns, self.sparse_values = sparse_rows, sparse_columns, sparse_values

    @classmethod
    def merge(cls, groups, device) -> LayerAddition:
        """``groups``: [(rows (n,) numpy, indices (k,) | None, values (k,) or (hidden,))], the
        tensors of :meth:`VectorAddition.tensors <actstore.steering.VectorAddition.tensors>`."""
        dense_rows, dense_values, sparse_rows, sparse_columns, sparse_values = [], [], [], [], []
        for rows, indices, values in groups:
            rows_t = torch.from_numpy(rows).to(device)
            if indices is None:
                dense_rows.append(rows_t)
                dense_values.append(values.expand(len(rows), -1))
            elif len(indices):
                sparse_rows.append(rows_t.repeat_interleave(len(indices)))
                sparse_columns.append(indices.repeat(len(rows)))
                sparse_values.append(values.repeat(len(rows)))

        def cat(parts):
            return torch.cat(parts) if parts else None

        return cls(cat(dense_rows), cat(dense_values), cat(sparse_rows), cat(sparse_columns), cat(sparse_values))


def add_to_rows(hidden: torch.Tensor, addition: LayerAddition) -> torch.Tensor:
    """``hidden`` (tokens, hidden) plus ``addition``; a new tensor, the layer's own output untouched."""
    out = hidden.clone()
    if addition.dense_rows is not None:
        out.index_add_(0, addition.dense_rows, addition.dense_values.to(out.dtype))
    if addition.sparse_rows is not None:
        flat = addition.sparse_rows * out.shape[-1] + addition.sparse_columns
        out.view(-1).index_add_(0, flat, addition.sparse_values.to(out.dtype))
    return out


def edit_rows(out: torch.Tensor, rows: torch.Tensor, edit: DirectionEdit,
              residual: torch.Tensor | None = None) -> None:
    """Apply ``edit`` (:meth:`DirectionEdit.apply <actstore.steering.DirectionEdit.apply>`) to the
    rows ``rows`` (int64) of ``out`` (tokens, hidden), in place. With ``residual`` (a vLLM decoder
    layer's split: the residual stream is ``out + residual``) the edit reads the stream and its
    change goes to ``out``, so the stream changes as steer changes it."""
    picked = out[rows]
    if residual is None:
        out[rows] = edit.apply(picked, None)
        return
    # At least float32: the change is the difference of two streams, and in bfloat16 it would
    # lose the digits the stream's size takes.
    work = torch.promote_types(out.dtype, torch.float32)
    stream = picked.to(work) + residual[rows].to(work)
    out[rows] = (picked.to(work) + (edit.apply(stream, None) - stream)).to(out.dtype)


@dataclass(frozen=True)
class SlotSteering:
    """What one step does at one hooked module: ``addition`` (None when no request adds there) and
    ``directions``: [(rows (R,) int64, DirectionEdit)], one per distinct (vector, alpha)."""

    addition: LayerAddition | None
    directions: tuple[tuple[torch.Tensor, DirectionEdit], ...]

    def apply(self, hidden: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden`` (tokens, hidden) steered, a new tensor; ``residual``: see :func:`edit_rows`
        (an addition to ``hidden`` is one to the stream already)."""
        out = hidden.clone() if self.addition is None else add_to_rows(hidden, self.addition)
        for rows, edit in self.directions:
            edit_rows(out, rows, edit, residual)
        return out


def plan_step(requests: Sequence[tuple], rows: Sequence[np.ndarray], device) -> dict[int, SlotSteering]:
    """Hooked module (slot) -> what this step does there. ``requests``: ``(key, slots, edit)`` per
    steered request: its payload's key, the slots it edits and its edit (``(indices, values)``
    tensors of :meth:`VectorAddition.tensors <actstore.steering.VectorAddition.tensors>` or a
    :class:`~actstore.steering.DirectionEdit`); ``rows``: its rows (:func:`steered_rows`)."""
    additions: dict[int, list] = {}
    directions: dict[int, dict[str, tuple[DirectionEdit, list]]] = {}
    for (key, slots, edit), picked in zip(requests, rows):
        if not len(picked):
            continue
        for slot in slots:
            if isinstance(edit, DirectionEdit):
                directions.setdefault(slot, {}).setdefault(key, (edit, []))[1].append(picked)
            else:
                additions.setdefault(slot, []).append((picked, *edit))
    plan = {}
    for slot in additions.keys() | directions.keys():
        addition = LayerAddition.merge(additions[slot], device) if slot in additions else None
        edits = tuple((torch.from_numpy(np.concatenate(parts)).to(device), edit)
                      for edit, parts in directions.get(slot, {}).values())
        plan[slot] = SlotSteering(addition, edits)
    return plan

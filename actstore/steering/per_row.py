"""Per-row steering: one configuration per batch row, so that several configurations are measured
in one batch (the sweep's packing, :mod:`actstore.evaluation.packing`).

``with steer_rows(model, [(v1, 4.0), None, RowSteering(v2, 8.0, "response")]): model(ids)`` gives
row 0 what ``steer(model, v1, 4.0)`` gives it, row 1 nothing, row 2 what ``steer(model, v2, 8.0,
positions="response")`` gives it: the same edits (:func:`~actstore.steering.core.vector_addition`,
:class:`~actstore.steering.core.DirectionEdit`, added by the same ``_add``) at the tokens
:meth:`Positions.selects <actstore.steering.core.Positions.selects>` picks, the rule of ``steer``
and of the vLLM plugin. A module's additions for all rows are one ``(batch, hidden)`` tensor,
added once per pass (``0 + v`` is ``v``: each row's sums are those ``steer``'s ``index_add``
makes); a projection or clamp is applied once per distinct (vector, alpha), weighted 0 in the
other rows. Every pass must hold exactly one row per entry: a batch of twice the rows is refused,
not steered by a guess.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import VectorError
from ..models.blocks import find_decoder_blocks, text_config
from ..models.load import LoadedModel
from ..vectors.vector import SteeringVector, validate_vector
from .core import DirectionEdit, Positions, _add, _additions, _hooked, _output_hook, _PassState


@dataclass(frozen=True)
class RowSteering:
    """One batch row's configuration in :func:`steer_rows`: ``alpha * vector`` (or its operator)
    at the tokens ``positions`` picks (None: the context's ``positions``)."""

    vector: SteeringVector
    alpha: float = 1.0
    positions: str | Positions | torch.Tensor | np.ndarray | None = None


def _row_edits(model, blocks, rows: list, sparse: bool) -> dict:
    """Module -> ``(delta, directions)``: the rows' additions as one ``(batch, hidden)`` tensor (None
    where no row adds; zero in rows that add nothing) and ``[(DirectionEdit, rows (batch,) bool)]``,
    each distinct (vector, alpha) built once by :func:`_additions`."""
    param, hidden = next(model.parameters()), int(text_config(model.config).hidden_size)
    built, deltas, directions = {}, {}, {}
    for row, entry in enumerate(rows):
        key = None if entry is None else (id(entry.vector), entry.alpha)
        if key is not None and key not in built:
            vector = validate_vector(entry.vector, f"row {row}'s vector for layer {entry.vector.layer}")
            built[key] = _additions(model, blocks, [vector], [entry.alpha], sparse)
        for module, edits in built.get(key, {}).items():
            for edit in edits:
                if isinstance(edit, DirectionEdit):
                    directions.setdefault(module, {}).setdefault(key, (edit, _rows_mask(rows, [], param)))[1][row] = 1
                else:  # 0 + v is v: per element the sum steer's index_add makes
                    delta = deltas.setdefault(module, param.new_zeros(len(rows), hidden))
                    delta[row, slice(None) if edit[0] is None else edit[0]] += edit[1]
    return {m: (deltas.get(m), list(directions.get(m, {}).values())) for m in deltas.keys() | directions.keys()}


def _rows_mask(rows: list, picked: list[int], param: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(len(rows), dtype=torch.bool, device=param.device)
    mask[picked] = True
    return mask


@contextmanager
def steer_rows(model, rows: Sequence[RowSteering | tuple | None], *, positions=None, sparse: bool = True,
               blocks: str | torch.nn.ModuleList | None = None) -> Iterator[None]:
    """:func:`steer` with one configuration per batch row: row ``i`` of every forward pass gets
    ``rows[i]`` only, a :class:`RowSteering`, a ``(vector, alpha)`` pair or None (unsteered); layer,
    k, operator, alpha and positions (``positions``: every row's default) may differ by row. Each
    row gets what ``steer`` gives it (the same edits and :meth:`Positions.selects`), a module's
    additions as one ``(batch, hidden)`` tensor. A pass of another batch size is refused.

    >>> loaded, vector = load_model(model_dir), load_vector("v.safetensors")
    >>> batch = loaded.tokenizer(["I fed the stray cat.", "She kept the wallet."], return_tensors="pt", padding=True)
    >>> with steer_rows(loaded, [(vector, 8.0), None]):
    ...     mixed = loaded.model(**batch).logits
    >>> with steer(loaded, vector, alpha=8.0):
    ...     steered = loaded.model(**batch).logits
    >>> bool((mixed[0] == steered[0]).all()), bool((mixed[1] == loaded.model(**batch).logits[1]).all())
    (True, True)
    """
    if isinstance(model, LoadedModel):
        model, blocks = model.model, model.blocks
    blocks = blocks if isinstance(blocks, torch.nn.ModuleList) else find_decoder_blocks(model, blocks)
    rows = [r if r is None or isinstance(r, RowSteering) else RowSteering(r[0], float(r[1])) for r in rows]
    per_module, param = _row_edits(model, blocks, rows, sparse), next(model.parameters())
    specs, default = {}, Positions.parse(positions)  # a positions spec -> (Positions, the rows it steers)
    for row, entry in enumerate(rows):
        spec = None if entry is None else default if entry.positions is None else Positions.parse(entry.positions)
        if spec is not None:
            specs.setdefault(str(spec) if spec.kind != "mask" else id(spec), (spec, []))[1].append(row)
    specs = [(spec, _rows_mask(rows, picked, param)[:, None]) for spec, picked in specs.values()]
    state = _PassState() if any(spec.kind != "all" for spec, _ in specs) else None

    def make_hook(delta, directions):
        def edit(hidden):
            if hidden.shape[0] != len(rows):
                raise VectorError(f"steer_rows: a forward pass of {hidden.shape[0]} rows inside a context that "
                                  f"steers {len(rows)} rows, one configuration each; give one entry per row")
            where = None if state is None else torch.stack([state.selected(s) & m for s, m in specs]).any(0)
            hidden = hidden if delta is None else _add(hidden, [(None, delta)], where)
            for direction, mask in directions:
                hidden = _add(hidden, [direction], mask[:, None] if where is None else where & mask[:, None])
            return hidden

        return _output_hook(edit)

    with _hooked(model, state, {module: make_hook(*edits) for module, edits in per_module.items()}):
        yield


__all__ = ["RowSteering", "steer_rows"]

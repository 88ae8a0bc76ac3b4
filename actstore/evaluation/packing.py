"""Several steering configurations measured in one batch (issue 32).

Decoding and the fixed batches' forwards are bound by reading the weights, so a batch of many
rows costs little more than one of few; configurations of one layer differ only in what is added
to each row. A :class:`Pack` holds up to ``pack`` configurations (one slot each, None for a slot
whose configuration is measured already); its batches are every batch of one configuration
repeated once per slot (:meth:`~actstore.evaluation.replay.Batch.repeated`, copy ``j`` holding slot
``j``'s rows), each row steered by its slot with :func:`~actstore.steering.per_row.steer_rows`,
and the per-row results are split back per slot. Each configuration's numbers are those it gets
alone, to float rounding (a kernel may sum in another order for another batch size).

:func:`pack_size` chooses how many: the request's ``pack``, or by default :data:`DEFAULT_PACK`
bounded by the request's ``cache_budget_mb``, which the float32 logits of the largest packed
fixed batch must fit; 1 for a protocol measured elsewhere (:func:`~actstore.evaluation.protocols.packable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ..models.blocks import text_config
from ..models.load import LoadedModel
from ..steering import Positions, RowSteering, steer_rows
from .effects import Measurement
from .protocols import OnTarget, packable
from .replay import Batch, Forward
from .scoring import PerplexityWindows

DEFAULT_PACK = 8  # configurations per batch unless the request says (bounded by its cache_budget_mb)


@dataclass(frozen=True)
class Pack:
    """Configurations measured together: ``slots``, one :class:`RowSteering` (or None: a slot
    measured unsteered, its results dropped) per configuration; ``positions``: every slot's tokens."""

    loaded: LoadedModel
    slots: tuple[RowSteering | None, ...]
    positions: Positions | str | None = None

    @property
    def size(self) -> int:
        return len(self.slots)

    def steering(self, rows: int) -> AbstractContextManager:
        """Per-row steering of a packed batch of ``rows`` rows: ``rows / size`` rows per slot, one
        slot after another."""
        if rows % self.size:
            raise ValueError(f"a packed batch of {rows} rows does not hold {self.size} equal copies")
        per_slot = rows // self.size
        return steer_rows(self.loaded, [slot for slot in self.slots for _ in range(per_slot)],
                          positions=self.positions)

    def forward(self, inner: Forward) -> Forward:
        """A forward of one configuration's batch turned into the pack's: ``inner`` runs the batch
        repeated once per slot, each copy steered by its slot; logits of ``size`` copies come back."""
        def packed(key, batch: Batch):
            with self.steering(batch.input_ids.shape[0] * self.size):
                return inner(key, batch.repeated(self.size))

        return packed


def chunks(configs: Sequence, size: int) -> list[list]:
    """``configs`` (a layer's, in the grid's order, done ones included) in packs of ``size``: the same
    packs on every run, so that a resumed pack runs the batches the interrupted one ran."""
    return [list(configs[start:start + size]) for start in range(0, len(configs), size)]


def pack_slots(chunk: Sequence, steered: dict) -> tuple[RowSteering | None, ...]:
    """One slot per configuration of ``chunk``: ``steered[key]`` (a ``(vector, scale)`` pair), None for
    a configuration without (one measured already: its slot runs unsteered, its results dropped)."""
    return tuple(RowSteering(*steered[key]) if key in steered else None for key in chunk)


def measure_packed(loaded: LoadedModel, on_target: OnTarget, windows: PerplexityWindows,
                   forwards: tuple[Forward, Forward], pack: Pack) -> list[Measurement]:
    """Each slot's measurement (on target, perplexity windows) from the pack's batches; ``forwards``:
    the on-target and perplexity forwards of one configuration's batches (replayed or whole)."""
    on_forward, ppl_forward = forwards
    measured = on_target.measure_packed(loaded, on_forward, pack)
    nll, tokens = windows.packed_nll(pack.forward(ppl_forward), pack.size, loaded.model)
    return [Measurement(measures, nll[slot], tokens, texts) for slot, (measures, texts) in enumerate(measured)]


def pack_size(pack: int | None, loaded: LoadedModel, on_target: OnTarget, ppl_batches: Sequence[Batch],
              budget_mb: float) -> int:
    """How many configurations a sweep measures together: 1 for a protocol that cannot be packed,
    ``pack`` where given, else :data:`DEFAULT_PACK` or fewer, so that the float32 logits of the largest
    fixed batch repeated so many times fit ``budget_mb``."""
    if not packable(on_target):
        return 1
    if pack is not None:
        return int(pack)
    vocab = int(text_config(loaded.model.config).vocab_size)
    cells = [b.input_ids.shape[0] * (b.logits_to_keep or b.input_ids.shape[1])
             for b in [*on_target.batches(), *ppl_batches]]
    largest = max(cells, default=0) * vocab * 4
    return max(1, min(DEFAULT_PACK, int(budget_mb * 2**20 // max(largest, 1))))


__all__ = ["DEFAULT_PACK", "Pack", "chunks", "measure_packed", "pack_size", "pack_slots"]

"""Fixed batches run many times: once plainly, or from a cached block output.

A sweep measures the same test batches under many steering configurations. A
vector added at the output of block ``L`` changes nothing before it, so the
output of block ``L`` on those batches is the same for every configuration at
that layer. :class:`PrefixReplay` computes it once (early exit after block
``L``) and, while :meth:`PrefixReplay.active`, stands in for blocks ``0..L``:
the blocks before ``L`` pass their input through, block ``L`` returns the cached
output, and only the blocks after ``L``, the final norm and the LM head run.
Steering hooks registered on block ``L`` inside ``active()`` see the cached
output as they would see the real one, so a replayed steered pass gives what a
full steered pass gives (tested against it on every tiny architecture).

:class:`Batch` is one padded batch; a forward is any callable
``forward(key, batch) -> logits (batch, kept positions, vocab) float32``:
:func:`plain_forward` runs the whole model, :class:`PrefixReplay` replays.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..capture import forward_blocks, position_ids
from ..models.load import LoadedModel

Forward = Callable[[Hashable, "Batch"], torch.Tensor]


@contextmanager
def padding_side(tokenizer, side: str):
    """Pad on ``side`` inside the block; the tokenizer's own setting is restored after."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


@dataclass(frozen=True)
class Batch:
    """One padded batch. ``logits_to_keep``: logits of the last N positions only (0: all).
    ``copies``: how many copies of a batch it holds, one after another (:meth:`repeated`)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logits_to_keep: int = 0
    copies: int = 1

    def repeated(self, copies: int) -> Batch:
        """``copies`` copies of this batch along the batch axis, one after another (a packed batch:
        copy ``j`` holds configuration ``j``'s rows, :mod:`actstore.evaluation.packing`)."""
        if copies == 1:
            return self
        return Batch(self.input_ids.repeat(copies, 1), self.attention_mask.repeat(copies, 1), self.logits_to_keep,
                     self.copies * copies)

    @classmethod
    def pad(cls, tokenizer, sequences: list[list[int]], side: str, logits_to_keep: int = 0) -> Batch:
        with padding_side(tokenizer, side):
            padded = tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        return cls(padded["input_ids"], padded["attention_mask"], logits_to_keep)

    @property
    def cells(self) -> int:
        """(row, position) cells: a cached block output holds this many hidden vectors."""
        return int(self.input_ids.numel())

    def model_inputs(self, device) -> dict:
        mask = self.attention_mask.to(device)
        inputs = {"input_ids": self.input_ids.to(device), "attention_mask": mask,
                  "position_ids": position_ids(mask), "use_cache": False}
        if self.logits_to_keep:
            inputs["logits_to_keep"] = self.logits_to_keep
        return inputs


def _device(model) -> torch.device:
    return next(model.parameters()).device


def plain_forward(model) -> Forward:
    """The whole model on each batch."""
    device = _device(model)

    @torch.no_grad()
    def forward(key: Hashable, batch: Batch) -> torch.Tensor:
        return model(**batch.model_inputs(device)).logits.float()

    return forward


class _Passthrough(torch.nn.Module):
    """Stands in for a decoder block before the replayed one: returns its input."""

    def __init__(self, replay: PrefixReplay):
        super().__init__()
        self._replay = [replay]  # a list: not registered as a submodule

    def forward(self, hidden_states, *args, **kwargs):
        return self._replay[0]._wrap(hidden_states)


class _Replayed(_Passthrough):
    """Stands in for block ``L``: returns its cached output for the batch running now."""

    def forward(self, hidden_states, *args, **kwargs):
        replay = self._replay[0]
        cached = replay._cache[replay._current]
        if replay._copies > 1:  # a packed batch: the cached rows once per copy
            cached = cached.repeat(replay._copies, *(1,) * (cached.dim() - 1))
        if cached.shape != hidden_states.shape:
            raise RuntimeError(f"replayed block output {tuple(cached.shape)} does not fit the batch "
                               f"{tuple(hidden_states.shape)} (batch {replay._current!r})")
        return replay._wrap(cached.to(hidden_states.dtype))


class PrefixReplay:
    """Block ``layer``'s output on fixed batches, computed once and replayed.

    ``batches``: ``{key: Batch}``. The cache holds ``(batch, seq, hidden)`` per
    batch on the model's device (:attr:`nbytes`). Call it as a forward
    (``replay(key, batch)``) inside ``with replay.active():``; ``batch`` may be the cached
    one :meth:`Batch.repeated` (a packed batch): the cached output is repeated as it runs.
    """

    def __init__(self, loaded: LoadedModel, layer: int, batches: Mapping[Hashable, Batch],
                 progress: Callable[[int], None] | None = None):
        self.loaded, self.layer = loaded, int(layer)
        self._cache: dict[Hashable, torch.Tensor] = {}
        self._tuple_tail: tuple | None = None
        self._current: Hashable | None = None
        self._copies = 1  # copies of the cached batch the running pass holds (Batch.copies)
        self._active = False
        device = _device(loaded.model)
        hook = loaded.blocks[self.layer].register_forward_hook(self._note_container)
        try:
            for key, batch in batches.items():
                # Early exit after block L, with the positions every later pass uses.
                self._cache[key] = forward_blocks(loaded.model, loaded.blocks, batch.input_ids.to(device),
                                                  batch.attention_mask.to(device), [self.layer])[self.layer]
                if progress is not None:
                    progress(1)
        finally:
            hook.remove()

    def _note_container(self, module, args, output):
        # Replacements return what the block returned: a tensor (transformers 5) or a tuple.
        self._tuple_tail = tuple(None for _ in output[1:]) if isinstance(output, tuple) else None

    def _wrap(self, hidden: torch.Tensor):
        return hidden if self._tuple_tail is None else (hidden, *self._tuple_tail)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    @contextmanager
    def active(self) -> Iterator[PrefixReplay]:
        """Blocks ``0..layer`` are replaced while inside (restored on exit, also on errors)."""
        blocks = self.loaded.blocks
        originals = [blocks[i] for i in range(self.layer + 1)]
        try:
            for i in range(self.layer):
                blocks[i] = _Passthrough(self)
            blocks[self.layer] = _Replayed(self)
            self._active = True
            yield self
        finally:
            self._active = False
            for i, block in enumerate(originals):
                blocks[i] = block

    @torch.no_grad()
    def __call__(self, key: Hashable, batch: Batch) -> torch.Tensor:
        if not self._active:
            raise RuntimeError("PrefixReplay is called outside 'with replay.active():'")
        if key not in self._cache:
            raise KeyError(f"batch {key!r} was not cached")
        self._current, self._copies = key, batch.copies
        try:
            return self.loaded.model(**batch.model_inputs(_device(self.loaded.model))).logits.float()
        finally:
            self._current, self._copies = None, 1


def cache_nbytes(loaded: LoadedModel, batches: Mapping[Hashable, Batch]) -> int:
    """Bytes a :class:`PrefixReplay` of ``batches`` would hold (float32 or the model's dtype)."""
    from ..models.blocks import text_config

    hidden = int(text_config(loaded.model.config).hidden_size)
    itemsize = next(loaded.model.parameters()).element_size()
    return sum(b.cells for b in batches.values()) * hidden * itemsize


@contextmanager
def layer_forwards(loaded: LoadedModel, layer: int, on_batches: list[Batch], ppl_batches: list[Batch],
                   replay: bool, cache_budget_mb: float, site: str = "resid"
                   ) -> Iterator[Callable[[], AbstractContextManager]]:
    """Yields ``active()``, a context inside which ``(on_forward, ppl_forward)`` measure at ``layer``
    (the on-target protocol's fixed batches, the perplexity windows): replayed from the layer's
    cached block output where there are on-target batches and it fits the budget. A vector added
    inside block L (site attn or mlp) replays only blocks before L."""
    batches = {**{("on", i): b for i, b in enumerate(on_batches)}, **{("ppl", i): b for i, b in enumerate(ppl_batches)}}
    prefix = layer if site == "resid" else layer - 1
    if replay and prefix >= 0 and on_batches and cache_nbytes(loaded, batches) <= cache_budget_mb * 2**20:
        cached = PrefixReplay(loaded, prefix, batches)

        @contextmanager
        def active():
            with cached.active():
                yield (lambda i, b: cached(("on", i), b)), (lambda i, b: cached(("ppl", i), b))

        yield active
        return
    forward = plain_forward(loaded.model)
    yield lambda: nullcontext((forward, forward))


__all__ = ["Batch", "Forward", "PrefixReplay", "cache_nbytes", "layer_forwards", "padding_side", "plain_forward"]

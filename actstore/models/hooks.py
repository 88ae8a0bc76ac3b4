"""Forward hooks on decoder blocks: record what a block (or its attention or MLP) outputs, end the
forward pass after the deepest block a capture needs, and keep a direction out of every write to
the residual stream. Hooks always remove themselves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from .blocks import residual_writes, site_module


class _StopForward(Exception):
    """Raised by the hook on the deepest block to end the forward pass early."""


def block_output(output):
    """The hidden-state tensor of a decoder block's output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_blocks(blocks: torch.nn.ModuleList, layers: Sequence[int], stop_after_last: bool = True,
                  site: str = "resid", on_output: Callable[[int, torch.Tensor], None] | None = None):
    """Register hooks that store each requested block's output (or its ``site``) in a dict.

    Yields the dict ``{layer: (batch, seq, hidden) tensor}``, filled by each
    forward pass; with ``on_output``, each output is handed to ``on_output(layer, hidden)``
    as its block runs instead, and the dict stays empty (nothing of the pass outlives it:
    a capture of every layer keeps no block output past the next block). With
    ``stop_after_last`` the hook on the deepest block raises
    :class:`_StopForward` (caught by :func:`forward_blocks`). Hooks are removed
    on exit, also on errors.
    """
    outputs: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(module, args, output):
            if on_output is None:
                outputs[layer] = block_output(output).detach()
            else:
                on_output(layer, block_output(output).detach())
            if stop_after_last and layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            handles.append(site_module(blocks, layer, site).register_forward_hook(make_hook(layer)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so a left-padded text gets the same
    positions (and activations) as the same text unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_blocks(model: torch.nn.Module, blocks: torch.nn.ModuleList, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, layers: Sequence[int], stop_early: bool = True,
                   site: str = "resid", on_output: Callable[[int, torch.Tensor], None] | None = None
                   ) -> dict[int, torch.Tensor]:
    """Run the model on one padded batch; return ``{layer: (batch, seq, hidden)}``
    of each block's ``site`` (positions from :func:`position_ids`), or hand each to
    ``on_output(layer, hidden)`` as its block runs (:func:`record_blocks`; the dict is then empty)."""
    with record_blocks(blocks, layers, stop_after_last=stop_early, site=site, on_output=on_output) as outputs, \
            torch.no_grad():
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                  use_cache=False)
        except _StopForward:
            pass
    return dict(outputs)


def edit_along(hidden: torch.Tensor, unit: torch.Tensor, target: float = 0.0, alpha: float = 1.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden + alpha (target - hidden . unit) unit`` over the last axis (a new tensor): with
    ``target`` 0 the component along ``unit`` removed (a projection), else moved toward ``target``
    (a clamp). ``weight`` ``(..., 1)``: the change per token (0 where a token is not steered)."""
    unit = unit.to(device=hidden.device, dtype=hidden.dtype)
    change = alpha * (target - hidden @ unit)
    if weight is not None:
        change = change * weight.squeeze(-1)
    return hidden + change.unsqueeze(-1) * unit


@contextmanager
def ablate_direction(model: torch.nn.Module, blocks: torch.nn.ModuleList, unit: torch.Tensor, alpha: float = 1.0):
    """Directional ablation (Arditi et al. 2024): ``unit``'s component removed from the embeddings
    and from every block's attention and MLP output, so the residual stream never holds it. The
    hooked form of the weight-orthogonalised model (:func:`actstore.vectors.bake.bake_vector`);
    the model must be in :data:`actstore.models.blocks.RESIDUAL_WRITERS`."""
    writes = residual_writes(model, blocks)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit_along(output[0], unit, 0.0, alpha), *output[1:])
        return edit_along(output, unit, 0.0, alpha)

    handles = []
    try:
        for module in (*writes.embeddings, *writes.writers):
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()

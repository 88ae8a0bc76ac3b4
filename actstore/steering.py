"""Apply steering vectors at inference.

``with steer(model, vector, alpha=4.0): model.generate(...)`` adds
``alpha * vector`` to the output of decoder block ``vector.layer`` at every
token position (prompt and generated tokens). A sparse vector is added only on
its kept coordinates (``index_add``), not as a dense add of zeros. Hooks return
a replacement output (no in-place edit) and are removed on exit, also on errors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .capture import block_output
from .errors import VectorError
from .models import LoadedModel, find_decoder_blocks, text_config
from .vectors import SteeringVector


@dataclass
class _LayerAddition:
    """What is added at one block: ``values`` on ``indices`` (None: dense ``values``)."""

    indices: torch.Tensor | None
    values: torch.Tensor


def check_vector(vector: SteeringVector, loaded: LoadedModel, force: bool = False) -> None:
    """Refuse a vector made for another model (by fingerprint), unless ``force``."""
    made_for = vector.metadata.get("model_fingerprint")
    if made_for and made_for != loaded.fingerprint:
        message = (
            f"vector was made for model {vector.metadata.get('model')!r} (weights {made_for}); "
            f"this model {loaded.model_id!r} has weights {loaded.fingerprint}"
        )
        if not force:
            raise VectorError(message + "; pass --force (Python: force=True) to steer anyway")
        warnings.warn(message, stacklevel=2)


def _additions(model, blocks, vectors: Sequence[SteeringVector], alphas: Sequence[float], sparse: bool):
    hidden = int(text_config(model.config).hidden_size)
    param = next(model.parameters())
    per_layer: dict[int, list[_LayerAddition]] = {}
    for vector, alpha in zip(vectors, alphas):
        if not math.isfinite(alpha):
            raise VectorError(f"alpha must be a finite number, got {alpha!r}")
        if vector.hidden_size != hidden:
            raise VectorError(
                f"vector has {vector.hidden_size} dimensions but the model's hidden size is {hidden}"
            )
        if not 0 <= vector.layer < len(blocks):
            raise VectorError(
                f"vector is for layer {vector.layer}; this model has decoder blocks 0..{len(blocks) - 1}"
            )
        values = np.asarray(vector.vector, dtype=np.float64) * alpha
        kept = np.flatnonzero(values).astype(np.int64)
        # A vector that is mostly non-zero is cheaper to add densely.
        if sparse and len(kept) <= hidden // 2:
            addition = _LayerAddition(
                torch.from_numpy(kept).to(param.device),
                torch.from_numpy(values[kept]).to(device=param.device, dtype=param.dtype),
            )
        else:
            addition = _LayerAddition(None, torch.from_numpy(values).to(device=param.device, dtype=param.dtype))
        per_layer.setdefault(vector.layer, []).append(addition)
    return per_layer


def _add(hidden: torch.Tensor, additions: list[_LayerAddition]) -> torch.Tensor:
    for addition in additions:
        values = addition.values.to(hidden.dtype)
        if addition.indices is None:
            hidden = hidden + values
        else:
            source = values.expand(*hidden.shape[:-1], values.shape[0])
            hidden = hidden.index_add(-1, addition.indices, source)
    return hidden


@contextmanager
def steer(
    model,
    vectors: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] = 1.0,
    *,
    blocks: str | torch.nn.ModuleList | None = None,
    sparse: bool = True,
) -> Iterator[None]:
    """Add ``alpha * vector`` at the output of block ``vector.layer`` while inside.

    ``model`` is a transformers causal LM or a :class:`LoadedModel`;
    ``vectors`` one vector or several (several layers, or several at one
    layer: they add up); ``alpha`` one scale for all or one per vector.
    ``sparse=False`` adds the vector densely (for comparison; same result).
    """
    if isinstance(model, LoadedModel):
        model, blocks = model.model, model.blocks
    if isinstance(vectors, SteeringVector):
        vectors = [vectors]
    vectors = list(vectors)
    alphas = [float(alpha)] * len(vectors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(vectors):
        raise VectorError(f"{len(alphas)} alphas for {len(vectors)} vectors")
    if not isinstance(blocks, torch.nn.ModuleList):
        blocks = find_decoder_blocks(model, blocks)
    per_layer = _additions(model, blocks, vectors, alphas, sparse)

    def make_hook(additions: list[_LayerAddition]):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (_add(output[0], additions), *output[1:])
            return _add(block_output(output), additions)

        return hook

    handles = []
    try:
        for layer, additions in per_layer.items():
            handles.append(blocks[layer].register_forward_hook(make_hook(additions)))
        yield
    finally:
        for handle in handles:
            handle.remove()

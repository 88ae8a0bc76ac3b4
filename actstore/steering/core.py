"""Apply steering vectors at inference.

``with steer(model, vector, alpha=4.0): model.generate(...)`` adds
``alpha * vector`` to the output of decoder block ``vector.layer`` at every
token position (prompt and generated tokens). A sparse vector is added only on
its kept coordinates (``index_add``), not as a dense add of zeros. Hooks return
a replacement output (no in-place edit) and are removed on exit, also on errors.

``positions=`` chooses which tokens get the vector (:class:`Positions`):
``"all"`` (the default), ``"prompt"``, ``"response"`` (``"generated"``, its former
name, is read the same), ``"from:N"`` (token N on, counted over real tokens from 0),
or a per-example boolean mask ``(batch, n)`` over token positions. A forward pass
that starts a sequence (empty key-value cache) holds prompt tokens; a pass that
continues a cached sequence, as ``generate`` does after the prompt, holds the
response (the generated tokens). With a chat template these are capture's turns:
the prompt is every token before the assistant's response starts (the template's
turns and the opened assistant turn), the response the assistant's tokens. Positions count real
tokens only, so left padding shifts nothing; padding itself is never steered
unless ``"all"``.

The vLLM plugin (:mod:`actstore.serve`) steers with the same two pieces: what is
added for a vector is :func:`vector_addition` (the scale; which coordinates of a
sparse vector), and which tokens get it is :meth:`Positions.selects`, the spec
read by :meth:`Positions.from_text` (a request's ``actstore_positions``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..capture import block_output
from ..errors import VectorError
from ..models.blocks import SITES, find_decoder_blocks, residual_writes, site_module, text_config
from ..models.hooks import edit_along
from ..models.load import LoadedModel
from ..vectors.vector import SteeringVector, validate_vector

_MAX_POSITION = 2**31  # longer than any context: a larger N is a typo, and beyond int64 a crash


@dataclass(frozen=True)
class Positions:
    """Which token positions are steered. ``kind``: all | prompt | response (the tokens the
    model generates; ``"generated"`` is read as response) | from (``start``: first steered
    position) | mask (``mask``: ``(batch, n)`` bool over token positions; positions past ``n``
    are not steered)."""

    kind: str = "all"
    start: int = 0
    mask: torch.Tensor | None = None

    def __post_init__(self):
        # One value per selection: a spec, a sweep folder and a request all record "response".
        if self.kind == "generated":
            object.__setattr__(self, "kind", "response")

    @classmethod
    def parse(cls, spec) -> Positions:
        """``"all"``, ``"prompt"``, ``"response"``, ``"from:N"`` (read by :meth:`from_text`), a
        :class:`Positions`, or a boolean ``(batch, n)`` array / tensor (a per-example mask)."""
        if spec is None:
            return cls()
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, str):
            return cls.from_text(spec)
        mask = torch.as_tensor(np.asarray(spec))
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise VectorError(f"positions: a per-example mask must be boolean of shape (batch, n), got "
                              f"{mask.dtype} {tuple(mask.shape)}")
        return cls("mask", mask=mask)

    @classmethod
    def from_text(cls, spec) -> Positions:
        """The one reader of a written spec (``actstore steer --positions``, a sweep's
        ``positions``, a served request's ``actstore_positions``): ``"all"``, ``"prompt"``,
        ``"response"`` (or its former name ``"generated"``) or ``"from:N"``, any case. Anything
        else, a non-string included, is refused with the same message wherever it was written."""
        text = spec.strip().lower() if isinstance(spec, str) else ""
        if text in ("all", "prompt", "response", "generated"):
            return cls(text)
        if text.startswith("from:"):
            try:
                start = int(text[5:])
            except ValueError:
                start = -1
            if 0 <= start < _MAX_POSITION:
                return cls("from", start)
        raise VectorError(f"positions {spec!r}: expected 'all', 'prompt', 'response' or 'from:N' "
                          "(0 <= N < 2**31, e.g. 'from:5'; 'generated' is read as 'response')", param="positions")

    def selects(self, index: torch.Tensor, prompt: bool | torch.Tensor) -> torch.Tensor:
        """Which tokens get the vector (bool, ``index``'s shape): the one rule of :func:`steer`'s
        hooks and of the vLLM plugin. ``index``: each token's position among its sequence's real
        tokens, from 0 (``(batch, T)`` for a mask, whose rows are the examples); ``prompt``:
        whether each token (or every token of the pass) is a prompt token."""
        if self.kind == "all":
            return torch.ones_like(index, dtype=torch.bool)
        if self.kind in ("prompt", "response"):
            is_prompt = torch.as_tensor(prompt, dtype=torch.bool, device=index.device).expand(index.shape)
            return is_prompt.clone() if self.kind == "prompt" else ~is_prompt
        if self.kind == "from":
            return index >= self.start
        mask = self.mask.to(index.device)
        if mask.shape[0] != index.shape[0]:
            raise VectorError(f"positions mask is for {mask.shape[0]} examples; this batch has {index.shape[0]}")
        inside = index < mask.shape[1]
        return inside & torch.gather(mask, 1, index.clamp(0, mask.shape[1] - 1))

    def __str__(self) -> str:
        return {"from": f"from:{self.start}", "mask": "mask"}.get(self.kind, self.kind)


class _PassState:
    """Filled by a pre-hook on the whole model before each forward pass: which
    positions the pass holds and whether it starts a sequence."""

    def __init__(self):
        self.real: torch.Tensor | None = None  # (batch, T) bool: real (non-pad) tokens of this pass
        self.index: torch.Tensor | None = None  # (batch, T) position of each token among real tokens
        self.starts_sequence = True

    def pre_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, length = (ids.shape if ids is not None else embeds.shape[:2])
        # Tokens already in the cache: the 2-D attention mask covers them and this pass;
        # without one, the cache position or the cache itself (its keyword differs across versions).
        mask = kwargs.get("attention_mask")
        cache_position = kwargs.get("cache_position")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if mask is not None and mask.dim() == 2:
            past = mask.shape[1] - length
        elif cache_position is not None and cache_position.numel():
            past = int(cache_position.reshape(-1)[0])
        elif cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        else:
            past = 0
        self.starts_sequence = past == 0
        device = (ids if ids is not None else embeds).device
        if mask is not None and mask.dim() == 2:
            mask = mask.to(device)
            self.index = (mask.long().cumsum(-1) - 1)[:, -length:]
            self.real = mask[:, -length:].bool()
        else:
            self.index = torch.arange(past, past + length, device=device).expand(batch, length)
            self.real = torch.ones(batch, length, dtype=torch.bool, device=device)

    def selected(self, positions: Positions) -> torch.Tensor:
        """(batch, T) bool: the tokens of this pass that get the vector."""
        return self.real & positions.selects(self.index, self.starts_sequence)


@dataclass(frozen=True, eq=False)
class VectorAddition:
    """What is added for one vector: ``values`` on the coordinates ``indices`` (a sparse
    vector: its non-zero ones, by ``index_add``), or on every coordinate (``indices`` None).
    ``indices``: (k,) int64; ``values``: (k,) or (hidden,) float64."""

    indices: np.ndarray | None
    values: np.ndarray

    def tensors(self, device, dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(indices, values)`` on ``device``; values rounded once, from float64 to ``dtype``."""
        indices = None if self.indices is None else torch.from_numpy(self.indices).to(device)
        return indices, torch.from_numpy(self.values).to(device=device, dtype=dtype)


def vector_addition(vector: SteeringVector, alpha: float, *, sparse: bool = True) -> VectorAddition:
    """``alpha * vector`` as it is added, by :func:`steer`'s hooks and by the vLLM plugin alike:
    scaled in float64; on its non-zero coordinates when at most half of them are non-zero
    (``sparse=False``: always dense)."""
    if not math.isfinite(alpha):
        raise VectorError(f"alpha must be a finite number, got {alpha!r}", param="alpha")
    values = np.asarray(vector.vector, dtype=np.float64) * alpha
    kept = np.flatnonzero(values).astype(np.int64)
    # A vector that is mostly non-zero is cheaper to add densely.
    if sparse and len(kept) <= len(values) // 2:
        return VectorAddition(kept, values[kept])
    return VectorAddition(None, values)


@dataclass(frozen=True, eq=False)
class DirectionEdit:
    """A projection or clamp along ``unit`` (the vector's unit direction; zero outside a sparse
    vector's kept coordinates): ``h + alpha (target - h . unit) unit``, ``target`` 0 for project,
    the clamp value for clamp (:mod:`actstore.vectors.operators`)."""

    unit: torch.Tensor
    target: float
    alpha: float

    def apply(self, hidden: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        return edit_along(hidden, self.unit, self.target, self.alpha, weight)


def direction_edit(vector: SteeringVector, alpha: float) -> DirectionEdit:
    """The :class:`DirectionEdit` of a vector whose operator is project or clamp."""
    if not math.isfinite(alpha):
        raise VectorError(f"alpha must be a finite number, got {alpha!r}", param="alpha")
    values = torch.from_numpy(np.asarray(vector.vector, dtype=np.float64))
    norm = float(values.norm())
    operator = vector.info.operator
    if norm == 0:
        raise VectorError(f"the vector for layer {vector.layer} is zero: it has no direction to {operator.kind}")
    return DirectionEdit(values / norm, operator.clamp_value or 0.0, float(alpha))


Edit = tuple[torch.Tensor | None, torch.Tensor] | DirectionEdit


def check_vector(vector: SteeringVector, loaded: LoadedModel, force: bool = False) -> None:
    """Refuse a vector made for another model (by fingerprint), unless ``force``."""
    from ..models.load import same_weights

    made_for = vector.info.fingerprint
    if made_for and not same_weights(made_for, loaded):
        message = (f"vector was made for model {vector.info.model!r} (weights {made_for}); "
                   f"this model {loaded.model_id!r} has weights {loaded.fingerprint}")
        if not force:
            raise VectorError(message + "; pass force=True to steer anyway", param="force")
        warnings.warn(message, stacklevel=2)


def _additions(model, blocks, vectors: Sequence[SteeringVector], alphas: Sequence[float], sparse: bool):
    """Module -> the edits made to its output, in order: ``(indices, values)`` tensors added there
    (:meth:`VectorAddition.tensors`) or a :class:`DirectionEdit`, at each layer the vector's operator
    names (a projection at all layers: the embeddings and every write to the residual stream)."""
    hidden = int(text_config(model.config).hidden_size)
    param = next(model.parameters())
    per_module: dict[torch.nn.Module, list[Edit]] = {}
    for vector, alpha in zip(vectors, alphas):
        operator = vector.info.operator
        # first: a NaN alpha is named before the rest
        edit = vector_addition(vector, alpha, sparse=sparse).tensors(param.device, param.dtype) \
            if operator.additive else direction_edit(vector, alpha)
        if vector.hidden_size != hidden:
            raise VectorError(f"vector has {vector.hidden_size} dimensions but the model's hidden size is {hidden}")
        if not 0 <= vector.layer < len(blocks):
            raise VectorError(f"vector is for layer {vector.layer}; this model has decoder blocks 0..{len(blocks) - 1}")
        for module in _operator_modules(model, blocks, vector):
            per_module.setdefault(module, []).append(edit)
    return per_module


def _operator_modules(model, blocks, vector: SteeringVector) -> list[torch.nn.Module]:
    """Where a vector's operator acts: its site at each of its layers; a projection at all layers
    acts on every write to the residual stream (Arditi et al.'s ablation, what a bake writes)."""
    operator = vector.info.operator
    if operator.kind == "project" and operator.layers == "all":
        writes = residual_writes(model, blocks)
        return [*writes.embeddings, *writes.writers]
    site = vector_site(vector)
    return [site_module(blocks, layer, site) for layer in operator.resolve_layers(vector.layer, len(blocks))]


def vector_site(vector: SteeringVector) -> str:
    """Where a vector is added: its info's ``site``."""
    site = vector.info.site
    if site not in SITES:
        raise VectorError(f"the vector's metadata names site {site!r}; expected one of {', '.join(SITES)}")
    return site


def _add(hidden: torch.Tensor, additions: list[Edit], where: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden`` with ``additions`` made in order (added tensors, or a :class:`DirectionEdit`);
    with ``where`` ``(batch, T)`` bool (or ``(batch, 1)``), only at those tokens. Dense values of
    shape ``(batch, hidden)`` add one row to each batch row."""
    weight = None if where is None else where.to(hidden.dtype).unsqueeze(-1)
    for edit in additions:
        if isinstance(edit, DirectionEdit):
            hidden = edit.apply(hidden, weight)
            continue
        indices, values = edit
        values = values.to(hidden.dtype)
        if values.dim() == 2:  # one row of values per batch row (steer_rows)
            values = values.unsqueeze(-2)
        if indices is None:
            hidden = hidden + (values if weight is None else weight * values)
        else:
            source = values.expand(*hidden.shape[:-1], values.shape[0])
            hidden = hidden.index_add(-1, indices, source if weight is None else weight * source)
    return hidden


@contextmanager
def steer(
    model,
    vectors: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] = 1.0,
    *,
    blocks: str | torch.nn.ModuleList | None = None,
    sparse: bool = True,
    positions: str | Positions | torch.Tensor | np.ndarray | None = None,
) -> Iterator[None]:
    """Add ``alpha * vector`` at the output of block ``vector.layer`` (or at its ``site``) while
    inside; a vector whose operator is project or clamp is applied so, where it names.

    ``model`` is a transformers causal LM or a :class:`LoadedModel`;
    ``vectors`` one vector or several (several layers, or several at one
    layer: they add up); ``alpha`` one scale for all or one per vector.
    ``sparse=False`` adds the vector densely (for comparison; same result).
    ``positions``: which tokens (module docstring; default every token).

    >>> loaded, vector = load_model(model_dir), load_vector("v.safetensors")
    >>> ids = loaded.tokenizer("I fed the stray cat.", return_tensors="pt").input_ids
    >>> plain = loaded.model(ids).logits
    >>> with steer(loaded, vector, alpha=8.0):
    ...     steered = loaded.model(ids).logits
    >>> bool((steered - plain).abs().max() > 0), bool((loaded.model(ids).logits == plain).all())
    (True, True)
    """
    if isinstance(model, LoadedModel):
        model, blocks = model.model, model.blocks
    if isinstance(vectors, SteeringVector):
        vectors = [vectors]
    vectors = [validate_vector(v, f"vector for layer {v.layer}") for v in vectors]  # NaN would steer silently
    alphas = [float(alpha)] * len(vectors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != len(vectors):
        raise VectorError(f"{len(alphas)} alphas for {len(vectors)} vectors")
    if not isinstance(blocks, torch.nn.ModuleList):
        blocks = find_decoder_blocks(model, blocks)
    per_layer = _additions(model, blocks, vectors, alphas, sparse)
    chosen = Positions.parse(positions)
    state = _PassState() if chosen.kind != "all" else None

    def make_hook(additions: list[Edit]):
        return _output_hook(lambda hidden: _add(hidden, additions, None if state is None else state.selected(chosen)))

    with _hooked(model, state, {module: make_hook(additions) for module, additions in per_layer.items()}):
        yield


def _output_hook(edit):
    """A forward hook that returns the module's output with ``edit(hidden)`` in place of its hidden states."""
    def hook(module, args, output):
        return (edit(output[0]), *output[1:]) if isinstance(output, tuple) else edit(block_output(output))

    return hook


@contextmanager
def _hooked(model, state: _PassState | None, hooks: dict) -> Iterator[None]:
    """``hooks`` (module -> forward hook) and ``state``'s pre-hook on ``model`` while inside; removed on
    exit, also on errors."""
    handles = []
    try:
        if state is not None:
            handles.append(model.register_forward_pre_hook(state.pre_hook, with_kwargs=True))
        for module, hook in hooks.items():
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


"""The one registry of extraction methods and controls (:data:`METHODS`).

A method is one :class:`Method` entry: its description, the **direction** it finds at a
layer (a function of :class:`LayerInputs`) and the **sparsifier** that keeps ``k``
coordinates of it. Adding a method is adding an entry here (and, for its math, a function
in :mod:`actstore.vectors.directions`); nothing else branches on a method's name. Controls
(``random``, ``letter``) and vectors made by a peer (``steering-vectors``, ``repeng``,
``gguf``) are entries without a direction: :class:`~actstore.vectors.info.VectorInfo` accepts and describes them,
the code that makes them lives elsewhere (:mod:`actstore.vectors.controls`, :mod:`actstore.vectors.interop`).

Old method names read as aliases (:data:`METHOD_ALIASES`): files written before the
registry say ``enr-topk`` / ``mean-diff`` (now ``enr``) and ``whitened-enr-topk`` (now
``whitened``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import VectorError
from .directions import (
    ClassMoments,
    Direction,
    class_moments,
    enr_direction,
    keep_top_k,
    lda_direction,
    pca_direction,
    whitened_direction,
)
from .probe import PROBE_C, probe_direction


@dataclass(frozen=True)
class LayerInputs:
    """What a method may read at one layer: the statistics (:func:`actstore.open_stats`), and on
    demand the layer's covariance and the store's dataset (callables, so that a method that
    does not need them never computes them; :class:`actstore.vectors.build.LayerMethods` caches them)."""

    stats: Any
    layer: int
    pos: str = "pos"
    neg: str = "neg"
    covariance: Callable[[], Any] | None = None
    dataset: Callable[[], Any] | None = None
    scheduler: str | None = None
    probe_c: float = PROBE_C

    @cached_property
    def moments(self) -> ClassMoments:
        """The two classes' checked moments (the refusals every method starts with)."""
        return class_moments(self.stats, self.layer, self.pos, self.neg)


@dataclass(frozen=True)
class Sparse:
    """A direction made k-sparse: ``vector`` (hidden,) float32 in the residual basis,
    ``indices`` kept by decreasing rank, ``enr`` (hidden,) float32, ``extra`` tensors."""

    vector: np.ndarray
    indices: np.ndarray
    enr: np.ndarray
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)


def mask_top_k(direction: Direction, inputs: LayerInputs, k: int | None) -> Sparse:
    """Keep the ``k`` coordinates of largest rank and zero the rest; map back to the residual
    basis when the direction has one (whitened: ``vector_whitened`` keeps the kept part)."""
    indices, kept = keep_top_k(direction.values, direction.rank, k)
    rank = direction.rank.astype(np.float32)
    if direction.back is None:
        return Sparse(kept.astype(np.float32), indices, rank)
    return Sparse((direction.back @ kept).astype(np.float32), indices, rank,
                  {"vector_whitened": kept.astype(np.float32)})


def project_top_k(direction: Direction, inputs: LayerInputs, k: int | None) -> Sparse:
    """``(u . v) u``: u the direction's unit vector on its top-k coordinates (renormalised), v
    the difference of means, so that alpha 1 moves the mean projection onto u as v does."""
    # v rounded to float32 first, as the dense ENR vector it once was read from
    diff = inputs.moments.difference.astype(np.float32).astype(np.float64)
    indices, kept = keep_top_k(direction.unit, direction.rank, k)
    norm = float(np.linalg.norm(kept))
    if not np.isfinite(norm) or norm == 0:
        raise VectorError(f"the {direction.method} direction of layer {direction.layer} is zero on its top {k} "
                          "coordinates")
    unit = kept / norm
    return Sparse((float(unit @ diff) * unit).astype(np.float32), indices, inputs.moments.enr.astype(np.float32))


def _need(inputs: LayerInputs, what: str, method: str):
    thunk = getattr(inputs, what)
    if thunk is None:
        raise VectorError(f"method {method!r} needs the layer's {what}; build it with actstore.build_vector",
                          param="method")
    return thunk()


def _enr(inputs: LayerInputs) -> Direction:
    return enr_direction(inputs.moments)


def _whitened(inputs: LayerInputs) -> Direction:
    return whitened_direction(_need(inputs, "covariance", "whitened"), inputs.pos, inputs.neg)


def _pca(inputs: LayerInputs) -> Direction:
    return pca_direction(_need(inputs, "dataset", "pca"), inputs.layer, pos=inputs.pos, neg=inputs.neg,
                         scheduler=inputs.scheduler)


def _probe(inputs: LayerInputs) -> Direction:
    return probe_direction(_need(inputs, "dataset", "probe"), inputs.stats, inputs.layer, pos=inputs.pos,
                           neg=inputs.neg, c=inputs.probe_c, scheduler=inputs.scheduler)


def _lda(inputs: LayerInputs) -> Direction:
    return lda_direction(inputs.stats, _need(inputs, "covariance", "lda"), pos=inputs.pos, neg=inputs.neg)


@dataclass(frozen=True)
class Method:
    """One way to make a vector. ``direction`` is None for vectors made outside the registry
    (controls, peers' files); ``activations``: the method reads the activations, not only the
    moments (refused on a stats-only store); ``kind``: extraction, control or imported.
    ``refines``: the method whose vector this one ranks another way (whitened ranks enr's mean
    difference in the whitened basis): their dense vectors are the same, so a sweep measures
    it once, and compares the two at each k. ``seeded``: a control drawn at random, one vector
    per seed. ``reads_rows``: the vector reads the store's rows other than through the statistics
    and the covariance (the pairs' differences, a probe fit, option-swapped twins), which a
    resample of the training rows (``train_resample``) does not reach. ``help``: the longer text
    ``actstore extract --help`` shows (the description when empty)."""

    name: str
    description: str
    direction: Callable[[LayerInputs], Direction] | None = None
    sparsifier: Callable[[Direction, LayerInputs, int | None], Sparse] | None = None
    activations: bool = False
    kind: str = "extraction"
    refines: str | None = None
    seeded: bool = False
    reads_rows: bool = False
    help: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("enr", "mean difference, top-k by effect-to-noise ratio", _enr, mask_top_k,
           help="difference of means, top-k by ENR"),
    Method("whitened", "mean difference, top-k by ENR in the whitened basis (Ledoit-Wolf)", _whitened, mask_top_k,
           activations=True, refines="enr", help="top-k by ENR of Sigma^-1/2 v"),
    Method("pca", "first principal axis of the pair differences (repeng's pca_diff)", _pca, project_top_k,
           activations=True, reads_rows=True,
           help="first principal axis of the pos-neg pair differences (repeng's pca_diff; pairs joined by pair_id), "
                "pointing along v; steered as (u.v)u"),
    Method("probe", "logistic probe's weights, standardised", _probe, project_top_k, activations=True,
           reads_rows=True,
           help="L2 logistic regression weights (on standardised coordinates, mapped back); steered as (u.v)u"),
    Method("lda", "Fisher's discriminant with the shrunk covariance", _lda, project_top_k, activations=True,
           help="Sigma^-1 v, Sigma the shrunk pooled within-class covariance; steered as (u.v)u"),
    Method("random", "control: a random direction of the same norm", kind="control", seeded=True),
    Method("letter", "control: the answer-letter direction", kind="control", reads_rows=True),
    Method("steering-vectors", "imported from a steering-vectors SteeringVector", kind="imported"),
    Method("repeng", "imported from a repeng ControlVector", kind="imported"),
    Method("gguf", "imported from a GGUF control-vector file", kind="imported"),
)}
EXTRACTION_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "extraction")
DEFAULT_METHOD = EXTRACTION_METHODS[0]  # the mean difference, ranked by ENR


def methods_help() -> str:
    """Every extraction method with its help, for ``--method``'s help text."""
    return " ".join(f"{name}: {METHODS[name].help or METHODS[name].description}." for name in EXTRACTION_METHODS)


def refinement(name: str) -> str:
    """The method that ranks ``name``'s vector in the whitened basis (``--whiten``): the method
    whose ``refines`` is ``name``, or ``name`` itself when it is one; VectorError if none."""
    entry = method_entry(name)
    if entry.refines is not None:
        return entry.name
    for other in METHODS.values():
        if other.refines == entry.name:
            return other.name
    refined = ", ".join(m.refines for m in METHODS.values() if m.refines)
    raise VectorError(f"--whiten ranks a mean difference in the whitened basis; it applies to --method {refined}, "
                      f"not {entry.name}", param="whiten")
METHOD_ALIASES = {"enr-topk": "enr", "mean-diff": "enr", "whitened-enr-topk": "whitened"}


def method_entry(name: str) -> Method:
    """The registry entry of ``name`` (an alias reads as its method)."""
    name = METHOD_ALIASES.get(name, name)
    if name not in METHODS:
        raise VectorError(f"method {name!r}: expected one of {', '.join(METHODS)}", param="method")
    return METHODS[name]

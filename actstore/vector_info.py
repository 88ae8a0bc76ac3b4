"""What a steering vector is: the one registry of methods (:data:`METHODS`) and the typed,
frozen provenance every vector carries (:class:`VectorInfo`).

A method is one :class:`Method` entry: its description, the **direction** it finds at a
layer (a function of :class:`LayerInputs`) and the **sparsifier** that keeps ``k``
coordinates of it. Adding a method is adding an entry here (and, for its math, a function
in :mod:`actstore.directions`); nothing else branches on a method's name. Controls
(``random``, ``letter``) and vectors made by a peer (``steering-vectors``, ``repeng``,
``gguf``) are entries without a direction: :class:`VectorInfo` accepts and describes them,
the code that makes them lives elsewhere (:mod:`actstore.controls`, :mod:`actstore.interop`).

Old method names read as aliases (:data:`METHOD_ALIASES`): files written before the
registry say ``enr-topk`` / ``mean-diff`` (now ``enr``) and ``whitened-enr-topk`` (now
``whitened``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ._version import __version__
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
from .errors import VectorError
from .models import SITES
from .probe import PROBE_C, probe_direction

VECTOR_FORMAT = "actstore.vector/1"


@dataclass(frozen=True)
class LayerInputs:
    """What a method may read at one layer: the statistics (:func:`actstore.open_stats`), and on
    demand the layer's covariance and the store's dataset (callables, so that a method that
    does not need them never computes them; :class:`actstore.methods.LayerMethods` caches them)."""

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
    per seed."""

    name: str
    description: str
    direction: Callable[[LayerInputs], Direction] | None = None
    sparsifier: Callable[[Direction, LayerInputs, int | None], Sparse] | None = None
    activations: bool = False
    kind: str = "extraction"
    refines: str | None = None
    seeded: bool = False


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("enr", "mean difference, top-k by effect-to-noise ratio", _enr, mask_top_k),
    Method("whitened", "mean difference, top-k by ENR in the whitened basis (Ledoit-Wolf)", _whitened, mask_top_k,
           activations=True, refines="enr"),
    Method("pca", "first principal axis of the pair differences (repeng's pca_diff)", _pca, project_top_k,
           activations=True),
    Method("probe", "logistic probe's weights, standardised", _probe, project_top_k, activations=True),
    Method("lda", "Fisher's discriminant with the shrunk covariance", _lda, project_top_k, activations=True),
    Method("random", "control: a random direction of the same norm", kind="control", seeded=True),
    Method("letter", "control: the answer-letter direction", kind="control"),
    Method("steering-vectors", "imported from a steering-vectors SteeringVector", kind="imported"),
    Method("repeng", "imported from a repeng ControlVector", kind="imported"),
    Method("gguf", "imported from a GGUF control-vector file", kind="imported"),
)}
EXTRACTION_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "extraction")
METHOD_ALIASES = {"enr-topk": "enr", "mean-diff": "enr", "whitened-enr-topk": "whitened"}


def method_entry(name: str) -> Method:
    """The registry entry of ``name`` (an alias reads as its method)."""
    name = METHOD_ALIASES.get(name, name)
    if name not in METHODS:
        raise VectorError(f"method {name!r}: expected one of {', '.join(METHODS)}", param="method")
    return METHODS[name]


# metadata key in the file -> field; every other key is a detail of the fit
_KEYS = {"layer": "layer", "method": "method", "k": "k", "site": "site", "position": "position", "model": "model",
         "model_fingerprint": "fingerprint", "classes": "classes", "pos": "pos", "neg": "neg",
         "hidden_size": "hidden_size", "model_group": "model_group", "seed": "seed", "format": "format",
         "actstore_version": "actstore_version"}


@dataclass(frozen=True)
class VectorInfo:
    """A vector's provenance, typed and frozen; the file's metadata is its :meth:`to_metadata`.

    ``method``: a :data:`METHODS` name (None when unrecorded); ``k``: kept coordinates, None
    for dense; ``layer``: decoder block (-1 when unrecorded); ``site``: resid, attn or mlp;
    ``position``: where capture read (last, last-1, mean, all); ``model``/``fingerprint``: the
    model it was made from; ``classes``: ``((label, count), ...)``; ``pos``/``neg``: the two
    labels; ``seed``: a control's random seed; ``details``: the fit's other facts as strings
    (shrinkage, pairs, probe_fit, source, ...)."""

    layer: int = -1
    method: str | None = None
    k: int | None = None
    site: str = "resid"
    position: str = ""
    model: str = ""
    fingerprint: str = ""
    classes: tuple[tuple[str, int], ...] = ()
    pos: str = ""
    neg: str = ""
    hidden_size: int | None = None
    model_group: str = ""
    seed: int | None = None
    details: tuple[tuple[str, str], ...] = ()
    format: str = VECTOR_FORMAT
    actstore_version: str = __version__

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        if self.method is not None:
            set_("method", method_entry(str(self.method)).name)
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer))
                                   or self.k < 1):
            raise VectorError(f"k={self.k!r}: expected a positive integer or None (dense)", param="k")
        if self.site not in SITES:
            raise VectorError(f"site={self.site!r}: expected one of {', '.join(SITES)}", param="site")
        if isinstance(self.classes, Mapping):
            set_("classes", tuple((str(c), int(n)) for c, n in self.classes.items()))
        if isinstance(self.details, Mapping):
            set_("details", tuple((str(key), str(value)) for key, value in self.details.items()))
        set_("layer", int(self.layer))
        set_("k", None if self.k is None else int(self.k))

    @property
    def entry(self) -> Method | None:
        return None if self.method is None else METHODS[self.method]

    @property
    def dense(self) -> bool:
        return self.k is None

    @property
    def class_counts(self) -> dict[str, int]:
        return dict(self.classes)

    @property
    def detail(self) -> dict[str, str]:
        return dict(self.details)

    def replace(self, **changes) -> VectorInfo:
        """A copy with ``changes``; ``details`` given as a mapping are merged into the old ones."""
        if isinstance(changes.get("details"), Mapping):
            changes["details"] = {**self.detail, **changes["details"]}
        return replace(self, **changes)

    def describe(self) -> str:
        """One line: method, sparsity and fit details."""
        kind = "dense" if self.k is None else f"k={self.k}"
        details = f" {json.dumps(self.detail)}" if self.details else ""
        return f"{self.method or '?'} {kind}" + details

    def to_metadata(self) -> dict[str, str]:
        """The vector file's metadata (str -> str; format in :mod:`actstore.vectors`)."""
        out = {"format": self.format, "model": self.model, "model_fingerprint": self.fingerprint,
               "layer": str(self.layer), "k": "dense" if self.k is None else str(self.k)}
        if self.method is not None:
            out["method"] = self.method
        if self.classes:
            out["classes"] = json.dumps(dict(self.classes))
        for key, value in (("pos", self.pos), ("neg", self.neg), ("position", self.position),
                           ("model_group", self.model_group)):
            if value:
                out[key] = value
        out["site"] = self.site
        if self.hidden_size is not None:
            out["hidden_size"] = str(self.hidden_size)
        if self.seed is not None:
            out["seed"] = str(self.seed)
        out["actstore_version"] = self.actstore_version
        return {**out, **self.detail}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], where: str = "vector") -> VectorInfo:
        """Read a file's metadata (any actstore version; old method names as aliases)."""
        metadata = {str(key): str(value) for key, value in metadata.items()}
        values: dict[str, Any] = {}
        for key, name in _KEYS.items():
            if key in metadata:
                values[name] = metadata[key]
        details = {key: value for key, value in metadata.items() if key not in _KEYS}
        for name in ("layer", "hidden_size", "seed"):
            if name in values:
                try:
                    values[name] = int(values[name])
                except ValueError:
                    raise VectorError(f"{where}: metadata {name!r} is {values[name]!r}, not an integer") from None
        if values.get("layer", 0) < 0:
            raise VectorError(f"{where}: metadata 'layer' is {values['layer']}; a layer is 0 or more")
        k = values.pop("k", "dense")
        try:
            values["k"] = None if k in ("dense", "") else int(k)
        except ValueError:
            raise VectorError(f"{where}: metadata 'k' is {k!r}; expected an integer or 'dense'") from None
        if "classes" in values:
            try:
                values["classes"] = {str(c): int(n) for c, n in json.loads(values["classes"]).items()}
            except (ValueError, AttributeError, TypeError):
                raise VectorError(f"{where}: metadata 'classes' is not a JSON object of counts: "
                                  f"{values['classes'][:80]!r}") from None
        values["site"] = values.get("site") or "resid"
        if values.get("method") == "":
            values["method"] = None
        return cls(**values, details=details)


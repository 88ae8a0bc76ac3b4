"""A vector's provenance, typed and frozen (:class:`VectorInfo`); the file's metadata is its
:meth:`VectorInfo.to_metadata`, read back by :meth:`VectorInfo.from_metadata`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import VectorError
from ..models.blocks import SITES
from .methods import METHODS, Method, method_entry
from .operators import OPERATOR_KEYS, Operator

VECTOR_FORMAT = "actstore.vector/1"
DENSE = "dense"  # k of a dense vector at the edges (file metadata, CSV columns, flags); None inside


def k_label(k: int | None) -> str:
    """``k`` as the file, the CSVs and the flags spell it: an integer's text, or "dense" for None."""
    return DENSE if k is None else str(int(k))


def parse_k(label: str | int | None) -> int | None:
    """The inverse of :func:`k_label` (also "none" and "" for dense); ValueError for anything else."""
    if label is None or isinstance(label, int):
        return label
    text = str(label).strip().lower()
    return None if text in (DENSE, "none", "") else int(text)


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
    labels; ``seed``: a control's random seed; ``operator``: how it is applied
    (:class:`~actstore.vectors.operators.Operator`: add, project or clamp, and at which layers);
    ``details``: the fit's other facts as strings (shrinkage, pairs, probe_fit, source, ...).

    >>> VectorInfo(layer=6, method="enr", k=64).describe()
    'enr k=64'
    >>> VectorInfo.from_metadata({"layer": "6", "k": "dense", "method": "mean-diff"}).method
    'enr'
    """

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
    operator: Operator = Operator()
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
        if not isinstance(self.operator, Operator):
            raise VectorError(f"operator={self.operator!r}: expected an Operator", param="operator")
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
        kind = DENSE if self.k is None else f"k={self.k}"
        details = f" {json.dumps(self.detail)}" if self.details else ""
        operator = "" if self.operator == Operator() else f" ({self.operator.describe()})"
        return f"{self.method or '?'} {kind}" + operator + details

    def to_metadata(self) -> dict[str, str]:
        """The vector file's metadata (str -> str; format in :mod:`actstore.vectors.vector`)."""
        out = {"format": self.format, "model": self.model, "model_fingerprint": self.fingerprint,
               "layer": str(self.layer), "k": k_label(self.k)}
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
        return {**out, **self.operator.to_metadata(), **self.detail}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], where: str = "vector") -> VectorInfo:
        """Read a file's metadata (any actstore version; old method names as aliases)."""
        metadata = {str(key): str(value) for key, value in metadata.items()}
        values: dict[str, Any] = {}
        for key, name in _KEYS.items():
            if key in metadata:
                values[name] = metadata[key]
        details = {key: value for key, value in metadata.items() if key not in _KEYS and key not in OPERATOR_KEYS}
        values["operator"] = Operator.from_metadata(metadata, where)
        for name in ("layer", "hidden_size", "seed"):
            if name in values:
                try:
                    values[name] = int(values[name])
                except ValueError:
                    raise VectorError(f"{where}: metadata {name!r} is {values[name]!r}, not an integer") from None
        if values.get("layer", 0) < 0:
            raise VectorError(f"{where}: metadata 'layer' is {values['layer']}; a layer is 0 or more")
        k = values.pop("k", DENSE)
        try:
            values["k"] = parse_k(k)
        except ValueError:
            raise VectorError(f"{where}: metadata 'k' is {k!r}; expected an integer or {DENSE!r}") from None
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


"""How a direction is applied: the operator a vector file records (:class:`Operator`).

At every hooked position, with ``v`` the vector and ``u = v / |v|`` its unit direction (a sparse
vector's direction lives on its kept coordinates, so ``project`` and ``clamp`` act on those only):

* ``add`` (the default, and what a file without ``operator`` means): ``h + alpha v``;
* ``project`` (directional ablation, Arditi et al. 2024): ``h - alpha (h . u) u``; alpha 1 removes
  the component along ``u``;
* ``clamp``: ``h + alpha (c - h . u) u``; alpha 1 sets the component along ``u`` to ``c``
  (``clamp_value``, e.g. the mean projection of one class).

``layers`` says where: ``""`` the vector's own layer, ``"all"``, ``"L"``, ``"L1-L2"`` or
``"L1,L2,..."``. ``project`` at ``all`` layers is the ablation of Arditi et al.: the component is
removed from the embeddings and from every write to the residual stream (each block's attention
and MLP output), so the residual never holds it; that form equals the weight-orthogonalised model
(:mod:`actstore.vectors.bake`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import VectorError

OPERATORS = ("add", "project", "clamp")
_LAYERS = re.compile(r"^(all|\d+|\d+-\d+|\d+(,\d+)+)$")


@dataclass(frozen=True)
class Operator:
    """The operator of a vector file, validated when made.

    >>> Operator("project", layers="all").describe()
    'project at all layers'
    >>> Operator.from_metadata({}) == Operator()  # a file written before operators: add
    True
    """

    kind: str = "add"
    clamp_value: float | None = None
    layers: str = ""

    def __post_init__(self):
        if self.kind not in OPERATORS:
            raise VectorError(f"operator={self.kind!r}: expected one of {', '.join(OPERATORS)}", param="operator")
        if self.kind == "clamp":
            if self.clamp_value is None or not math.isfinite(float(self.clamp_value)):
                raise VectorError(f"operator 'clamp' needs a finite clamp_value, got {self.clamp_value!r}",
                                  param="clamp_value")
            object.__setattr__(self, "clamp_value", float(self.clamp_value))
        elif self.clamp_value is not None:
            raise VectorError(f"clamp_value={self.clamp_value!r} goes with operator 'clamp', not {self.kind!r}",
                              param="clamp_value")
        layers = str(self.layers).strip().lower().replace(" ", "")
        if layers and not _LAYERS.match(layers):
            raise VectorError(f"apply_layers={self.layers!r}: expected 'all', L, L1-L2 or L1,L2,... (e.g. 2-5)",
                              param="apply_layers")
        object.__setattr__(self, "layers", layers)

    @property
    def additive(self) -> bool:
        return self.kind == "add"

    def resolve_layers(self, own_layer: int, num_layers: int) -> list[int]:
        """The decoder blocks this operator applies at, for a model of ``num_layers`` blocks."""
        if not self.layers:
            wanted = [own_layer]
        elif self.layers == "all":
            wanted = list(range(num_layers))
        elif "-" in self.layers:
            low, high = (int(part) for part in self.layers.split("-"))
            wanted = list(range(low, high + 1))
        else:
            wanted = [int(part) for part in self.layers.split(",")]
        bad = [layer for layer in wanted if not 0 <= layer < num_layers]
        if not wanted or bad:
            raise VectorError(f"apply_layers={self.layers or own_layer!r}: the model has blocks 0..{num_layers - 1}",
                              param="apply_layers")
        return sorted(set(wanted))

    def describe(self) -> str:
        where = {"": "its layer", "all": "all layers"}.get(self.layers, f"layers {self.layers}")
        value = f" to {self.clamp_value:g}" if self.kind == "clamp" else ""
        return f"{self.kind}{value} at {where}"

    def to_metadata(self) -> dict[str, str]:
        out = {"operator": self.kind}
        if self.clamp_value is not None:
            out["clamp_value"] = repr(self.clamp_value)
        if self.layers:
            out["apply_layers"] = self.layers
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str = "vector") -> Operator:
        """The operator a file records; ``add`` at the vector's layer for a file without one."""
        value = metadata.get("clamp_value")
        try:
            clamp = None if value in (None, "") else float(value)
        except ValueError:
            raise VectorError(f"{where}: metadata 'clamp_value' is {value!r}, not a number") from None
        try:
            return cls(metadata.get("operator") or "add", clamp, metadata.get("apply_layers", ""))
        except VectorError as err:
            raise VectorError(f"{where}: {err}") from None


OPERATOR_KEYS = ("operator", "clamp_value", "apply_layers")

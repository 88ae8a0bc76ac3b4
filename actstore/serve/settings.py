"""What a request asks for, checked before it reaches the engine (no vLLM import here).

A client names a vector, a scale and the tokens to steer in the request's extra arguments
(over HTTP: ``vllm_xargs``, whose values are flat)::

    actstore_vector     the name of a file in the server's vectors folder (``NAME`` or ``NAME.safetensors``)
    actstore_alpha      the scale (default 1.0) of the vector's operator: ``alpha * vector`` is added to
                        the residual stream, or a projection or clamp is applied with it
    actstore_positions  all (default) | prompt | response (``generated`` read the same) | from:N, read by the reader of
                        ``actstore steer --positions`` (:meth:`actstore.steering.Positions.from_text`)

:func:`resolve_request` turns those into a :class:`SteeringPayload`: the vector read from the
allow-listed folder (never a path from the request), checked against the served model
(fingerprint, hidden size, layer, site, the layers its operator names), its edit computed by the
functions that compute :func:`actstore.steering.steer`'s (:func:`~actstore.steering.vector_addition`
for an addition, :func:`~actstore.steering.direction_edit` for a projection or clamp) and placed
where steer places it (:meth:`~actstore.vectors.operators.Operator.resolve_layers`; a projection
at all layers on the embeddings and every write to the residual stream), and a ``cache_salt``
derived from everything that changes the activations, so no request can read key/value blocks
computed under another vector.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import VectorError
from ..models.blocks import RESIDUAL_WRITERS
from ..steering import DirectionEdit, Positions, VectorAddition, direction_edit, vector_addition
from ..vectors.vector import SteeringVector, load_vector

VECTOR_KEY = "actstore_vector"
ALPHA_KEY = "actstore_alpha"
POSITIONS_KEY = "actstore_positions"
REQUEST_KEYS = (VECTOR_KEY, ALPHA_KEY, POSITIONS_KEY)
# Where the front end leaves the checked, scaled vector for the workers. A client never sets it:
# any other actstore_* key in a request is refused, this one included.
PAYLOAD_KEY = "actstore_payload"
VECTORS_ENV = "ACTSTORE_SERVE_VECTORS"
VECTOR_SUFFIX = ".safetensors"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class ModelFacts:
    """What a vector is checked against: the served model's weights fingerprint (as
    :func:`actstore.load_model` computes it; empty when unknown), hidden size, block count and the
    language model's ``model_type`` (whether its writes to the residual stream are known:
    :data:`~actstore.models.blocks.RESIDUAL_WRITERS`; empty when unknown)."""

    fingerprint: str
    hidden_size: int
    num_layers: int
    model_type: str = ""
    legacy_fingerprint: str = ""  # the older kind (config, file names and sizes) that stores and vectors made then hold


@dataclass(frozen=True)
class SteeringPayload:
    """A checked request, as the workers read it, carried as plain numbers.

    What is applied is :meth:`edit`: for ``operator`` add, the request's
    :class:`~actstore.steering.VectorAddition` (``values``, float64, on ``indices``, or on every
    coordinate when ``indices`` is None); for project or clamp, its
    :class:`~actstore.steering.DirectionEdit` (``values``: the unit direction, float64, on every
    coordinate; ``target``; ``alpha``). Where: at the output of each decoder block in ``layers``
    or, with ``writes`` (a projection at all layers), on the embeddings and every write to the
    residual stream (:func:`~actstore.models.blocks.residual_writes`)."""

    name: str
    layer: int  # the vector's own layer
    alpha: float
    positions: Positions
    operator: str
    layers: tuple[int, ...]
    writes: bool
    indices: tuple[int, ...] | None
    values: tuple[float, ...]
    target: float
    key: str  # identifies (vector bytes, alpha): the workers cache their tensors by it

    @classmethod
    def of(cls, name: str, vector: SteeringVector, alpha: float, positions: Positions, num_layers: int,
           key: str) -> SteeringPayload:
        """The payload of ``vector`` (checked: :func:`check_against_model`) at ``alpha``, for a model of
        ``num_layers`` decoder blocks: its edit made by the functions :func:`~actstore.steering.steer`
        uses, placed where steer places it."""
        operator = vector.info.operator
        writes = operator.kind == "project" and operator.layers == "all"
        layers = () if writes else tuple(operator.resolve_layers(vector.layer, num_layers))
        head = (name, vector.layer, alpha, positions, operator.kind, layers, writes)
        if operator.additive:
            addition = vector_addition(vector, alpha)
            indices = None if addition.indices is None else tuple(int(i) for i in addition.indices)
            return cls(*head, indices, tuple(float(v) for v in addition.values), 0.0, key)
        edit = direction_edit(vector, alpha)
        return cls(*head, None, tuple(float(v) for v in edit.unit.tolist()), edit.target, key)

    def edit(self) -> VectorAddition | DirectionEdit:
        if self.operator == "add":
            indices = None if self.indices is None else np.asarray(self.indices, dtype=np.int64)
            return VectorAddition(indices, np.asarray(self.values, dtype=np.float64))
        return DirectionEdit(torch.tensor(self.values, dtype=torch.float64), self.target, self.alpha)

    def to_extra(self) -> dict:
        return {"name": self.name, "layer": self.layer, "alpha": self.alpha, "positions": str(self.positions),
                "operator": self.operator, "layers": list(self.layers), "writes": self.writes,
                "indices": None if self.indices is None else list(self.indices), "values": list(self.values),
                "target": self.target, "key": self.key}

    @classmethod
    def from_extra(cls, extra: dict) -> SteeringPayload:
        indices = extra["indices"]
        return cls(str(extra["name"]), int(extra["layer"]), float(extra["alpha"]),
                   Positions.from_text(extra["positions"]), str(extra["operator"]),
                   tuple(int(i) for i in extra["layers"]), bool(extra["writes"]),
                   None if indices is None else tuple(int(i) for i in indices),
                   tuple(float(v) for v in extra["values"]), float(extra["target"]), str(extra["key"]))

    def cache_salt(self, client_salt: str | None = None) -> str:
        """The ``cache_salt`` of a steered request: a hash of the vector (its file's bytes, the
        operator included), alpha and positions (and the client's own salt, so its isolation is
        kept). Unsteered requests keep theirs."""
        text = json.dumps([self.key, str(self.positions), self.layer, client_salt or ""])
        return "actstore-" + hashlib.sha256(text.encode()).hexdigest()[:32]


class VectorFolder:
    """The allow-listed vectors folder: a request names a file in it, nothing else.
    Vectors are read once and reread when their file changes (by size and mtime)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise VectorError(f"vectors folder {str(folder)!r} does not exist or is not a folder")
        self._cache: dict[str, tuple[tuple[int, int], SteeringVector, str]] = {}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*" + VECTOR_SUFFIX) if p.is_file())

    def path_of(self, name) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
            raise VectorError(f"{VECTOR_KEY}={name!r}: a vector is named by a file in the server's vectors "
                              "folder (letters, digits, '.', '_', '-'; no paths)", param=VECTOR_KEY)
        stem = name[: -len(VECTOR_SUFFIX)] if name.endswith(VECTOR_SUFFIX) else name
        path = self.folder / (stem + VECTOR_SUFFIX)
        # The name has no separators, but a symlink in the folder could still point out of it.
        if not path.is_file() or path.resolve().parent != self.folder:
            known = self.names()
            listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
            raise VectorError(f"{VECTOR_KEY}={name!r}: no such vector on this server; it has: {listed}",
                              param=VECTOR_KEY)
        return path

    def load(self, name: str) -> tuple[SteeringVector, str]:
        """``(vector, digest)`` of the file ``name`` names; ``digest`` hashes its bytes."""
        path = self.path_of(name)
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(path.stem)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        vector = load_vector(path)  # validates: NaN/Inf, indices, layer
        self._cache[path.stem] = (stamp, vector, digest)
        return vector, digest


def check_against_model(vector: SteeringVector, facts: ModelFacts, name: str) -> None:
    """Refuse a vector the served model cannot take: other weights, hidden size, layer, the layers
    its operator names, or what the server cannot apply (a site other than the residual stream; a
    projection at all layers on a model whose writes to the residual stream are unknown)."""
    made_for = vector.info.fingerprint
    if made_for and facts.fingerprint and made_for not in (facts.fingerprint, facts.legacy_fingerprint):
        raise VectorError(f"vector {name!r} was made for model {vector.info.model!r} (weights "
                          f"{made_for}); this server's model has weights {facts.fingerprint}", param=VECTOR_KEY)
    if vector.hidden_size != facts.hidden_size:
        raise VectorError(f"vector {name!r} has {vector.hidden_size} dimensions; the served model's hidden size "
                          f"is {facts.hidden_size}", param=VECTOR_KEY)
    if not 0 <= vector.layer < facts.num_layers:
        raise VectorError(f"vector {name!r} is for layer {vector.layer}; the served model has decoder blocks "
                          f"0..{facts.num_layers - 1}", param=VECTOR_KEY)
    operator = vector.info.operator
    if operator.kind == "project" and operator.layers == "all":
        # steer's ablation: every write to the residual stream, whatever the vector's site
        if facts.model_type not in RESIDUAL_WRITERS:
            raise VectorError(f"vector {name!r} is {operator.describe()}: the ablation on every write to the "
                              f"residual stream, which this server does not know for model type "
                              f"{facts.model_type or '(unknown)'!r} (known: {', '.join(sorted(RESIDUAL_WRITERS))})",
                              param=VECTOR_KEY)
        return
    try:
        operator.resolve_layers(vector.layer, facts.num_layers)
    except VectorError as err:
        raise VectorError(f"vector {name!r} is {operator.describe()}: {err}", param=VECTOR_KEY) from None
    site = vector.info.site or "resid"
    if site != "resid":
        raise VectorError(f"vector {name!r} is added at site {site!r}; the server steers the residual stream "
                          "(site 'resid') only", param=VECTOR_KEY)


def parse_alpha(value) -> float:
    if isinstance(value, bool):
        value = None  # True is not a scale
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise VectorError(f"{ALPHA_KEY}={value!r}: expected a number", param=ALPHA_KEY) from None
    if not math.isfinite(alpha):
        raise VectorError(f"{ALPHA_KEY}={value!r}: expected a finite number", param=ALPHA_KEY)
    return alpha


def parse_positions(value) -> Positions:
    """``actstore_positions`` read as ``actstore steer --positions`` is, refused with its message."""
    try:
        return Positions.from_text(value)
    except VectorError as err:
        raise VectorError(str(err), param=POSITIONS_KEY) from None


def resolve_request(extra_args: dict | None, folder: VectorFolder | None, facts: ModelFacts
                    ) -> SteeringPayload | None:
    """The payload a request's extra arguments ask for, or None for an unsteered request.
    Raises :class:`VectorError` (a ValueError) naming what is wrong."""
    extra = dict(extra_args or {})
    unknown = sorted(k for k in extra if k.startswith("actstore") and k not in REQUEST_KEYS)
    if unknown:
        raise VectorError(f"unknown steering argument(s) {', '.join(unknown)}; this server takes "
                          f"{', '.join(REQUEST_KEYS)}", param=unknown[0])
    if VECTOR_KEY not in extra:
        given = [k for k in REQUEST_KEYS if k in extra]
        if given:
            raise VectorError(f"{', '.join(given)} given without {VECTOR_KEY}: name the vector to steer with",
                              param=VECTOR_KEY)
        return None
    alpha = parse_alpha(extra.get(ALPHA_KEY, 1.0))
    positions = parse_positions(extra.get(POSITIONS_KEY, "all"))
    if folder is None:
        raise VectorError(f"{VECTOR_KEY}={extra[VECTOR_KEY]!r}: this server has no vectors folder; start it with "
                          f"'actstore serve --vectors DIR' (or set {VECTORS_ENV})", param=VECTOR_KEY)
    name = extra[VECTOR_KEY]
    vector, digest = folder.load(name)
    check_against_model(vector, facts, name)
    # the file's bytes hold the operator (kind, clamp value, layers): one digest covers them all
    key = hashlib.sha256(f"{digest}:{alpha!r}".encode()).hexdigest()[:32]
    try:
        return SteeringPayload.of(Path(name).stem if name.endswith(VECTOR_SUFFIX) else name, vector, alpha,
                                  positions, facts.num_layers, key)
    except VectorError as err:  # a zero vector has no direction to project or clamp
        raise VectorError(f"vector {name!r}: {err}", param=VECTOR_KEY) from None


def folder_from_env() -> VectorFolder | None:
    """The folder named by ``$ACTSTORE_SERVE_VECTORS`` (set by ``actstore serve``), if any."""
    value = os.environ.get(VECTORS_ENV)
    return VectorFolder(value) if value else None

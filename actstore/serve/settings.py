"""What a request asks for, checked before it reaches the engine (no vLLM import here).

A client names a vector, a scale and the tokens to steer in the request's extra arguments
(over HTTP: ``vllm_xargs``, whose values are flat)::

    actstore_vector     the name of a file in the server's vectors folder (``NAME`` or ``NAME.safetensors``)
    actstore_alpha      the scale (default 1.0): ``alpha * vector`` is added to the residual stream
    actstore_positions  all (default) | prompt | generated | from:N, read by the reader of
                        ``actstore steer --positions`` (:meth:`actstore.steering.Positions.from_text`)

:func:`resolve_request` turns those into a :class:`SteeringPayload`: the vector read from the
allow-listed folder (never a path from the request), checked against the served model
(fingerprint, hidden size, layer, site), its addition computed by the function that computes
:func:`actstore.steering.steer`'s (:func:`actstore.steering.vector_addition`), and a
``cache_salt`` derived from everything that changes the activations, so no request can read
key/value blocks computed under another vector.
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

from ..errors import VectorError
from ..steering import Positions, VectorAddition, vector_addition
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
    :func:`actstore.load_model` computes it; empty when unknown), hidden size and block count."""

    fingerprint: str
    hidden_size: int
    num_layers: int


@dataclass(frozen=True)
class SteeringPayload:
    """A checked request, as the workers read it: :meth:`addition` is the request's
    :class:`~actstore.steering.VectorAddition` (``values``, float64, on ``indices``, or on every
    coordinate when ``indices`` is None), carried as plain numbers."""

    name: str
    layer: int
    alpha: float
    positions: Positions
    indices: tuple[int, ...] | None
    values: tuple[float, ...]
    key: str  # identifies (vector bytes, alpha): the workers cache their tensors by it

    @classmethod
    def of(cls, name: str, layer: int, alpha: float, positions: Positions, addition: VectorAddition,
           key: str) -> SteeringPayload:
        indices = None if addition.indices is None else tuple(int(i) for i in addition.indices)
        return cls(name, layer, alpha, positions, indices, tuple(float(v) for v in addition.values), key)

    def addition(self) -> VectorAddition:
        indices = None if self.indices is None else np.asarray(self.indices, dtype=np.int64)
        return VectorAddition(indices, np.asarray(self.values, dtype=np.float64))

    def to_extra(self) -> dict:
        return {"name": self.name, "layer": self.layer, "alpha": self.alpha, "positions": str(self.positions),
                "indices": None if self.indices is None else list(self.indices), "values": list(self.values),
                "key": self.key}

    @classmethod
    def from_extra(cls, extra: dict) -> SteeringPayload:
        indices = extra["indices"]
        return cls(str(extra["name"]), int(extra["layer"]), float(extra["alpha"]),
                   Positions.from_text(extra["positions"]), None if indices is None else tuple(int(i) for i in indices),
                   tuple(float(v) for v in extra["values"]), str(extra["key"]))

    def cache_salt(self, client_salt: str | None = None) -> str:
        """The ``cache_salt`` of a steered request: a hash of the vector, alpha and positions (and
        the client's own salt, so its isolation is kept). Unsteered requests keep theirs."""
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
    """Refuse a vector the served model cannot take: other weights, hidden size, layer or site."""
    made_for = vector.info.fingerprint
    if made_for and facts.fingerprint and made_for != facts.fingerprint:
        raise VectorError(f"vector {name!r} was made for model {vector.info.model!r} (weights "
                          f"{made_for}); this server's model has weights {facts.fingerprint}", param=VECTOR_KEY)
    if vector.hidden_size != facts.hidden_size:
        raise VectorError(f"vector {name!r} has {vector.hidden_size} dimensions; the served model's hidden size "
                          f"is {facts.hidden_size}", param=VECTOR_KEY)
    if not 0 <= vector.layer < facts.num_layers:
        raise VectorError(f"vector {name!r} is for layer {vector.layer}; the served model has decoder blocks "
                          f"0..{facts.num_layers - 1}", param=VECTOR_KEY)
    operator = vector.info.operator
    if not operator.additive or operator.layers:
        # never a silent add: a projection read as an addition steers the other way (antirez/ds4 PR #970)
        raise VectorError(f"vector {name!r} is {operator.describe()}; this server applies additive vectors at their "
                          "own layer only: steer with it locally (actstore steer, actstore eval) or, for a projection "
                          "at all layers, bake it (actstore vector bake) and serve the baked model", param=VECTOR_KEY)
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
    key = hashlib.sha256(f"{digest}:{alpha!r}".encode()).hexdigest()[:32]
    return SteeringPayload.of(Path(name).stem if name.endswith(VECTOR_SUFFIX) else name, vector.layer, alpha,
                              positions, vector_addition(vector, alpha), key)


def folder_from_env() -> VectorFolder | None:
    """The folder named by ``$ACTSTORE_SERVE_VECTORS`` (set by ``actstore serve``), if any."""
    value = os.environ.get(VECTORS_ENV)
    return VectorFolder(value) if value else None

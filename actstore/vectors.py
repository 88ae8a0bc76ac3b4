"""Steering vectors: the frozen :class:`SteeringVector`, built from statistics by any
method of the registry (:mod:`actstore.vector_info`), and its safetensors file.

Vector file (safetensors, no pickle):

    vector   float32 [hidden]  the steering vector (zeros outside the kept coordinates)
    indices  int64   [k]       kept coordinates, by decreasing rank (all of them for dense)
    enr      float32 [hidden]  ENR of every coordinate (whitened: in the whitened basis)
    (whitened vectors also hold vector_whitened float32 [hidden]; see whitened_vector)
    metadata (str -> str), :meth:`VectorInfo.to_metadata`: format, model, model_fingerprint,
             layer, k ("dense" for dense), method (a name of :data:`METHODS`: "enr" | "whitened" |
             "pca" | "probe" | "lda" | "random" | "letter" | a peer; files before the registry say
             "enr-topk" | "mean-diff" | "whitened-enr-topk", read as enr and whitened), classes (JSON
             {label: count}), pos, neg, position, site ("resid" | "attn" | "mlp"; absent means
             resid), hidden_size, model_group, seed (controls), actstore_version, and the fit's
             details (shrinkage, pairs, explained_variance_ratio, probe_c, probe_fit, source, ...)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .directions import ENR_FLOOR, Direction, enr_scores, keep_top_k, top_k_indices
from .errors import VectorError
from .stores.schema import CaptureSpec
from .vector_info import (
    METHOD_ALIASES,
    METHODS,
    VECTOR_FORMAT,
    LayerInputs,
    Method,
    VectorInfo,
    method_entry,
)

__all__ = ["ENR_FLOOR", "METHODS", "METHOD_ALIASES", "VECTOR_FORMAT", "LayerInputs", "Method", "SteeringVector",
           "VectorInfo", "build", "enr", "enr_scores", "keep_top_k", "load_vector", "save_vector", "top_k_indices",
           "validate_vector", "vector_from_stats", "whitened_vector"]


class SteeringVector:
    """A steering vector for one layer: ``vector: (hidden,) float32``, ``indices`` the kept
    coordinates by decreasing rank, ``enr: (hidden,) float32``, ``info`` its typed provenance
    (:class:`VectorInfo`), ``extra`` further tensors (e.g. ``vector_whitened``). Frozen: make a
    changed copy with :meth:`with_info` or :meth:`replace`.

    ``SteeringVector(vector, indices, enr, layer, metadata)`` (a layer number and a dict), the
    form before :class:`VectorInfo`, still works and is deprecated."""

    __slots__ = ("vector", "indices", "enr", "info", "extra")

    def __init__(self, vector, indices, enr, info: VectorInfo | int, *legacy, extra=None):
        if not isinstance(info, VectorInfo):
            warnings.warn("SteeringVector(vector, indices, enr, layer, metadata) is deprecated; pass "
                          "info=VectorInfo(layer=..., ...)", DeprecationWarning, stacklevel=2)
            metadata = legacy[0] if legacy else None
            extra = legacy[1] if len(legacy) > 1 else extra
            info = VectorInfo.from_metadata({key: value for key, value in (metadata or {}).items()
                                             if key != "layer"}).replace(layer=int(info))
        elif legacy:
            extra = legacy[0]
        for name, value in (("vector", vector), ("indices", indices), ("enr", enr), ("info", info),
                            ("extra", MappingProxyType(dict(extra or {})))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        how = f".replace({name}=...)" if name in self.__slots__ else f".with_info({name}=...)"
        raise AttributeError(f"SteeringVector is frozen: make a changed copy with {how}")

    def __repr__(self) -> str:
        return f"SteeringVector(layer={self.layer}, {self.info.describe()}, hidden={self.hidden_size})"

    def replace(self, **changes) -> SteeringVector:
        """A copy with some of vector, indices, enr, info, extra changed."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return SteeringVector(values["vector"], values["indices"], values["enr"], values["info"],
                              extra=values["extra"])

    def with_info(self, **changes) -> SteeringVector:
        """A copy whose :class:`VectorInfo` has ``changes`` (see :meth:`VectorInfo.replace`)."""
        return self.replace(info=self.info.replace(**changes))

    @property
    def layer(self) -> int:
        return self.info.layer

    @property
    def k(self) -> int | None:
        """Number of kept coordinates; ``None`` for a dense vector."""
        return self.info.k

    @property
    def method(self) -> str | None:
        return self.info.method

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])

    @property
    def metadata(self) -> dict[str, str]:
        """Deprecated: the file's metadata as a new dict (``info.to_metadata()``); read ``info``."""
        warnings.warn("SteeringVector.metadata is deprecated; read SteeringVector.info (a VectorInfo)",
                      DeprecationWarning, stacklevel=2)
        return self.info.to_metadata()


def info_from_stats(stats, inputs: LayerInputs) -> VectorInfo:
    """The provenance a vector built from ``stats`` inherits from its store group."""
    spec = CaptureSpec.from_stats(stats)
    return VectorInfo(layer=inputs.layer, model=spec.model_id, fingerprint=spec.model_fingerprint,
                      position=spec.position, site=spec.site, model_group=str(stats.attrs.get("group", "")),
                      pos=inputs.pos, neg=inputs.neg)


def build(method: str | Method, inputs: LayerInputs, k: int | None = 64, *,
          direction: Direction | None = None) -> SteeringVector:
    """The vector of ``method`` (a :data:`METHODS` entry) at ``inputs``' layer, dense when ``k`` is
    None. ``direction``: one already found by this method (reused across k)."""
    entry = method if isinstance(method, Method) else method_entry(method)
    if entry.direction is None:
        raise VectorError(f"method {entry.name!r} ({entry.description}) is not built from a store's statistics",
                          param="method")
    moments = inputs.moments  # the refusals every method starts with
    found = direction if direction is not None else entry.direction(inputs)
    sparse = entry.sparsifier(found, inputs, k)
    info = info_from_stats(inputs.stats, inputs).replace(
        method=entry.name, k=k, classes={inputs.pos: moments.n_pos, inputs.neg: moments.n_neg},
        hidden_size=int(moments.mean_pos.shape[0]), details=found.details)
    return SteeringVector(sparse.vector, sparse.indices, sparse.enr, info, extra=sparse.extra)


def vector_from_stats(stats, layer: int, k: int | None = 64, *, pos: str = "pos",
                      neg: str = "neg") -> SteeringVector:
    """The ENR top-k vector (dense when ``k`` is None) from an :func:`actstore.open_stats` dataset."""
    return build("enr", LayerInputs(stats, layer, pos, neg), k)


def whitened_vector(stats, covariance, k: int | None = 64, *, pos: str = "pos", neg: str = "neg") -> SteeringVector:
    """ENR top-k in the whitened basis (:func:`actstore.directions.whitened_direction`):
    ``vector`` is the kept whitened components mapped back to the residual basis,
    ``indices`` and ``enr`` are in the whitened basis, ``vector_whitened`` holds the kept
    components themselves, and the info's details hold the ``shrinkage``."""
    return build("whitened", LayerInputs(stats, covariance.layer, pos, neg, covariance=lambda: covariance), k)


def enr(
    store,
    layer: int,
    k: int | None = 64,
    *,
    pos: str = "pos",
    neg: str = "neg",
    model: str | None = None,
    scheduler: str | None = None,
    whiten: bool = False,
) -> SteeringVector:
    """ENR top-k vector (dense when ``k`` is None) for ``layer`` of a store; ``whiten=True``
    ranks in the whitened basis. The same as ``build_vector(store, layer, "enr"|"whitened", k)``.

    Uses the statistics cached in the store, computing them first if they are
    missing or stale (and for whitened one more pass for the layer's covariance).
    """
    from .covariance import group_covariance
    from .stats import group_statistics
    from .stores.group import StoreGroup

    group = StoreGroup.open(store, model)  # opened once for the whole chain
    group.require_layers(layer)
    stats = group_statistics(group, scheduler=scheduler)
    inputs = LayerInputs(stats, layer, pos, neg,
                         covariance=lambda: group_covariance(group, None, layer, stats, scheduler=scheduler),
                         scheduler=scheduler)
    return build("whitened" if whiten else "enr", inputs, k)


def save_vector(vector: SteeringVector, path: str | Path) -> Path:
    """Write a vector file (format in the module docstring), replacing ``path`` atomically."""
    from safetensors.numpy import save

    from ._files import atomic_output

    path = Path(path)
    tensors = {
        "vector": np.ascontiguousarray(vector.vector, dtype=np.float32),
        "indices": np.ascontiguousarray(vector.indices, dtype=np.int64),
        "enr": np.ascontiguousarray(vector.enr, dtype=np.float32),
        **{name: np.ascontiguousarray(value) for name, value in vector.extra.items()},
    }
    # serialised in memory, written by Python: a full disk is an OSError (ENOSPC) the CLI names as
    # such, where safetensors' own writer reports it as a serialisation error
    payload = save(tensors, metadata=vector.info.to_metadata())
    with atomic_output(path) as tmp:
        _write_bytes(tmp, payload)
    return path


def _write_bytes(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)


def _as_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def load_vector(path: str | Path) -> SteeringVector:
    """Read a vector file written by :func:`save_vector`."""
    from safetensors import SafetensorError, safe_open

    from ._files import input_file_problem

    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise VectorError(f"vector file {str(path)!r} {problem}")
    try:
        # framework "pt": numpy has no bfloat16, and a bfloat16 vector file is a valid one
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            metadata = dict(handle.metadata() or {})
            if "vector" not in names:
                raise VectorError(f"{str(path)!r} has no tensor 'vector' (it has {sorted(names)})")
            tensors = {name: _as_numpy(handle.get_tensor(name)) for name in names}
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:  # cut, damaged, odd dtypes
        raise VectorError(f"{str(path)!r} is not a safetensors vector file: {err}") from None
    for name in ("vector", "indices", "enr"):
        if name in tensors and tensors[name].dtype.kind not in _VECTOR_KINDS[name]:
            raise VectorError(f"{str(path)!r}: tensor {name!r} is {tensors[name].dtype}, expected "
                              f"{_VECTOR_KIND_NAMES[name]}; write vector files with actstore (or in that dtype)")
    vector = tensors["vector"].astype(np.float32)
    if vector.ndim != 1:
        raise VectorError(f"{str(path)!r}: 'vector' must be 1-D [hidden], got shape {vector.shape}")
    info = VectorInfo.from_metadata(metadata, repr(str(path)))
    indices = tensors.get("indices", np.flatnonzero(vector)).astype(np.int64)
    enr = tensors.get("enr", np.full_like(vector, np.nan)).astype(np.float32)
    extra = {name: value for name, value in tensors.items() if name not in {"vector", "indices", "enr"}}
    return validate_vector(SteeringVector(vector, indices, enr, info, extra=extra), repr(str(path)))


_VECTOR_KINDS = {"vector": "f", "indices": "iu", "enr": "f"}
_VECTOR_KIND_NAMES = {"vector": "a float dtype", "indices": "an integer dtype", "enr": "a float dtype"}


def validate_vector(vector: SteeringVector, where: str = "vector") -> SteeringVector:
    """Refuse a vector no path should use: non-finite values (float16 overflow, a damaged file),
    kept indices out of range or repeated (a negative layer is refused when the metadata is read). Every reader of vectors calls it."""
    values = np.asarray(vector.vector)
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.isfinite(values))
        raise VectorError(f"{where}: the vector has non-finite values (NaN/Inf) at {len(bad)} coordinate(s), "
                          f"e.g. {bad[:5].tolist()}; rebuild it with 'actstore enr'")
    indices = np.asarray(vector.indices)
    if indices.ndim != 1 or np.any(indices < 0) or np.any(indices >= values.shape[0]):
        raise VectorError(f"{where}: 'indices' must be coordinates in 0..{values.shape[0] - 1}, got "
                          f"{indices[:5].tolist()}{'...' if indices.size > 5 else ''}")
    if len(np.unique(indices)) != len(indices):
        raise VectorError(f"{where}: 'indices' repeats a coordinate")
    return vector

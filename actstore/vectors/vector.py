"""Steering vectors: the frozen :class:`SteeringVector`, built from statistics by any
method of the registry (:mod:`actstore.vectors.methods`, :func:`actstore.vectors.build.build_vector`),
and its safetensors file.

Vector file (safetensors, no pickle):

    vector   float32 [hidden]  the steering vector (zeros outside the kept coordinates)
    indices  int64   [k]       kept coordinates, by decreasing rank (all of them for dense)
    enr      float32 [hidden]  ENR of every coordinate (whitened: in the whitened basis)
    (whitened vectors also hold vector_whitened float32 [hidden])
    metadata (str -> str), :meth:`VectorInfo.to_metadata`: format, model, model_fingerprint,
             layer, k ("dense" for dense), method (a name of :data:`~actstore.vectors.methods.METHODS`:
             an extraction method, a control or a peer; the old names of files written before the
             registry read as their methods, :data:`~actstore.vectors.methods.METHOD_ALIASES`), classes (JSON
             {label: count}), pos, neg, position, site ("resid" | "attn" | "mlp"; absent means
             resid), hidden_size, model_group, seed (controls), actstore_version, and the fit's
             details (shrinkage, pairs, explained_variance_ratio, probe_c, probe_fit, source, ...)
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..errors import VectorError
from .info import VectorInfo

__all__ = ["SteeringVector", "load_vector", "save_vector", "validate_vector"]


class SteeringVector:
    """A steering vector for one layer: ``vector: (hidden,) float32``, ``indices`` the kept
    coordinates by decreasing rank, ``enr: (hidden,) float32``, ``info`` its typed provenance
    (:class:`VectorInfo`), ``extra`` further tensors (e.g. ``vector_whitened``). Frozen: make a
    changed copy with :meth:`with_info` or :meth:`replace`.

    >>> vector = load_vector("v.safetensors")
    >>> vector.layer, vector.hidden_size, vector.k
    (2, 32, 4)
    >>> vector.with_info(seed=3).info.seed
    3
    """

    __slots__ = ("vector", "indices", "enr", "info", "extra")

    def __init__(self, vector, indices, enr, info: VectorInfo, extra=None):
        if not isinstance(info, VectorInfo):
            raise TypeError(f"SteeringVector's info must be a VectorInfo, not {type(info).__name__}")
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


def save_vector(vector: SteeringVector, path: str | Path) -> Path:
    """Write a vector file (format in the module docstring), replacing ``path`` atomically.

    >>> vector = build_vector("acts.zarr", layer=1, k=8)
    >>> path = save_vector(vector, "layer1.safetensors")
    >>> load_vector(path).info == vector.info
    True
    """
    from safetensors.numpy import save

    from .._files import atomic_output

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
    """Read a vector file written by :func:`save_vector`.

    >>> vector = load_vector("v.safetensors")
    >>> vector.info.describe().split()[:2]
    ['enr', 'k=4']
    """
    from safetensors import SafetensorError, safe_open

    from .._files import input_file_problem

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

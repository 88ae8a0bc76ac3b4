"""Steering vectors from statistics: difference of means, ENR, top-k; safetensors I/O.

For a layer, with per-class means ``mu``, unbiased variances ``var`` and counts ``n``::

    v     = mu_pos - mu_neg
    ENR_i = |v_i| / max(sqrt(var_pos_i / n_pos + var_neg_i / n_neg), 1e-8)

The sparse vector keeps the ``k`` coordinates of largest ENR and zeroes the
rest; the dense vector is ``v`` itself.

Vector file (safetensors, no pickle):

    vector   float32 [hidden]  the steering vector (zeros outside the kept coordinates)
    indices  int64   [k]       kept coordinates, by decreasing ENR (all of them for dense)
    enr      float32 [hidden]  ENR of every coordinate
    (whitened vectors also hold vector_whitened float32 [hidden]; see whitened_vector)
    metadata (str -> str): format, model, model_fingerprint, layer, k ("dense" for dense),
             method ("enr-topk" | "mean-diff" | "whitened-enr-topk" | "pca" | "probe" | "lda"),
             classes (JSON {label: count}), pos, neg, position, site ("resid" | "attn" | "mlp";
             absent means resid), hidden_size, actstore_version
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import VectorError

VECTOR_FORMAT = "actstore.vector/1"
ENR_FLOOR = 1e-8


@dataclass
class SteeringVector:
    """A steering vector for one layer. ``vector: (hidden,) float32``."""

    vector: np.ndarray
    indices: np.ndarray
    enr: np.ndarray
    layer: int
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # further tensors, e.g. vector_whitened

    @property
    def k(self) -> int | None:
        """Number of kept coordinates; ``None`` for a dense vector."""
        return None if self.metadata.get("k", "dense") == "dense" else int(self.metadata["k"])

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])


def enr_scores(mean_pos, mean_neg, var_pos, var_neg, n_pos, n_neg) -> np.ndarray:
    """Effect-to-noise ratio per coordinate (float64; see module docstring)."""
    diff = np.asarray(mean_pos, np.float64) - np.asarray(mean_neg, np.float64)
    noise = np.sqrt(np.asarray(var_pos, np.float64) / n_pos + np.asarray(var_neg, np.float64) / n_neg)
    return np.abs(diff) / np.maximum(noise, ENR_FLOOR)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first; ties go to the lower index."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[:k].astype(np.int64)


def keep_top_k(values: np.ndarray, scores: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, kept)``: the ``k`` coordinates of largest score, largest first,
    and ``values`` with every other coordinate zeroed. ``k=None`` keeps all."""
    hidden = values.shape[0]
    if k is None:
        return top_k_indices(scores, hidden), values
    _check_k(k, hidden)
    indices = top_k_indices(scores, k)
    kept = np.zeros_like(values)
    kept[indices] = values[indices]
    return indices, kept


def _check_k(k, hidden: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise VectorError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= hidden:
        raise VectorError(f"k={k} is out of range: expected 1 <= k <= hidden size ({hidden})")


def check_two_classes(pos: str, neg: str) -> None:
    """A contrast needs two classes: ``pos == neg`` would give a zero vector, said to be written."""
    if pos == neg:
        raise VectorError(f"pos and neg are both {pos!r}: a contrast needs two different classes",
                          param=("pos", "neg"))


def vector_from_stats(
    stats, layer: int, k: int | None = 64, *, pos: str = "pos", neg: str = "neg"
) -> SteeringVector:
    """Build the ENR top-k vector (or the dense one when ``k`` is None) from an
    :func:`actstore.open_stats` dataset."""
    check_two_classes(pos, neg)
    layers = [int(x) for x in stats["layer"].values]
    if layer not in layers:
        raise VectorError(f"layer {layer} was not captured; the store has layers {layers}")
    classes = [str(c) for c in stats["class"].values]
    per_class = {}
    for label, flag in ((pos, "--pos"), (neg, "--neg")):
        if label not in classes:
            raise VectorError(f"class {label!r} ({flag}) is not in the store; it has classes {classes}")
        sel = stats.sel({"class": label, "layer": layer})
        count = int(sel["count"])
        if count < 2:
            raise VectorError(
                f"class {label!r} has {count} sample(s) at layer {layer}; ENR needs at least 2 per class"
            )
        per_class[label] = (sel["mean"].values, sel["var"].values, count)
    (mean_pos, var_pos, n_pos), (mean_neg, var_neg, n_neg) = per_class[pos], per_class[neg]
    for name, values in (("mean", mean_pos), ("var", var_pos), ("mean", mean_neg), ("var", var_neg)):
        if not np.all(np.isfinite(values)):
            raise VectorError(f"non-finite {name} in the statistics at layer {layer}; recapture the data")
    hidden = mean_pos.shape[0]
    scores = enr_scores(mean_pos, mean_neg, var_pos, var_neg, n_pos, n_neg)
    indices, vector = keep_top_k(mean_pos - mean_neg, scores, k)
    metadata = {
        "format": VECTOR_FORMAT,
        "model": str(stats.attrs.get("model_id", "")),
        "model_fingerprint": str(stats.attrs.get("model_fingerprint", "")),
        "layer": str(layer),
        "k": "dense" if k is None else str(int(k)),
        "method": "mean-diff" if k is None else "enr-topk",
        "classes": json.dumps({pos: n_pos, neg: n_neg}),
        "pos": pos,
        "neg": neg,
        "position": str(stats.attrs.get("position", "")),
        "site": str(stats.attrs.get("site", "resid")),
        "hidden_size": str(hidden),
        "actstore_version": __version__,
    }
    return SteeringVector(vector.astype(np.float32), indices, scores.astype(np.float32), layer, metadata)


def enr(
    store: str | Path,
    layer: int,
    k: int | None = 64,
    *,
    pos: str = "pos",
    neg: str = "neg",
    model: str | None = None,
    scheduler: str | None = None,
    whiten: bool = False,
) -> SteeringVector:
    """ENR top-k vector (dense when ``k`` is None) for ``layer`` of a store.

    Uses the statistics cached in the store, computing them first if they are
    missing or stale. ``whiten=True`` ranks in the whitened basis (one more
    pass over the layer for its covariance; see :func:`whitened_vector`).
    """
    from .stats import group_statistics
    from .stores.roots import open_root, select_group

    group = select_group(open_root(store, mode="r"), model, store)  # opened once for the whole chain
    stats = group_statistics(group, store, scheduler=scheduler)
    if whiten:
        from .covariance import group_covariance

        if layer not in [int(x) for x in stats["layer"].values]:
            vector_from_stats(stats, layer, k, pos=pos, neg=neg)  # raises the usual message
        covariance = group_covariance(group, store, layer, stats, scheduler=scheduler)
        vector = whitened_vector(stats, covariance, k, pos=pos, neg=neg)
    else:
        vector = vector_from_stats(stats, layer, k, pos=pos, neg=neg)
    group_attrs = stats.attrs
    vector.metadata["model_group"] = str(group_attrs.get("group", ""))
    return vector


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
    payload = save(tensors, metadata={**vector.metadata, "layer": str(vector.layer)})
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
    try:
        layer = int(metadata.get("layer", "-1"))
    except ValueError:
        raise VectorError(f"{str(path)!r}: metadata 'layer' is {metadata.get('layer')!r}, not an integer") from None
    indices = tensors.get("indices", np.flatnonzero(vector)).astype(np.int64)
    enr = tensors.get("enr", np.full_like(vector, np.nan)).astype(np.float32)
    extra = {name: value for name, value in tensors.items() if name not in {"vector", "indices", "enr"}}
    return validate_vector(SteeringVector(vector, indices, enr, layer, metadata, extra), repr(str(path)))


_VECTOR_KINDS = {"vector": "f", "indices": "iu", "enr": "f"}
_VECTOR_KIND_NAMES = {"vector": "a float dtype", "indices": "an integer dtype", "enr": "a float dtype"}


def validate_vector(vector: SteeringVector, where: str = "vector") -> SteeringVector:
    """Refuse a vector no path should use: non-finite values (float16 overflow, a damaged file),
    kept indices out of range or repeated, a negative layer. Every reader of vectors calls it."""
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
    if vector.layer < 0 and "layer" in vector.metadata:
        raise VectorError(f"{where}: metadata 'layer' is {vector.layer}; a layer is 0 or more")
    return vector


def whitened_vector(stats, covariance, k: int | None = 64, *, pos: str = "pos", neg: str = "neg") -> SteeringVector:
    """ENR top-k in the whitened basis (the paper's "natural extension").

    With Sigma the Ledoit-Wolf-shrunk pooled within-class covariance of the
    layer and W = Sigma^(-1/2) (symmetric):

    * ranked: the coordinates of u = W v, by ENR_i = |u_i| / sqrt((W S_pos W)_ii / n_pos
      + (W S_neg W)_ii / n_neg), S_c the class covariances (so the noise of each
      whitened coordinate is its own, not assumed 1);
    * exported: ``vector`` = Sigma^(1/2) u_k, the kept whitened components mapped
      back to the residual basis the model is steered in (dense there; with every
      coordinate kept it equals v exactly); ``indices`` and ``enr`` are in the
      whitened basis; ``vector_whitened`` holds u_k itself; metadata records
      ``method=whitened-enr-topk`` and the ``shrinkage``.
    """
    layer = covariance.layer
    plain = vector_from_stats(stats, layer, None, pos=pos, neg=neg)  # validates layer, classes, counts
    diff = covariance.mean_difference(pos, neg)
    sigma, _, shrinkage = covariance.shrunk([pos, neg])
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    if eigenvalues.min() <= 0 or not np.all(np.isfinite(eigenvalues)):
        raise VectorError(f"the shrunk covariance of layer {layer} is not positive definite; capture more samples")
    inv_sqrt = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
    sqrt = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
    u = inv_sqrt @ diff
    n_pos, n_neg = covariance.counts[covariance.classes.index(pos)], covariance.counts[covariance.classes.index(neg)]
    noise = np.sqrt(
        np.einsum("ij,jk,ki->i", inv_sqrt, covariance.class_covariance(pos), inv_sqrt) / n_pos
        + np.einsum("ij,jk,ki->i", inv_sqrt, covariance.class_covariance(neg), inv_sqrt) / n_neg
    )
    scores = np.abs(u) / np.maximum(noise, ENR_FLOOR)
    indices, kept = keep_top_k(u, scores, k)
    metadata = {**plain.metadata, "k": "dense" if k is None else str(int(k)),
                "method": "whitened-enr-topk", "shrinkage": f"{shrinkage:.6g}"}
    return SteeringVector((sqrt @ kept).astype(np.float32), indices, scores.astype(np.float32), layer, metadata,
                          {"vector_whitened": kept.astype(np.float32)})

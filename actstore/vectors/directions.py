"""Directions of one layer, the math of every extraction method: the effect-to-noise ratio
and its top-k, the whitened ENR, the first principal axis of pair differences and Fisher's LDA (the logistic probe's is in
:mod:`actstore.vectors.probe`). Each takes statistics already computed (a stats dataset, a
:class:`~actstore.stats.covariance.LayerCovariance`, a store dataset) and returns a
:class:`Direction`; :mod:`actstore.vectors.vector` turns a direction into a vector.

For a layer, with per-class means ``mu``, unbiased variances ``var`` and counts ``n``::

    v     = mu_pos - mu_neg
    ENR_i = |v_i| / max(sqrt(var_pos_i / n_pos + var_neg_i / n_neg), 1e-8)

See :mod:`actstore.vectors.build` for what each method computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._dask import scheduler_context
from ..errors import VectorError

ENR_FLOOR = 1e-8


@dataclass(frozen=True)
class Direction:
    """What a method finds at one layer, before sparsity.

    ``values``: (hidden,) float64, the direction in its own basis (the mean difference for
    enr, its whitened image for whitened, a unit vector for pca, probe and lda);
    ``rank``: (hidden,) float64 >= 0, the score that picks the top-k coordinates;
    ``back``: the (hidden, hidden) map from that basis to the residual basis (whitened only);
    ``details``: fit details recorded with the vector (shrinkage, pairs, ...)."""

    method: str
    layer: int
    values: np.ndarray
    rank: np.ndarray
    details: dict[str, str] = field(default_factory=dict)
    back: np.ndarray | None = None

    @property
    def unit(self) -> np.ndarray:
        """``values`` scaled to norm 1."""
        return self.values / np.linalg.norm(self.values)


# ----- ENR and top-k -------------------------------------------------------------------------------

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
    check_k(k, hidden)
    indices = top_k_indices(scores, k)
    kept = np.zeros_like(values)
    kept[indices] = values[indices]
    return indices, kept


def check_k(k, hidden: int) -> None:
    """Refuse a ``k`` that is not an integer in ``1..hidden``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise VectorError(f"k must be an integer, got {k!r}", param="k")
    if not 1 <= k <= hidden:
        raise VectorError(f"k={k} is out of range: expected 1 <= k <= hidden size ({hidden})", param="k")


@dataclass(frozen=True)
class ClassMoments:
    """The two classes' moments at one layer, checked: ``mean_*``/``var_*`` (hidden,), counts >= 2."""

    layer: int
    pos: str
    neg: str
    mean_pos: np.ndarray
    var_pos: np.ndarray
    n_pos: int
    mean_neg: np.ndarray
    var_neg: np.ndarray
    n_neg: int

    @property
    def difference(self) -> np.ndarray:
        return self.mean_pos - self.mean_neg

    @property
    def enr(self) -> np.ndarray:
        return enr_scores(self.mean_pos, self.mean_neg, self.var_pos, self.var_neg, self.n_pos, self.n_neg)


def class_moments(stats, layer: int, pos: str = "pos", neg: str = "neg") -> ClassMoments:
    """The moments of ``pos`` and ``neg`` at ``layer`` of an :func:`actstore.open_stats` dataset,
    refused (:class:`~actstore.errors.VectorError`) when a class is missing, a class has fewer
    than 2 samples or a moment is not finite: the checks every method starts with (the layer is
    checked once, at the door: :meth:`~actstore.stores.group.StoreGroup.require_layers`)."""
    if pos == neg:  # a zero vector, said to be written
        raise VectorError(f"pos and neg are both {pos!r}: a contrast needs two different classes",
                          param=("pos", "neg"))
    classes = [str(c) for c in stats["class"].values]
    per_class = {}
    for label, param in ((pos, "pos"), (neg, "neg")):
        if label not in classes:
            raise VectorError(f"class {label!r} ({param}) is not in the store; it has classes {classes}",
                              param=param)
        sel = stats.sel({"class": label, "layer": layer})
        count = int(sel["count"])
        if count < 2:
            raise VectorError(
                f"class {label!r} has {count} sample(s) at layer {layer}; ENR needs at least 2 per class"
            )
        per_class[label] = (sel["mean"].values, sel["var"].values, count)
    for label in (pos, neg):
        for name, values in zip(("mean", "var"), per_class[label][:2]):
            if not np.all(np.isfinite(values)):
                raise VectorError(f"non-finite {name} in the statistics at layer {layer}; recapture the data")
    if np.array_equal(per_class[pos][0], per_class[neg][0]):
        raise VectorError(f"classes {pos!r} and {neg!r} have the same mean at layer {layer} (identical texts?): "
                          "every method's vector would be zero")
    return ClassMoments(layer, pos, neg, *per_class[pos], *per_class[neg])


def enr_direction(moments: ClassMoments) -> Direction:
    """The mean difference, ranked by ENR."""
    return Direction("enr", moments.layer, moments.difference, moments.enr)


def whitened_direction(covariance, pos: str = "pos", neg: str = "neg") -> Direction:
    """ENR in the whitened basis (the paper's "natural extension").

    With Sigma the Ledoit-Wolf-shrunk pooled within-class covariance of the layer and
    W = Sigma^(-1/2) (symmetric): ``values`` is u = W v, ranked by
    ENR_i = |u_i| / sqrt((W S_pos W)_ii / n_pos + (W S_neg W)_ii / n_neg), S_c the class
    covariances (so the noise of each whitened coordinate is its own, not assumed 1);
    ``back`` is Sigma^(1/2), which maps kept whitened components back to the residual basis
    (dense there; with every coordinate kept it gives v exactly)."""
    layer = covariance.layer
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
    return Direction("whitened", layer, u, scores, {"shrinkage": f"{shrinkage:.6g}"}, back=sqrt)


# ----- pairs and their differences ---------------------------------------------------------------

def pair_rows(classes: np.ndarray, pair_ids: np.ndarray, pos: str, neg: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(pos_rows, neg_rows)`` of the pairs that have exactly one
    ``pos`` row and one ``neg`` row, ordered by ``pair_id``."""
    classes = np.asarray(classes).astype(str)
    pair_ids = np.asarray(pair_ids, dtype=np.int64)
    rows = {}
    for label in (pos, neg):
        mine = np.flatnonzero(classes == label)
        ids, first, counts = np.unique(pair_ids[mine], return_index=True, return_counts=True)
        if np.any(counts > 1):
            raise VectorError(
                f"class {label!r} has {int((counts > 1).sum())} pair_id(s) with several rows (a capture with "
                "--position all or mean over a sequence of rows); pair differences need one row per text: "
                "capture with --position last"
            )
        rows[label] = dict(zip(ids.tolist(), mine[first].tolist()))
    common = sorted(set(rows[pos]) & set(rows[neg]))
    if len(common) < 2:
        raise VectorError(f"only {len(common)} pair(s) have both a {pos!r} and a {neg!r} row (joined by pair_id); "
                          "pca needs at least 2 pairs")
    return (np.array([rows[pos][p] for p in common], dtype=np.int64),
            np.array([rows[neg][p] for p in common], dtype=np.int64))


def _diff_state(block: np.ndarray) -> np.ndarray:
    """``(1, hidden + 2, hidden)``: n, mean and the centred scatter matrix of a block of differences."""
    block = np.asarray(block, dtype=np.float64)
    n, hidden = block.shape
    out = np.zeros((1, hidden + 2, hidden))
    out[0, 0] = n
    if n:
        mean = block.mean(axis=0)
        centred = block - mean
        out[0, 1] = mean
        out[0, 2:] = centred.T @ centred
    return out


def _to_state(x, axis, keepdims=True, computing_meta=False, **kwargs):
    if computing_meta:
        return x
    return {"n": float(x[0, 0, 0]), "mean": x[0, 1], "m2": x[0, 2:]}


def _merge_states(states, axis, keepdims=True, computing_meta=False, **kwargs):
    """Chan's update for a mean vector and a scatter matrix."""
    if computing_meta:
        return states
    if isinstance(states, dict):
        return states
    merged = None
    for state in states:
        state = _merge_states(state, axis) if isinstance(state, list) else state
        if merged is None:
            merged = state
            continue
        n = merged["n"] + state["n"]
        if state["n"] == 0:
            continue
        if merged["n"] == 0:
            merged = state
            continue
        delta = state["mean"] - merged["mean"]
        merged = {"n": n, "mean": merged["mean"] + delta * state["n"] / n,
                  "m2": merged["m2"] + state["m2"] + np.outer(delta, delta) * merged["n"] * state["n"] / n}
    return merged


def _finish_state(states, axis, keepdims=False, computing_meta=False, **kwargs):
    if computing_meta:
        return states
    state = _merge_states(states, axis)
    hidden = state["mean"].shape[0]
    out = np.zeros((hidden + 2, hidden))
    out[0] = state["n"]
    out[1] = state["mean"]
    out[2:] = state["m2"]
    return out


def difference_moments(acts, pos_rows: np.ndarray, neg_rows: np.ndarray, *, scheduler: str | None = None,
                       split_every: int = 8) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, mean, scatter)`` of the pair differences ``acts[pos_rows] - acts[neg_rows]``
    (``acts``: one layer, ``(sample, hidden)``, dask or numpy), in one streaming pass.
    ``scatter`` is the centred sum of outer products (hidden x hidden, float64)."""
    import dask
    import dask.array as da

    acts = acts if isinstance(acts, da.Array) else da.asarray(acts)
    acts = acts.rechunk({1: -1})
    rows = max(1, int(acts.chunks[0][0]))
    diffs = (acts[pos_rows].astype(np.float64) - acts[neg_rows].astype(np.float64)).rechunk({0: rows})
    hidden = int(acts.shape[1])
    states = da.blockwise(_diff_state, "iab", diffs, "ik", new_axes={"a": hidden + 2, "b": hidden},
                          adjust_chunks={"i": 1}, concatenate=True, dtype=np.float64, meta=np.empty((0, 0, 0)))
    reduced = da.reduction(states, _to_state, _finish_state, combine=_merge_states, axis=0, keepdims=False,
                           concatenate=False, dtype="f8", split_every=split_every, name="pair-difference-moments",
                           meta=np.empty((0, 0)))
    with scheduler_context(scheduler):
        (out,) = dask.compute(reduced)
    return int(round(out[0, 0])), out[1], out[2:]


def principal_axis(scatter: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Unit first eigenvector of ``scatter``, pointing along ``mean`` (the mean difference)."""
    eigenvalues, eigenvectors = np.linalg.eigh(scatter)
    axis = eigenvectors[:, -1]
    return -axis if float(axis @ mean) < 0 else axis


def pca_direction(ds, layer: int, *, pos: str = "pos", neg: str = "neg", scheduler: str | None = None) -> Direction:
    """repeng's ``pca_diff`` direction of ``layer`` from a store dataset (:func:`actstore.open_store`)."""
    pos_rows, neg_rows = pair_rows(ds["class"].values, ds["pair_id"].values, pos, neg)
    acts = ds["acts"].sel(layer=layer).data
    n, mean, scatter = difference_moments(acts, pos_rows, neg_rows, scheduler=scheduler)
    if not np.all(np.isfinite(scatter)):
        raise VectorError(f"non-finite pair differences at layer {layer}; recapture the data")
    unit = principal_axis(scatter, mean)
    eigenvalues = np.linalg.eigvalsh(scatter)
    explained = float(eigenvalues[-1] / eigenvalues.sum()) if eigenvalues.sum() > 0 else float("nan")
    return Direction("pca", layer, unit, np.abs(unit),
                     {"pairs": str(n), "explained_variance_ratio": f"{explained:.6g}"})


# ----- Fisher's LDA --------------------------------------------------------------------------------

def lda_direction(stats, covariance, *, pos: str = "pos", neg: str = "neg") -> Direction:
    """Fisher's direction Sigma^-1 (mu_pos - mu_neg), Sigma shrunk as in the whitened method."""
    layer = covariance.layer
    diff = covariance.mean_difference(pos, neg)
    sigma, pooled, shrinkage = covariance.shrunk([pos, neg])
    try:
        weights = np.linalg.solve(sigma, diff)
    except np.linalg.LinAlgError:
        raise VectorError(f"the shrunk covariance of layer {layer} is singular; capture more samples") from None
    norm = float(np.linalg.norm(weights))
    if norm == 0 or not np.isfinite(norm):
        raise VectorError(f"the LDA direction of layer {layer} is zero or not finite")
    sd = np.sqrt(np.maximum(np.diag(pooled), 0))
    return Direction("lda", layer, weights / norm, np.abs(weights / norm) * sd, {"shrinkage": f"{shrinkage:.6g}"})


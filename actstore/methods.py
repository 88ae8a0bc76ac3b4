"""Every extraction method from one store: ENR top-k, whitened ENR, the first
principal axis of pair differences, a logistic probe and Fisher's LDA.

A method gives a **direction** for a layer; :func:`vector_from_direction` turns
a direction into the usual :class:`~actstore.vectors.SteeringVector`, dense or
k-sparse, so that every method writes the same file and is steered the same way.

Methods (``method`` in the vector's metadata):

``enr`` / ``mean-diff``
    v = mu_pos - mu_neg, top-k by ENR (:func:`actstore.vectors.vector_from_stats`).
``whitened``
    top-k by ENR in the whitened basis (:func:`actstore.vectors.whitened_vector`).
``pca``
    repeng's ``pca_diff``: the first principal axis of the per-pair differences
    d_p = x_pos(p) - x_neg(p) (pairs joined by ``pair_id``; the differences are
    centred, as scikit-learn's PCA in repeng centres them), from their streaming
    covariance (one Dask pass, hidden x hidden, never the n x hidden matrix),
    sign-aligned so that it points along the mean difference.
``probe``
    the weight vector of an L2-regularised logistic regression separating pos
    from neg, fit on coordinates standardised by the pooled within-class
    standard deviation and mapped back (w_i / sd_i), so that its decision
    function is the same in the residual basis. scikit-learn where the samples
    fit in ``max_in_memory`` bytes; otherwise the same objective minimised by
    L-BFGS with each loss and gradient one streaming Dask pass.
``lda``
    Fisher's discriminant w = Sigma^-1 (mu_pos - mu_neg), Sigma the
    Ledoit-Wolf-shrunk pooled within-class covariance of the whitened method.

Scale: a direction u (unit norm) is steered as ``(u . v) u`` with v the
difference of means, the part of v along u. So ``--alpha 1`` moves the mean
projection onto u by as much as the mean difference does, and with the
default alphas (fractions of the residual norm) only the direction matters.

Sparsity: ``k`` keeps the k coordinates of largest rank score (ENR for enr;
|u_i| for pca; the standardised weight |w_i| sd_i for probe and lda), then
rescales as above. ``indices`` lists them by decreasing score; the file's
``enr`` tensor is always the plain ENR of every coordinate, for comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import VectorError
from .stats import group_statistics, scheduler_context
from .stores.reader import group_dataset
from .stores.roots import open_root, select_group
from .vectors import SteeringVector, check_two_classes, keep_top_k, vector_from_stats, whitened_vector

METHODS = ("enr", "whitened", "pca", "probe", "lda")
DIRECTION_METHODS = ("pca", "probe", "lda")
PROBE_C = 1.0
MAX_IN_MEMORY = 512 << 20


@dataclass
class Direction:
    """A unit direction for one layer and the score that ranks its coordinates for top-k."""

    method: str
    layer: int
    unit: np.ndarray  # (hidden,) float64, norm 1
    rank: np.ndarray  # (hidden,) float64, >= 0
    metadata: dict[str, str] = field(default_factory=dict)


def vector_from_direction(direction: Direction, stats, k: int | None = None, *, pos: str = "pos",
                          neg: str = "neg") -> SteeringVector:
    """The steering vector of ``direction``: ``(u . v) u`` with u the (k-sparse,
    renormalised) direction and v the difference of means of ``stats``."""
    plain = vector_from_stats(stats, direction.layer, None, pos=pos, neg=neg)  # validates; v and ENR
    diff = plain.vector.astype(np.float64)
    indices, kept = keep_top_k(direction.unit, direction.rank, k)
    norm = float(np.linalg.norm(kept))
    if not np.isfinite(norm) or norm == 0:
        raise VectorError(f"the {direction.method} direction of layer {direction.layer} is zero on its top {k} "
                          "coordinates")
    unit = kept / norm
    vector = float(unit @ diff) * unit
    metadata = {**plain.metadata, **direction.metadata, "method": direction.method,
                "k": "dense" if k is None else str(int(k))}
    return SteeringVector(vector.astype(np.float32), indices, plain.enr, direction.layer, metadata)


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


# ----- the logistic probe --------------------------------------------------------------------------

def pooled_scale(stats, layer: int, pos: str, neg: str) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, sd)``: the count-weighted mean of the two classes and the pooled
    within-class standard deviation (floored) of every coordinate."""
    sel = {c: stats.sel({"class": c, "layer": layer}) for c in (pos, neg)}
    counts = {c: float(sel[c]["count"]) for c in (pos, neg)}
    total = counts[pos] + counts[neg]
    centre = sum(sel[c]["mean"].values * counts[c] for c in (pos, neg)) / total
    pooled = sum(sel[c]["var"].values * (counts[c] - 1) for c in (pos, neg)) / (total - 2)
    sd = np.sqrt(np.maximum(pooled, 0))
    floor = max(float(np.median(sd)) * 1e-6, 1e-12)
    return centre, np.maximum(sd, floor)


def _logistic_loss_grad(block, labels, w, b, centre, sd):
    """Summed logistic loss and its gradient (w, b) over one block (labels in {0, 1})."""
    from scipy.special import expit, log_expit

    x = (np.asarray(block, dtype=np.float64) - centre) / sd
    y = np.asarray(labels, dtype=np.float64)
    z = x @ w + b
    sign = 2 * y - 1
    loss = -float(np.sum(log_expit(sign * z)))
    residual = expit(z) - y
    out = np.empty((1, w.shape[0] + 2))
    out[0, 0] = loss
    out[0, 1] = float(residual.sum())
    out[0, 2:] = x.T @ residual
    return out


def fit_probe(acts, labels: np.ndarray, centre: np.ndarray, sd: np.ndarray, *, c: float = PROBE_C,
              max_in_memory: int = MAX_IN_MEMORY, scheduler: str | None = None,
              tol: float = 1e-8) -> tuple[np.ndarray, float, str]:
    """L2 logistic regression of ``labels`` (1 = pos) on ``(acts - centre) / sd``:
    minimises ``c * sum(log-loss) + |w|^2 / 2`` (scikit-learn's objective; the
    intercept is not penalised). Returns ``(w, b, how)`` in the standardised basis,
    ``how`` = ``"sklearn"`` or ``"streaming-lbfgs"``."""
    import dask
    import dask.array as da
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=np.int64)
    n, hidden = int(acts.shape[0]), int(acts.shape[1])
    if n * hidden * 8 <= max_in_memory:
        from sklearn.linear_model import LogisticRegression

        x = (np.asarray(acts.compute() if isinstance(acts, da.Array) else acts, dtype=np.float64) - centre) / sd
        model = LogisticRegression(C=c, tol=tol, max_iter=10_000).fit(x, labels)
        return model.coef_[0].astype(np.float64), float(model.intercept_[0]), "sklearn"
    acts = acts if isinstance(acts, da.Array) else da.asarray(acts)
    acts = acts.rechunk({1: -1})
    labels_da = da.from_array(labels, chunks=(acts.chunks[0],))

    def objective(theta):
        w, b = theta[:hidden], theta[hidden]
        parts = da.blockwise(_logistic_loss_grad, "ij", acts, "ik", labels_da, "i", new_axes={"j": hidden + 2},
                             adjust_chunks={"i": 1}, concatenate=True, dtype=np.float64, w=w, b=b,
                             centre=centre, sd=sd)
        (total,) = dask.compute(parts.sum(axis=0))
        loss = c * total[0] + 0.5 * float(w @ w)
        grad = np.concatenate([c * total[2:] + w, [c * total[1]]])
        return loss, grad

    with scheduler_context(scheduler):
        result = minimize(objective, np.zeros(hidden + 1), jac=True, method="L-BFGS-B",
                          options={"maxiter": 1000, "gtol": tol, "ftol": 1e-14})
    if not np.all(np.isfinite(result.x)):
        raise VectorError("the streaming probe fit diverged (non-finite weights)")
    return result.x[:hidden], float(result.x[hidden]), "streaming-lbfgs"


def probe_direction(ds, stats, layer: int, *, pos: str = "pos", neg: str = "neg", c: float = PROBE_C,
                    max_in_memory: int = MAX_IN_MEMORY, scheduler: str | None = None) -> Direction:
    """The logistic probe's direction of ``layer`` (see the module docstring)."""
    classes = np.asarray(ds["class"].values).astype(str)
    rows = np.flatnonzero((classes == pos) | (classes == neg))
    acts = ds["acts"].sel(layer=layer).data
    if rows.size != acts.shape[0]:
        acts = acts[rows]
    labels = (classes[rows] == pos).astype(np.int64)
    centre, sd = pooled_scale(stats, layer, pos, neg)
    weights, _, how = fit_probe(acts, labels, centre, sd, c=c, max_in_memory=max_in_memory, scheduler=scheduler)
    raw = weights / sd  # the same decision function in the residual basis
    norm = float(np.linalg.norm(raw))
    if norm == 0 or not np.isfinite(norm):
        raise VectorError(f"the probe at layer {layer} has zero weights (C={c} too small?)")
    return Direction("probe", layer, raw / norm, np.abs(weights),
                     {"probe_c": f"{c:g}", "probe_fit": how, "probe_samples": str(len(rows))})


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


# ----- one entry point -----------------------------------------------------------------------------

class LayerMethods:
    """Vectors of one layer by any method, each pass over the store made once.

    ``vector(method, k)`` builds what :data:`METHODS` names; the covariance
    (whitened, lda), the pair-difference covariance (pca) and the probe fit are
    computed on first use and reused for every k.
    """

    def __init__(self, group, path: str | Path, stats, layer: int, *, pos: str = "pos", neg: str = "neg",
                 scheduler: str | None = None, probe_c: float = PROBE_C):
        check_two_classes(pos, neg)
        self.group, self.path, self.stats, self.layer = group, path, stats, int(layer)
        self.pos, self.neg, self.scheduler, self.probe_c = pos, neg, scheduler, probe_c
        self._covariance = None
        self._directions: dict[str, Direction] = {}

    def _needs_activations(self, method: str) -> None:
        if self.stats.attrs.get("stats_only"):
            raise VectorError(f"method {method!r} needs the activations, and {str(self.path)!r} was captured "
                              "with --stats-only (moments only); capture without it", param="method")

    def covariance(self):
        if self._covariance is None:
            from .covariance import group_covariance

            self._needs_activations("whitened/lda")
            self._covariance = group_covariance(self.group, self.path, self.layer, self.stats,
                                                scheduler=self.scheduler)
        return self._covariance

    def direction(self, method: str) -> Direction:
        if method not in self._directions:
            self._needs_activations(method)
            vector_from_stats(self.stats, self.layer, None, pos=self.pos, neg=self.neg)  # the usual refusals
            if method == "lda":
                found = lda_direction(self.stats, self.covariance(), pos=self.pos, neg=self.neg)
            else:
                ds = group_dataset(self.group, self.path, coords=("class", "pair_id"))
                if method == "pca":
                    found = pca_direction(ds, self.layer, pos=self.pos, neg=self.neg, scheduler=self.scheduler)
                else:
                    found = probe_direction(ds, self.stats, self.layer, pos=self.pos, neg=self.neg,
                                            c=self.probe_c, scheduler=self.scheduler)
            self._directions[method] = found
        return self._directions[method]

    def vector(self, method: str, k: int | None) -> SteeringVector:
        if method not in METHODS:
            raise VectorError(f"method {method!r}: expected one of {', '.join(METHODS)}", param="method")
        if method == "enr":
            vector = vector_from_stats(self.stats, self.layer, k, pos=self.pos, neg=self.neg)
        elif method == "whitened":
            vector = whitened_vector(self.stats, self.covariance(), k, pos=self.pos, neg=self.neg)
        else:
            vector = vector_from_direction(self.direction(method), self.stats, k, pos=self.pos, neg=self.neg)
        vector.metadata["model_group"] = str(self.stats.attrs.get("group", ""))
        return vector


def build_vector(store: str | Path, layer: int, method: str = "enr", k: int | None = 64, *, pos: str = "pos",
                 neg: str = "neg", model: str | None = None, scheduler: str | None = None,
                 probe_c: float = PROBE_C) -> SteeringVector:
    """A vector for ``layer`` of a store by ``method`` (:data:`METHODS`), dense when ``k`` is None."""
    if method not in METHODS:
        raise VectorError(f"method {method!r}: expected one of {', '.join(METHODS)}", param="method")
    group = select_group(open_root(store, mode="r"), model, store)
    stats = group_statistics(group, store, scheduler=scheduler)
    layers = [int(x) for x in stats["layer"].values]
    if layer not in layers:
        raise VectorError(f"layer {layer} was not captured; the store has layers {layers}", param="layer")
    return LayerMethods(group, store, stats, layer, pos=pos, neg=neg, scheduler=scheduler,
                        probe_c=probe_c).vector(method, k)


def describe(vector: SteeringVector) -> str:
    """One line naming a vector's method, sparsity and the fit details in its metadata."""
    keys = ("explained_variance_ratio", "pairs", "probe_fit", "probe_c", "shrinkage")
    details = {key: vector.metadata[key] for key in keys if key in vector.metadata}
    kind = "dense" if vector.k is None else f"k={vector.k}"
    return f"{vector.metadata.get('method', '?')} {kind}" + (f" {json.dumps(details)}" if details else "")

"""The logistic probe's direction: an L2-regularised logistic regression separating pos from
neg, fit on coordinates standardised by the pooled within-class standard deviation, in memory
(scikit-learn) or streaming (L-BFGS, each loss and gradient one Dask pass)."""

from __future__ import annotations

import numpy as np

from .._dask import scheduler_context
from ..errors import VectorError
from .directions import Direction

PROBE_C = 1.0
MAX_IN_MEMORY = 512 << 20


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

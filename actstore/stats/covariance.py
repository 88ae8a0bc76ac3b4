"""Streaming within-class covariance of one layer, and Ledoit-Wolf shrinkage.

One Dask pass over a layer of the store: each block adds, per class, the
cross-product matrix of its samples centred on the class mean (taken from the
cached statistics, so the centring is exact and the sums need no merge
correction) and the sum of ``||x - mean||**4`` that Ledoit-Wolf needs.

Over a resample of the training rows (statistics from
:func:`actstore.stats.subsets.subset_statistics`, whose attrs name their ``train_resample``) the
pass weighs each row by its frequency weight (:func:`~actstore.stats.subsets.row_weights`): the
scatter and fourth moment of the rows repeated as often as their weight, centred on the
resample's class means, so a whitened or LDA vector comes from the same rows as its ENR.

Shrinkage follows Ledoit & Wolf (2004), "A well-conditioned estimator for
large-dimensional covariance matrices", J. Multivariate Analysis 88(2), in the
form scikit-learn's ``ledoit_wolf_shrinkage`` computes, applied to the samples
centred on their class means (the pooled within-class covariance).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VectorError
from ..stores.group import StoreGroup
from ..stores.integrity import damage_located, refuse_non_finite
from .streaming import group_statistics, scheduler_context


@dataclass
class LayerCovariance:
    """Per-class scatter of one layer. ``comoment: (class, hidden, hidden)``
    = sum of (x - mean)(x - mean)^T; ``fourth: (class,)`` = sum of ||x - mean||^4."""

    classes: list[str]
    counts: np.ndarray
    means: np.ndarray
    comoment: np.ndarray
    fourth: np.ndarray
    layer: int

    def class_covariance(self, label: str) -> np.ndarray:
        c = self.classes.index(label)
        return self.comoment[c] / (self.counts[c] - 1)

    def pooled(self, labels: list[str]) -> tuple[np.ndarray, float]:
        """Unbiased pooled within-class covariance of ``labels`` and its LW shrinkage."""
        index = [self.classes.index(label) for label in labels]
        n = float(self.counts[index].sum())
        scatter = self.comoment[index].sum(axis=0)
        pooled = scatter / (n - len(index))
        return pooled, ledoit_wolf_shrinkage(scatter / n, float(self.fourth[index].sum()), n)

    def shrunk(self, labels: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """``(sigma, pooled, shrinkage)``: :meth:`pooled` shrunk towards ``mu * I``
        (mu its mean eigenvalue) by its Ledoit-Wolf intensity."""
        pooled, shrinkage = self.pooled(labels)
        mu = np.trace(pooled) / pooled.shape[0]
        return (1 - shrinkage) * pooled + shrinkage * mu * np.eye(pooled.shape[0]), pooled, shrinkage

    def mean_difference(self, pos: str, neg: str) -> np.ndarray:
        """``mean[pos] - mean[neg]`` (refused when either class is not in the covariance)."""
        if pos not in self.classes or neg not in self.classes:
            raise VectorError(f"classes {pos!r}/{neg!r} not in the covariance ({self.classes})")
        return self.means[self.classes.index(pos)] - self.means[self.classes.index(neg)]


def ledoit_wolf_shrinkage(biased_cov: np.ndarray, sum_fourth: float, n: float) -> float:
    """Shrinkage intensity towards ``mu * I`` (mu = mean eigenvalue) from the
    biased covariance of centred samples and the sum of their squared norms squared."""
    p = biased_cov.shape[0]
    mu = np.trace(biased_cov) / p
    frob2 = float(np.sum(biased_cov * biased_cov))
    beta = (sum_fourth / n - frob2) / (p * n)
    delta = (frob2 - 2 * mu * np.trace(biased_cov) + p * mu * mu) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 else float(beta / delta)


def _block_scatter(block: np.ndarray, codes: np.ndarray, weights: np.ndarray | None = None, *, means: np.ndarray,
                   n_classes: int) -> np.ndarray:
    out = np.zeros((1, n_classes, block.shape[1], block.shape[1]))
    for c in range(n_classes):
        mine = codes == c
        if mine.any():
            centred = np.subtract(block[mine], means[c], dtype=np.float64)
            out[0, c] = centred.T @ (centred if weights is None else weights[mine, None] * centred)
    return out


def _block_fourth(block: np.ndarray, codes: np.ndarray, weights: np.ndarray | None = None, *, means: np.ndarray,
                  n_classes: int) -> np.ndarray:
    out = np.zeros((1, n_classes))
    for c in range(n_classes):
        mine = codes == c
        if mine.any():
            centred = np.subtract(block[mine], means[c], dtype=np.float64)
            fourth = np.einsum("ij,ij->i", centred, centred) ** 2
            out[0, c] = float(np.sum(fourth) if weights is None else weights[mine] @ fourth)
    return out


def layer_covariance(path: str | Path, layer: int, model: str | None = None, *,
                     scheduler: str | None = None) -> LayerCovariance:
    """Per-class scatter matrices of ``layer`` (one streaming pass, float64)."""
    store = StoreGroup.open(path, model)
    store.require_layers(layer)
    return group_covariance(store, layer, group_statistics(store, scheduler=scheduler), scheduler=scheduler)


def group_covariance(store: StoreGroup, layer: int, stats, *, scheduler: str | None = None) -> LayerCovariance:
    """:func:`layer_covariance` of an opened group whose statistics are ``stats`` (``layer``
    checked by the caller, at its door)."""
    import dask
    import dask.array as da

    group, path = store.group, store.location
    store.require_activations("a covariance (the whitened and lda methods)")
    ds = store.dataset(coords=("class",))
    classes = [str(c) for c in stats["class"].values]
    codes = np.searchsorted(np.asarray(classes), ds["class"].values)
    means = stats["mean"].sel(layer=layer).values  # (class, hidden)
    acts = ds["acts"].sel(layer=layer).data  # (sample, hidden)
    weighted = _resample_inputs(store, stats)
    if weighted is not None:  # the resample's rows only (weight 0: left out before the pass)
        kept, weights = weighted
        acts, codes = acts[kept], codes[kept]
    acts = acts.rechunk({1: -1})
    codes_da = da.from_array(codes, chunks=(acts.chunks[0],))
    inputs = (acts, "ij", codes_da, "i")
    if weighted is not None:
        inputs += (da.from_array(weights, chunks=(acts.chunks[0],)), "i")
    hidden = acts.shape[1]
    scatter = da.blockwise(
        _block_scatter, "icjk", *inputs, means=means, n_classes=len(classes),
        new_axes={"c": len(classes), "k": hidden}, adjust_chunks={"i": 1, "j": hidden},
        dtype=np.float64, concatenate=True,
    ).sum(axis=0)
    fourth = da.blockwise(
        _block_fourth, "ic", *inputs, means=means, n_classes=len(classes),
        new_axes={"c": len(classes)}, adjust_chunks={"i": 1}, dtype=np.float64, concatenate=True,
    ).sum(axis=0)
    with scheduler_context(scheduler), damage_located(group, path):
        comoment, fourth_sum = dask.compute(scatter, fourth)
    refuse_non_finite(group, path, comoment)  # a missing chunk reads as NaN
    counts = stats["count"].sel(layer=layer).values.astype(np.float64)
    return LayerCovariance(classes, counts, means, comoment, fourth_sum, layer)


def _resample_inputs(store: StoreGroup, stats) -> tuple[np.ndarray, np.ndarray] | None:
    """``(kept rows, their float64 weights)`` where ``stats`` are those of a resample of the training
    rows (its attrs name the ``train_resample``); None for the statistics of every row."""
    spec = getattr(stats, "attrs", {}).get("train_resample")
    if not spec:
        return None
    from .subsets import row_weights

    weights = row_weights(store, spec)
    kept = np.flatnonzero(weights > 0)
    return kept, weights[kept].astype(np.float64)

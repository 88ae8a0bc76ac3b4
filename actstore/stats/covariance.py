"""Streaming within-class covariance of one layer, and Ledoit-Wolf shrinkage.

One Dask pass over a layer of the store: each block adds, per class, the
cross-product matrix of its samples centred on the class mean (taken from the
cached statistics, so the centring is exact and the sums need no merge
correction) and the sum of ``||x - mean||**4`` that Ledoit-Wolf needs.

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


def _block_scatter(block: np.ndarray, codes: np.ndarray, means: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((1, n_classes, block.shape[1], block.shape[1]))
    for c in range(n_classes):
        rows = block[codes == c]
        if rows.shape[0]:
            centred = np.subtract(rows, means[c], dtype=np.float64)
            out[0, c] = centred.T @ centred
    return out


def _block_fourth(block: np.ndarray, codes: np.ndarray, means: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((1, n_classes))
    for c in range(n_classes):
        rows = block[codes == c]
        if rows.shape[0]:
            centred = np.subtract(rows, means[c], dtype=np.float64)
            out[0, c] = float(np.sum(np.einsum("ij,ij->i", centred, centred) ** 2))
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
    acts = acts.rechunk({1: -1})
    codes_da = da.from_array(codes, chunks=(acts.chunks[0],))
    hidden = acts.shape[1]
    scatter = da.blockwise(
        _block_scatter, "icjk",
        acts, "ij", codes_da, "i", means=means, n_classes=len(classes),
        new_axes={"c": len(classes), "k": hidden}, adjust_chunks={"i": 1, "j": hidden},
        dtype=np.float64, concatenate=True,
    ).sum(axis=0)
    fourth = da.blockwise(
        _block_fourth, "ic",
        acts, "ij", codes_da, "i", means=means, n_classes=len(classes),
        new_axes={"c": len(classes)}, adjust_chunks={"i": 1}, dtype=np.float64, concatenate=True,
    ).sum(axis=0)
    with scheduler_context(scheduler), damage_located(group, path):
        comoment, fourth_sum = dask.compute(scatter, fourth)
    refuse_non_finite(group, path, comoment)  # a missing chunk reads as NaN
    counts = stats["count"].sel(layer=layer).values.astype(np.float64)
    return LayerCovariance(classes, counts, means, comoment, fourth_sum, layer)

"""Every extraction method from one store: ENR top-k, whitened ENR, the first
principal axis of pair differences, a logistic probe and Fisher's LDA.

A method gives a **direction** for a layer; :func:`vector_from_direction` turns
a direction into the usual :class:`~actstore.vectors.SteeringVector`, dense or
k-sparse, so that every method writes the same file and is steered the same way.

Methods (``method`` in the vector's info; one entry each in
:data:`actstore.vector_info.METHODS`, their math in :mod:`actstore.directions`):

``enr`` (files before the registry: ``enr-topk``, dense ``mean-diff``)
    v = mu_pos - mu_neg, top-k by ENR (:func:`actstore.vectors.vector_from_stats`).
``whitened`` (before: ``whitened-enr-topk``)
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

from pathlib import Path

from .directions import (  # noqa: F401  (the methods' math, importable from here as before)
    Direction,
    difference_moments,
    lda_direction,
    pair_rows,
    pca_direction,
    principal_axis,
)
from .errors import VectorError
from .probe import MAX_IN_MEMORY, PROBE_C, fit_probe, pooled_scale, probe_direction  # noqa: F401
from .stats import group_statistics
from .stores.group import StoreGroup, as_store_group
from .vector_info import EXTRACTION_METHODS, METHODS, LayerInputs, method_entry
from .vectors import SteeringVector, build

DIRECTION_METHODS = ("pca", "probe", "lda")


def vector_from_direction(direction: Direction, stats, k: int | None = None, *, pos: str = "pos",
                          neg: str = "neg") -> SteeringVector:
    """The steering vector of ``direction`` (pca, probe or lda): ``(u . v) u`` with u the
    (k-sparse, renormalised) direction and v the difference of means of ``stats``."""
    return build(direction.method, LayerInputs(stats, direction.layer, pos, neg), k, direction=direction)


class LayerMethods:
    """Vectors of one layer by any method, each pass over the store made once.

    ``vector(method, k)`` builds what :data:`METHODS` names; the covariance
    (whitened, lda), the store's dataset (pca, probe) and each method's direction
    are computed on first use and reused for every k.
    """

    def __init__(self, group, path: str | Path | None, stats, layer: int, *, pos: str = "pos", neg: str = "neg",
                 scheduler: str | None = None, probe_c: float = PROBE_C):
        self.store = as_store_group(group, path)  # a StoreGroup (path None), or a zarr group and its path
        self.group, self.path, self.stats, self.layer = self.store.group, self.store.location, stats, int(layer)
        self.pos, self.neg, self.scheduler, self.probe_c = pos, neg, scheduler, probe_c
        self._covariance = None
        self._dataset = None
        self._directions: dict[str, Direction] = {}
        self.inputs = LayerInputs(stats, self.layer, pos, neg, covariance=self.covariance, dataset=self.dataset,
                                  scheduler=scheduler, probe_c=probe_c)

    def covariance(self):
        if self._covariance is None:
            from .covariance import group_covariance

            self._covariance = group_covariance(self.store, None, self.layer, self.stats, scheduler=self.scheduler)
        return self._covariance

    def dataset(self):
        if self._dataset is None:
            self._dataset = self.store.dataset(coords=("class", "pair_id"))
        return self._dataset

    def direction(self, method: str) -> Direction:
        entry = method_entry(method)
        if entry.name not in self._directions:
            if entry.activations:
                self.store.require_activations(f"method {entry.name!r}", param="method")
            self.inputs.moments  # the usual refusals first  # noqa: B018
            if entry.direction is None:
                raise VectorError(f"method {entry.name!r} ({entry.description}) is not built from a store's "
                                  "statistics", param="method")
            self._directions[entry.name] = entry.direction(self.inputs)
        return self._directions[entry.name]

    def vector(self, method: str, k: int | None) -> SteeringVector:
        return build(method, self.inputs, k, direction=self.direction(method))


def build_vector(store: str | Path, layer: int, method: str = "enr", k: int | None = 64, *, pos: str = "pos",
                 neg: str = "neg", model: str | None = None, scheduler: str | None = None,
                 probe_c: float = PROBE_C) -> SteeringVector:
    """A vector for ``layer`` of a store by ``method`` (:data:`METHODS`), dense when ``k`` is None."""
    method_entry(method)  # an unknown method is refused before the store is read
    group = StoreGroup.open(store, model)
    group.require_layers(layer)
    stats = group_statistics(group, scheduler=scheduler)
    return LayerMethods(group, None, stats, layer, pos=pos, neg=neg, scheduler=scheduler,
                        probe_c=probe_c).vector(method, k)


def describe(vector: SteeringVector) -> str:
    """One line naming a vector's method, sparsity and the fit details in its info."""
    return vector.info.describe()


__all__ = ["DIRECTION_METHODS", "EXTRACTION_METHODS", "METHODS", "LayerMethods", "build_vector", "describe",
           "vector_from_direction"]

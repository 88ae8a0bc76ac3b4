"""The one door from a store to a vector: :func:`build_vector` (and :class:`LayerMethods`, which
builds every method and k of one layer with each pass over the store made once).

A method gives a **direction** for a layer; :func:`build` turns it into the usual
:class:`~actstore.vectors.vector.SteeringVector`, dense or k-sparse, so that every method writes
the same file and is steered the same way.

Methods (``method`` in the vector's info; one entry each in
:data:`actstore.vectors.methods.METHODS`, their math in :mod:`actstore.vectors.directions`):

``enr`` (files before the registry: ``enr-topk``, dense ``mean-diff``)
    v = mu_pos - mu_neg, top-k by ENR.
``whitened`` (before: ``whitened-enr-topk``)
    top-k by ENR in the whitened basis (:func:`actstore.vectors.directions.whitened_direction`):
    ``vector`` is the kept whitened components mapped back to the residual basis, ``indices`` and
    ``enr`` are in the whitened basis, ``extra["vector_whitened"]`` holds the kept components.
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

import numpy as np

from ..errors import VectorError
from ..stats.streaming import group_statistics
from ..stores.group import StoreGroup, require_layers
from ..stores.schema import CaptureSpec
from .directions import Direction
from .info import VectorInfo
from .methods import LayerInputs, Method, method_entry
from .operators import Operator
from .probe import PROBE_C
from .vector import SteeringVector


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
    require_layers(stats["layer"].values, layer)
    return build("enr", LayerInputs(stats, layer, pos, neg), k)


class LayerMethods:
    """Vectors of one layer by any method, each pass over the store made once.

    ``vector(method, k)`` builds what :data:`METHODS` names; the covariance
    (whitened, lda), the store's dataset (pca, probe) and each method's direction
    are computed on first use and reused for every k.
    """

    def __init__(self, store: StoreGroup, stats, layer: int, *, pos: str = "pos", neg: str = "neg",
                 scheduler: str | None = None, probe_c: float = PROBE_C):
        self.store = store
        self.group, self.path, self.stats, self.layer = self.store.group, self.store.location, stats, int(layer)
        self.pos, self.neg, self.scheduler, self.probe_c = pos, neg, scheduler, probe_c
        self._covariance = None
        self._dataset = None
        self._directions: dict[str, Direction] = {}
        self.inputs = LayerInputs(stats, self.layer, pos, neg, covariance=self.covariance, dataset=self.dataset,
                                  scheduler=scheduler, probe_c=probe_c)

    def covariance(self):
        if self._covariance is None:
            from ..stats.covariance import group_covariance

            self._covariance = group_covariance(self.store, self.layer, self.stats, scheduler=self.scheduler)
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
    """A vector for ``layer`` of a store by ``method`` (:data:`METHODS`), dense when ``k`` is None.

    >>> vector = build_vector("acts.zarr", layer=2, method="enr", k=4)
    >>> vector.k, len(vector.indices), vector.info.method, vector.layer
    (4, 4, 'enr', 2)
    >>> build_vector("acts.zarr", layer=2, method="pca", k=None).k is None
    True
    """
    method_entry(method)  # an unknown method is refused before the store is read
    group = StoreGroup.open(store, model)
    group.require_layers(layer)
    stats = group_statistics(group, scheduler=scheduler)
    return LayerMethods(group, stats, layer, pos=pos, neg=neg, scheduler=scheduler,
                        probe_c=probe_c).vector(method, k)


def with_operator(vector: SteeringVector, operator: str = "add", *, clamp_value: float | str | None = None,
                  layers: str = "", store: str | Path | None = None, model: str | None = None) -> SteeringVector:
    """``vector`` applied by ``operator`` (:mod:`actstore.vectors.operators`) at ``layers``.
    ``clamp_value``: a number, or a class label of ``store`` (the vector's store): the mean
    projection of that class onto the vector's unit direction at its layer, from the statistics.

    >>> vector = with_operator(build_vector("acts.zarr", layer=2, k=4), "clamp", clamp_value="neg",
    ...                        store="acts.zarr")
    >>> vector.info.operator.kind, vector.info.operator.clamp_value == class_projection("acts.zarr", vector, "neg")
    ('clamp', True)
    """
    Operator(operator, 0.0 if operator == "clamp" else clamp_value, layers)  # refused before any pass
    if isinstance(clamp_value, str):
        try:
            clamp_value = float(clamp_value)
        except ValueError:
            if store is None:
                raise VectorError(f"clamp value {clamp_value!r} is a class label: it needs the vector's store",
                                  param="clamp_value") from None
            clamp_value = class_projection(store, vector, clamp_value, model)
    return vector.with_info(operator=Operator(operator, clamp_value, layers))


def class_projection(store: str | Path, vector: SteeringVector, label: str, model: str | None = None) -> float:
    """The mean projection of class ``label`` of ``store`` onto ``vector``'s unit direction at its
    layer: mean_label . v / |v| (from the cached statistics)."""
    group = StoreGroup.open(store, model)
    group.require_layers(vector.layer)
    stats = group_statistics(group)
    classes = [str(c) for c in stats["class"].values]
    if label not in classes:
        raise VectorError(f"clamp value {label!r}: not a number, nor a class of the store (it has {classes})",
                          param="clamp_value")
    mean = stats["mean"].sel({"class": label, "layer": vector.layer}).values.astype(np.float64)
    values = np.asarray(vector.vector, dtype=np.float64)
    return float(mean @ values / np.linalg.norm(values))


__all__ = ["LayerMethods", "build", "build_vector", "class_projection", "vector_from_stats", "with_operator"]

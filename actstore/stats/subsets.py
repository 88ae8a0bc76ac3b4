"""Class moments over a weighted subset of a store's rows: the training set resampled.

A vector is estimated from a few hundred training pairs; to see how much it would move with
another draw of them, the statistics it is built from are recomputed over a resample of the
store's rows (:class:`Resample`, written ``bootstrap:SEED`` or ``half:I/N[:SEED]``):

* the **unit** drawn is the training question where the store records one (``question``: a
  pair and its option-swapped twin together), else the pair (``pair_id``: a pos row with its
  neg row, every token row of both); rows of a unit always go together;
* units are drawn within **strata**, the set of classes a unit has rows in: paired units
  (pos and neg) form one stratum, and a store whose units hold one class each is resampled
  within each class, so each class keeps its number of units;
* ``bootstrap:SEED`` draws each stratum's ``m`` units ``m`` times with replacement
  (``numpy.random.default_rng(SEED)``, units in sorted order, strata in sorted order): each
  row's **frequency weight** is how often its unit was drawn;
* ``half:I/N[:SEED]`` shuffles each stratum's units (the same generator) and keeps the
  ``I``-th of ``N`` near-equal parts (``numpy.array_split``): weight 1 in the part, 0 out of
  it; the ``N`` parts partition the units.

The moments are those of the rows repeated as often as their weight: ``n = sum w``,
``mean = sum w x / n``, ``M2 = sum w (x - mean)**2`` and ``var = M2 / (n - 1)``, in float64,
each block in two passes centred on its first row and the blocks merged by the Chan update of
:mod:`actstore.stats.streaming` (the same dask reduction). Rows of weight 0 are left out before
the pass (a chunk holding only such rows is not read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._dask import scheduler_context
from ..errors import StatsError
from ..moments import Moments
from ..stores.group import StoreGroup
from ..stores.integrity import damage_located, refuse_non_finite
from ..stores.moments import group_stats
from ..stores.reader import class_codes, sample_coord
from .streaming import _reduce_states

__all__ = ["Resample", "resample_units", "row_weights", "subset_moments", "subset_statistics",
           "weighted_class_moments"]

KINDS = ("bootstrap", "half")


def _spec_error(spec: str, why: str) -> StatsError:
    return StatsError(f"train_resample {spec!r}: {why}; expected bootstrap:SEED (pairs drawn with replacement) or "
                      "half:I/N[:SEED] (the I-th of N disjoint parts of the pairs), e.g. bootstrap:0 or half:1/2",
                      param="train_resample")


@dataclass(frozen=True)
class Resample:
    """One resample of the training units: ``bootstrap`` (``seed``) or the ``part``-th (1-based) of
    ``parts`` disjoint parts (``half``, shuffled by ``seed``).

    >>> Resample.parse("half:2/4"), str(Resample.parse("bootstrap:7"))
    (Resample(kind='half', seed=0, part=2, parts=4), 'bootstrap:7')
    """

    kind: str
    seed: int = 0
    part: int = 1
    parts: int = 1

    @classmethod
    def parse(cls, spec: str | Resample) -> Resample:
        if isinstance(spec, Resample):
            return spec
        kind, _, rest = str(spec).strip().partition(":")
        if kind not in KINDS:
            raise _spec_error(spec, f"unknown kind {kind!r}")
        fraction, _, seed = rest.partition(":") if kind == "half" else ("1/1", "", rest)
        part, _, parts = fraction.partition("/")
        try:
            resample = cls(kind, int(seed or 0) if kind == "half" else int(seed), int(part), int(parts))
        except ValueError:
            raise _spec_error(spec, "not a number where one belongs") from None
        return resample._checked(spec)

    def _checked(self, spec: str) -> Resample:
        if self.seed < 0:
            raise _spec_error(spec, "the seed must be >= 0")
        if self.kind == "half" and not (self.parts >= 2 and 1 <= self.part <= self.parts):
            raise _spec_error(spec, "I/N needs N >= 2 and 1 <= I <= N")
        return self

    def __str__(self) -> str:
        if self.kind == "bootstrap":
            return f"bootstrap:{self.seed}"
        return f"half:{self.part}/{self.parts}" + (f":{self.seed}" if self.seed else "")

    @property
    def size_ratio(self) -> float:
        """Units in a replicate over units in the training set: 1 for a bootstrap, 1/N for a part."""
        return 1.0 if self.kind == "bootstrap" else 1.0 / self.parts

    def unit_weights(self, strata: np.ndarray) -> np.ndarray:
        """The weight of each unit, ``strata: (units,)`` the stratum of each (units in sorted order)."""
        rng = np.random.default_rng(self.seed)
        weights = np.zeros(strata.shape[0], dtype=np.int64)
        for stratum in np.unique(strata):
            members = np.flatnonzero(strata == stratum)
            if self.kind == "bootstrap":
                weights[members] = np.bincount(rng.integers(0, members.size, members.size), minlength=members.size)
            else:
                shuffled = rng.permutation(members)
                weights[np.array_split(shuffled, self.parts)[self.part - 1]] = 1
        return weights


def resample_units(classes: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unit_ids, unit_of_row, strata)``: the sorted distinct units of the rows (``classes,
    units: (rows,)``), each row's index into them, and each unit's stratum (an integer naming the
    set of classes it has rows in)."""
    unit_ids, unit_of_row = np.unique(np.asarray(units), return_inverse=True)
    unit_of_row = unit_of_row.reshape(-1)
    class_ids, class_of_row = np.unique(np.asarray(classes), return_inverse=True)
    member = np.zeros((unit_ids.size, class_ids.size), dtype=bool)
    member[unit_of_row, class_of_row.reshape(-1)] = True
    _, strata = np.unique(member, axis=0, return_inverse=True)
    return unit_ids, unit_of_row, strata.reshape(-1)


def row_weights(store: StoreGroup, spec: str | Resample) -> np.ndarray:
    """Each of the group's rows' frequency weight (int64) under ``spec`` (see the module's rules)."""
    resample = Resample.parse(spec)
    group, path = store.group, store.location
    store.require_activations("a resample of the training rows (train_resample)", param="train_resample")
    n = int(group.attrs["n_samples"])
    if n == 0:
        raise StatsError(f"{str(path)!r} group {group.basename!r} holds no samples yet")
    _, codes = class_codes(group, path, n)
    unit_name = "question" if "question" in group else "pair_id"
    units = sample_coord(group, path, unit_name, n)
    _, unit_of_row, strata = resample_units(codes, units)
    return resample.unit_weights(strata)[unit_of_row]


def _weighted_block(block: np.ndarray, codes: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """``(1, 4, n_classes, ...)``: per class the weighted n, mean (centred on the block's first
    row), M2, and that centre: two passes in float64 (the mean, then the deviations from it)."""
    trailing = block.shape[1:]
    flat = block.reshape(block.shape[0], -1)
    shift = np.asarray(flat[0], dtype=np.float64) if flat.shape[0] else np.zeros(flat.shape[1])
    out = np.zeros((1, 4, n_classes, flat.shape[1]))
    out[0, 3] = shift
    for c in range(n_classes):
        mine = (codes == c) & (weights > 0)
        if not mine.any():
            continue
        w = weights[mine].astype(np.float64)
        centred = np.subtract(flat[mine], shift, dtype=np.float64)
        n = w.sum()
        mean = w @ centred / n
        out[0, 0, c], out[0, 1, c], out[0, 2, c] = n, mean, w @ (centred - mean) ** 2
    return out.reshape((1, 4, n_classes, *trailing))


def weighted_class_moments(x, codes, weights, n_classes: int, split_every: int | None = None):
    """Lazy ``(3, n_classes, ...)`` float64 dask array: per class the count, mean and M2 of the
    rows of ``x: (sample, ...)`` each repeated ``weights[i]`` times (frequency weights >= 0;
    rows of weight 0 are left out first). ``codes: (sample,)``: each row's class in ``[0, n_classes)``."""
    import dask.array as da

    x = x if isinstance(x, da.Array) else da.asarray(x)
    codes, weights = np.asarray(codes, dtype=np.int64), np.asarray(weights)
    if codes.shape != (x.shape[0],) or weights.shape != (x.shape[0],):
        raise ValueError(f"codes and weights must have shape ({x.shape[0]},), got {codes.shape}, {weights.shape}")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite and >= 0")
    kept = np.flatnonzero(weights > 0)
    if kept.size == 0:
        raise StatsError("no samples to compute statistics of (every weight is 0)")
    if kept.size < x.shape[0]:
        x, codes, weights = x[kept], codes[kept], weights[kept]
    trailing = "".join(chr(ord("a") + i) for i in range(x.ndim - 1))
    states = da.blockwise(
        _weighted_block, "isk" + trailing,
        x, "i" + trailing,
        da.from_array(codes, chunks=(x.chunks[0],)), "i",
        da.from_array(weights, chunks=(x.chunks[0],)), "i",
        new_axes={"s": 4, "k": n_classes}, adjust_chunks={"i": 1}, n_classes=n_classes,
        dtype=np.float64, meta=np.empty((0,) * (x.ndim + 2), dtype=np.float64),
    )
    return _reduce_states(states, split_every)


def subset_moments(store: StoreGroup, weights, *, scheduler: str | None = None,
                   split_every: int | None = None) -> Moments:
    """Per-class moments of an opened group's rows under frequency ``weights: (rows,)`` (one
    streaming Dask pass; the reads guarded as the statistics' pass guards them)."""
    import dask

    group, path = store.group, store.location
    store.require_activations("a resample of the training rows (train_resample)", param="train_resample")
    n = int(group.attrs["n_samples"])
    weights = np.asarray(weights)
    if weights.shape != (n,):
        raise ValueError(f"weights must have one value per row of {store.where} ({n}), got shape {weights.shape}")
    classes, codes = class_codes(group, path, n)
    lazy = weighted_class_moments(store.dataset(coords=()).acts.data, codes, weights, len(classes),
                                  split_every or 16)
    with scheduler_context(scheduler), damage_located(group, path):
        (stacked,) = dask.compute(lazy)
    refuse_non_finite(group, path, stacked)  # a missing chunk reads as NaN
    return Moments.from_stacked(classes, stacked)


def subset_statistics(store: StoreGroup, spec: str | Resample, *, scheduler: str | None = None):
    """The statistics dataset of :func:`actstore.open_stats` (count, mean, var per class, layer and
    coordinate) over the training set resampled by ``spec`` (:class:`Resample`); its attrs say
    ``train_resample``. Never cached: the store's cache holds the statistics of every row.

    >>> half = subset_statistics(StoreGroup.open("acts.zarr"), "half:1/2")
    >>> half.attrs["train_resample"], half["count"].sel(layer=2).values.tolist()
    ('half:1/2', [4, 4])
    """
    resample = Resample.parse(spec)
    store = StoreGroup.open(store)
    moments = subset_moments(store, row_weights(store, resample), scheduler=scheduler)
    return group_stats(moments, dict(store.group.attrs), store.group.basename, train_resample=str(resample))

"""Per-class moments (count, mean, M2): one value, one merge kernel.

:class:`Moments` is what every path that accumulates statistics carries: the
Dask tree of :func:`actstore.stats.streaming.compute_stats`, the capture-time tracking
of a full capture, the running moments of ``capture --stats-only`` and the
statistics cache in the store. All merge through :func:`chan_merge`, the
update of Chan, Golub & LeVeque (1983), "Algorithms for computing the sample
variance: analysis and recommendations", The American Statistician 37(3)::

    n = na + nb;  d = mean_b - mean_a
    mean = mean_a + d * nb / n;  m2 = m2_a + m2_b + d**2 * na * nb / n

Pure arithmetic, no storage: the stores and the statistics import it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


def chan_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge two partial states ``{"n", "mean", "m2"}`` (Chan et al. 1983).

    Works on numpy arrays and on torch tensors alike (the dask reduction and
    the on-device accumulation during a capture share it).
    """
    n = a["n"] + b["n"]
    safe_n = n + (n == 0)  # 1 where both are empty (then delta * 0 / 1 = 0)
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * (b["n"] / safe_n)
    m2 = a["m2"] + b["m2"] + delta * delta * (a["n"] * b["n"] / safe_n)
    return {"n": n, "mean": mean, "m2": m2}


def tensor_class_moments(x, codes, n_classes: int, step_elements: int = 1 << 22) -> dict:
    """Per-class ``{"n", "mean", "m2"}`` of ``x: (rows, ...)`` torch tensor, in float64 on its device.

    ``codes: (rows,)`` class index of each row. Rows go in slices of about
    ``step_elements`` values (32 MiB in float64), each reduced in two passes (the
    mean, then squared deviations from it), and the slices are merged with
    :func:`chan_merge`.
    """
    step = max(1, step_elements // max(1, x[0].numel())) if x.shape[0] else 1
    state = None
    for start in range(0, max(x.shape[0], 1), step):
        part = _tensor_class_moments(x[start:start + step], codes[start:start + step], n_classes)
        state = part if state is None else chan_merge(state, part)
    return state


def _tensor_class_moments(x, codes, n_classes: int) -> dict:
    import torch

    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    codes = codes.to(device=x.device, dtype=torch.int64)
    n = torch.bincount(codes, minlength=n_classes).to(torch.float64)
    sums = torch.zeros((n_classes, flat.shape[1]), dtype=torch.float64, device=x.device)
    sums.index_add_(0, codes, flat)
    mean = sums / (n + (n == 0)).unsqueeze(1)
    centred = flat - mean[codes]
    m2 = torch.zeros_like(sums).index_add_(0, codes, centred * centred)
    shape = (n_classes, *x.shape[1:])
    return {"n": n.reshape((n_classes,) + (1,) * (x.dim() - 1)).expand(shape), "mean": mean.reshape(shape),
            "m2": m2.reshape(shape)}


@dataclass(frozen=True)
class Moments:
    """Count, mean and M2 per class: ``n, mean, m2: (class, layer, hidden)`` float64.

    ``classes`` labels the first axis. Values, not accumulators: :meth:`merge`
    and :meth:`add` return new moments.

    >>> import numpy as np
    >>> rows = np.arange(12.0).reshape(4, 1, 3)  # 4 rows, 1 layer, 3 coordinates
    >>> both = Moments.empty((1, 3)).add(rows[:2], ["pos", "pos"]).merge(Moments.empty((1, 3)).add(rows[2:], ["pos", "neg"]))
    >>> both.classes, both.n[:, 0, 0].tolist(), both.mean[0, 0].tolist()
    (('pos', 'neg'), [3.0, 1.0], [3.0, 4.0, 5.0])
    """

    classes: tuple[str, ...]
    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        for name in ("n", "mean", "m2"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if not self.n.shape == self.mean.shape == self.m2.shape or self.n.shape[:1] != (len(self.classes),):
            raise ValueError(f"moments of {len(self.classes)} classes need (class, ...) arrays of one shape, got "
                             f"{self.n.shape}, {self.mean.shape}, {self.m2.shape}")

    @classmethod
    def empty(cls, shape: tuple[int, ...], classes=()) -> Moments:
        """No rows yet, ``shape``: (layer, hidden)."""
        zeros = np.zeros((len(classes), *shape))
        return cls(tuple(classes), zeros, zeros, zeros)

    @classmethod
    def from_stacked(cls, classes, stacked) -> Moments:
        """From ``(3, class, ...)``: n, mean, M2 stacked (the stores' and the Dask tree's layout)."""
        stacked = np.asarray(stacked, dtype=np.float64)
        return cls(tuple(classes), stacked[0], stacked[1], stacked[2])

    def stacked(self) -> np.ndarray:
        return np.stack([self.n, self.mean, self.m2])

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-class shape: (layer, hidden)."""
        return self.n.shape[1:]

    @property
    def total(self) -> int:
        """Rows counted (every element of a row is counted once per row)."""
        return int(self.n.reshape(len(self.classes), -1)[:, 0].sum()) if self.n.size else 0

    def align(self, classes) -> Moments:
        """The same moments over ``classes`` (a superset, in that order): absent classes have no rows."""
        classes = tuple(str(c) for c in classes)
        missing = sorted(set(self.classes) - set(classes))
        if missing:
            raise ValueError(f"cannot align moments of classes {missing} to {list(classes)}")
        index = {c: i for i, c in enumerate(self.classes)}
        out = {name: np.zeros((len(classes), *self.shape)) for name in ("n", "mean", "m2")}
        for j, label in enumerate(classes):
            if label in index:
                for name in out:
                    out[name][j] = getattr(self, name)[index[label]]
        return Moments(classes, out["n"], out["mean"], out["m2"])

    def merge(self, other: Moments) -> Moments:
        """Both sets of rows (Chan et al.): this one's classes first, then the other's new ones, sorted."""
        classes = self.classes + tuple(sorted(set(other.classes) - set(self.classes)))
        a, b = self.align(classes), other.align(classes)
        state = chan_merge(a._state(), b._state())
        return Moments(classes, state["n"], state["mean"], state["m2"])

    def add(self, acts, labels) -> Moments:
        """These moments and those of ``acts: (rows, layer, hidden)`` (torch tensor or numpy) with
        ``labels: (rows,)``; the window is reduced where it is (the model's device), in float64."""
        import torch

        labels = [str(label) for label in np.asarray(labels).tolist()]
        classes = self.classes + tuple(sorted(set(labels) - set(self.classes)))
        tensor = acts if isinstance(acts, torch.Tensor) else torch.from_numpy(np.asarray(acts))
        code = {c: i for i, c in enumerate(classes)}
        codes = torch.as_tensor([code[c] for c in labels], device=tensor.device)
        window = tensor_class_moments(tensor, codes, len(classes))
        window = {k: v.cpu().numpy() for k, v in window.items()}
        return self.merge(Moments(classes, window["n"], window["mean"], window["m2"]))

    def _state(self) -> dict[str, np.ndarray]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def to_dataset(self, layers, attrs: dict):
        """The statistics dataset (see :func:`actstore.open_stats`): ``count (class, layer)``,
        ``mean, var (class, layer, hidden)`` (ddof=1), classes sorted."""
        order = np.argsort(np.asarray(self.classes, dtype=str), kind="stable")
        n, mean, m2 = self.n[order], self.mean[order], self.m2[order]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = m2 / (n - 1)
        return stats_dataset(n[:, :, 0].astype(np.int64), mean, var, [self.classes[i] for i in order], layers, attrs)

    @classmethod
    def from_dataset(cls, stats) -> Moments:
        """Back from a statistics dataset (M2 = var * (n - 1); 0 for a class of one row, whose var is NaN)."""
        mean = np.asarray(stats["mean"].values, dtype=np.float64)
        n = np.broadcast_to(np.asarray(stats["count"].values)[:, :, None], mean.shape).astype(np.float64)
        m2 = np.nan_to_num(np.asarray(stats["var"].values) * (n - 1))
        return cls(tuple(str(c) for c in stats["class"].values), n, mean, m2)


def stats_dataset(counts, means, variances, classes, layers, attrs: dict):
    """``count (class, layer)`` int64, ``mean`` and ``var (class, layer, hidden)`` float64."""
    import xarray as xr

    return xr.Dataset(
        {
            "count": (("class", "layer"), np.asarray(counts, dtype=np.int64)),
            "mean": (("class", "layer", "hidden"), means),
            "var": (("class", "layer", "hidden"), variances),
        },
        coords={"class": list(classes), "layer": list(layers)},
        attrs=attrs,
    )


@functools.cache
def _sums_kernel():
    """The compiled per-class sums kernel (numba; compiled once, cached on disk)."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def sums(x, codes, shift, s1, s2):
        rows, cols = x.shape
        for r in range(rows):
            c = codes[r]
            for j in range(cols):
                d = np.float64(x[r, j]) - shift[j]
                s1[c, j] += d
                s2[c, j] += d * d

    return sums


def _block_state(block: np.ndarray, codes: np.ndarray, shift: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class (n, mean, M2) of one block of samples, in float64.

    ``block: (b, ...)`` activations, ``codes: (b,)`` class index per sample,
    ``shift: (...)`` subtracted first. Returns ``(1, 3, n_classes, ...)``:
    n, mean (still shifted) and M2.

    One fused pass (numba, GIL released so dask's threads run in parallel)
    accumulates, per class, the sums S1 and S2 of the shifted values and of
    their squares in float64; then M2 = S2 - S1**2 / n. Because the data are
    centred on a sample of the same distribution, S2 and S1**2/n are of the
    order of n * var and the subtraction loses no more than a digit or two of
    float64's sixteen. (A numpy version of the same sums, which converts each
    slice to float64 and multiplies by a one-hot class matrix, ran 5.6x
    slower: benchmarks/RESULTS.md.)
    """
    trailing = block.shape[1:]
    size = block.shape[0]
    flat_block = block.reshape(size, -1)
    if flat_block.dtype not in (np.float32, np.float64):
        flat_block = flat_block.astype(np.float32)  # float16: numba has no CPU half arithmetic
    flat_shift = np.ascontiguousarray(shift, dtype=np.float64).reshape(-1)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    n = np.bincount(codes, minlength=n_classes).astype(np.float64)
    s1 = np.zeros((n_classes, flat_block.shape[1]))
    s2 = np.zeros_like(s1)
    _sums_kernel()(np.ascontiguousarray(flat_block), codes, flat_shift, s1, s2)
    safe_n = np.maximum(n, 1.0)[:, None]
    mean = s1 / safe_n
    m2 = np.maximum(s2 - s1 * mean, 0.0)
    out = np.empty((1, 3, n_classes, *trailing))
    out[0, 0] = n.reshape((n_classes,) + (1,) * len(trailing))
    out[0, 1] = mean.reshape((n_classes, *trailing))
    out[0, 2] = m2.reshape((n_classes, *trailing))
    return out


def window_moments(acts: np.ndarray, labels) -> Moments:
    """Per-class moments of one window held in memory, ``acts: (rows, layer, hidden)`` with
    ``labels: (rows,)``: the statistics pass's fused kernel (one pass in float64, GIL released),
    centred on the window's first row. A capture keeps its statistics up to date with it on the
    writer thread: on one thread, a window of 3638 x 18 x 640 took 0.03-0.07 s here against
    0.5-0.9 s for the torch reduction of :meth:`Moments.add` (several float64 passes)."""
    labels = np.asarray(labels).astype(str)
    classes, codes = np.unique(labels, return_inverse=True)
    if not len(labels):
        return Moments.empty(acts.shape[1:])
    shift = np.asarray(acts[0], dtype=np.float64)
    state = _block_state(acts, codes.reshape(-1), shift, len(classes))[0]
    return Moments(tuple(classes), state[0], state[1] + shift, state[2])

"""Statistics: per-class moments of a store, streamed with Dask in float64.

* :mod:`.streaming`: the Dask pass (Welford/Chan merge as a dask reduction; the fused chunk-file pass
  on a local store), the statistics cache, :func:`~.streaming.compute_stats` and
  :func:`~.streaming.open_stats`;
* :mod:`.covariance`: the streaming within-class covariance of one layer and Ledoit-Wolf shrinkage.
* :mod:`.subsets`: the moments over a resample of the training rows (bootstrap or disjoint parts).
"""

from .streaming import compute_stats, moments, open_stats

__all__ = ["compute_stats", "moments", "open_stats"]

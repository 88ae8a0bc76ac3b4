"""The covariance pass behind whitened and LDA vectors: every row, and a resample's rows weighed.

    python benchmarks/bench_covariance.py [--samples 40000] [--hidden 640] [--repeats 3] [--no-write]

Builds a one-layer store with actstore's own writer (bench_stats.build_store: activation-like
data, 2 classes, pairs), then times :func:`actstore.stats.covariance.group_covariance`, the
per-class scatter and fourth moment of one layer (one streaming pass, float64):

  full:        over the statistics of every row (the unweighted blocks);
  half:1/2:    over a half's statistics (``train_resample``): the kept rows, weight 1;
  bootstrap:0: over a bootstrap's statistics: the drawn rows weighed by how often they were drawn.

Each is reported as seconds (median of ``--repeats``, after one warm-up pass), rows per second of
the rows the pass reads, and the ratio to the full pass. The resample's own statistics pass
(:func:`actstore.stats.subsets.subset_statistics`) is timed beside it: a whitened vector over a
resample needs both. Threads: dask's default scheduler (all cores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, median_time, write_section
from bench_stats import build_store

RESAMPLES = ("full", "half:1/2", "bootstrap:0")


def time_resample(store: Path, spec: str, repeats: int) -> dict:
    """Median seconds of the statistics and of the covariance pass for one resample (or all rows)."""
    import actstore
    from actstore.stats.covariance import group_covariance
    from actstore.stats.subsets import row_weights, subset_statistics
    from actstore.stores.group import StoreGroup

    group = StoreGroup.open(store, None)
    if spec == "full":
        stats = actstore.open_stats(store)
        rows, stats_s = int(group.group.attrs["n_samples"]), float("nan")
    else:
        weights = row_weights(group, spec)
        rows = int(np.count_nonzero(weights))
        stats_s, _ = median_time(lambda: subset_statistics(group, spec), repeats)
        stats = subset_statistics(group, spec)
    cov = group_covariance(group, 0, stats)  # warm-up; also the check below
    assert cov.comoment.shape[0] == 2 and np.isfinite(cov.comoment).all()
    median, times = median_time(lambda: group_covariance(group, 0, stats), repeats)
    return {"spec": spec, "rows": rows, "median": median, "times": times, "stats_s": stats_s}


def _seconds(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40000, help="rows of the store (2 classes, pairs)")
    parser.add_argument("--hidden", type=int, default=640, help="the layer's width (gemma-3-270m: 640)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    import actstore

    work = Path(tempfile.mkdtemp(prefix="bench-covariance-"))
    try:
        store = work / "synthetic.zarr"
        t0 = time.perf_counter()
        build_store(store, args.samples, 1, args.hidden)
        actstore.compute_stats(store)
        print(f"built {args.samples} x {args.hidden} in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for spec in RESAMPLES:
            row = time_resample(store, spec, args.repeats)
            rows.append(row)
            print(f"{spec}: {row['rows']} rows, covariance {row['median']:.2f} s "
                  f"({row['rows'] / row['median']:.0f} rows/s), statistics {row['stats_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.no_write:
        return
    full = rows[0]["median"]
    table = "\n".join(
        f"| {r['spec']} | {r['rows']} | {r['median']:.2f} | {r['rows'] / r['median']:,.0f} "
        f"| **{r['median'] / full:.2f}x** "
        f"| {_seconds(r['stats_s'])} |" for r in rows)
    command = f"python benchmarks/bench_covariance.py --samples {args.samples} --hidden {args.hidden}"
    write_section("Covariance pass: every row, and a resample's rows weighed", f"""
`{command} --repeats {args.repeats}` at {git_rev()}.
Machine: {machine()}

One layer, {args.samples} rows x {args.hidden} (float32 store, 2 classes): the per-class scatter and fourth
moment (`group_covariance`), median of {args.repeats} passes after a warm-up. A resample's pass reads only
the rows it drew (weight > 0) and weighs each by how often it was drawn; its own statistics pass
(`subset_statistics`) is the last column (a whitened vector over a resample needs both).

| rows of | rows read | covariance s | rows/s | vs every row | resample's statistics s |
|---|---|---|---|---|---|
{table}
""")


if __name__ == "__main__":
    main()

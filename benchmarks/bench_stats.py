"""Streaming statistics throughput on a synthetic store, against raw read+decode.

    python benchmarks/bench_stats.py [--gb 1.0] [--layers 4] [--hidden 640] [--repeats 3]

Builds a store of the requested size with actstore's own writer (activation-like
data: per-dimension offsets and scales, a few outlier dimensions), then times
  raw:   read + decode every chunk (dask, same chunks, same threads; float32 sum)
  stats: actstore.compute_stats (per-class Welford/Chan, float64)
and reports GB/s of uncompressed data and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, median_time, write_section  # noqa: E402


def build_store(path: Path, n_samples: int, n_layers: int, hidden: int) -> None:
    from actstore.stores.zarr_store import ActivationWriter, CaptureSpec

    spec = CaptureSpec("synthetic/activations", "none", "synthetic", hidden, list(range(n_layers)), "last")
    writer = ActivationWriter.open(path, "synthetic", spec)
    writer.begin_run("synthetic", "0" * 64, n_samples, False, {})
    rng = np.random.default_rng(0)
    offset = rng.normal(size=(1, n_layers, hidden)).astype(np.float32) * 2
    scale = rng.lognormal(size=(1, n_layers, hidden)).astype(np.float32)
    scale[..., :4] *= 100  # massive-activation dimensions, as real LMs have
    step = writer.window_hint * 8
    for start in range(0, n_samples, step):
        rows = min(step, n_samples - start)
        labels = np.where(np.arange(start, start + rows) % 2 == 0, "pos", "neg")
        acts = offset + scale * rng.standard_normal((rows, n_layers, hidden), dtype=np.float32)
        acts[labels == "pos"] += 0.1
        index = np.arange(start, start + rows)
        writer.append(acts, {"class": labels, "pair_id": index // 2, "text_hash": np.full(rows, "0" * 16),
                             "text_index": index, "token_index": np.full(rows, -1)}, start + rows, int(index[-1] // 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="uncompressed size of the acts array")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the store (default: a temp dir)")
    args = parser.parse_args()


    import actstore

    work = Path(tempfile.mkdtemp(prefix="bench-stats-", dir=args.dir))
    store = work / "synthetic.zarr"
    n_samples = int(args.gb * 1e9 / (args.layers * args.hidden * 4))
    t0 = time.perf_counter()
    build_store(store, n_samples, args.layers, args.hidden)
    build_s = time.perf_counter() - t0
    nbytes = n_samples * args.layers * args.hidden * 4
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    print(f"built {nbytes / 1e9:.2f} GB ({disk / 1e9:.2f} GB on disk) in {build_s:.1f} s")

    ds = actstore.open_store(store)
    raw_median, raw_times = median_time(lambda: ds.acts.data.sum(dtype="f4").compute(), args.repeats)
    stats_median, stats_times = median_time(lambda: actstore.compute_stats(store, force=True), args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    raw_gbs, stats_gbs = nbytes / raw_median / 1e9, nbytes / stats_median / 1e9
    ratio = stats_gbs / raw_gbs
    print(f"raw read+decode: median {raw_median:.2f} s -> {raw_gbs:.2f} GB/s ({raw_times})")
    print(f"stats:           median {stats_median:.2f} s -> {stats_gbs:.2f} GB/s ({stats_times})")
    print(f"stats / raw = {ratio:.2f}x; peak RSS {peak:.0f} MiB")
    # The pass really covered every sample.
    stats = actstore.open_stats(store)
    assert int(stats["count"].sum()) == n_samples * args.layers
    shutil.rmtree(work, ignore_errors=True)
    write_section(
        "Statistics throughput (bench_stats.py)",
        f"`python benchmarks/bench_stats.py --gb {args.gb} --layers {args.layers} --hidden {args.hidden} "
        f"--repeats {args.repeats}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"Store: {n_samples} samples x {args.layers} layers x {args.hidden} float32 = {nbytes / 1e9:.2f} GB "
        f"uncompressed, {disk / 1e9:.2f} GB on disk (Blosc LZ4 + shuffle), 2 classes; dask threaded scheduler; "
        f"median of {args.repeats}.\n\n"
        "| pass | median s | GB/s (uncompressed) |\n|---|---|---|\n"
        f"| raw read + decode (dask sum, float32) | {raw_median:.2f} | {raw_gbs:.2f} |\n"
        f"| `actstore stats` (per-class Welford/Chan, float64) | {stats_median:.2f} | {stats_gbs:.2f} |\n\n"
        f"Stats / raw: **{ratio:.2f}x**. Peak RSS of the benchmark process: {peak:.0f} MiB.",
    )


if __name__ == "__main__":
    main()

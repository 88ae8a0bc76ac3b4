"""Out-of-core statistics: throughput and peak memory as the store grows, against raw read+decode.

    python benchmarks/bench_stats.py [--gb 0.5,5] [--layers 4] [--hidden 640] [--repeats 3] [--dir DIR]

For each size it builds a store with actstore's own writer (activation-like
data: per-dimension offsets and scales, a few outlier dimensions; 2 classes),
then, each in a fresh process so that peak memory is the pass's own:
  raw:   read + decode every chunk (dask, same chunks, same threads; float32 sum)
  stats: actstore.compute_stats (per-class Welford/Chan, float64)
and reports GB/s of uncompressed data and the peak resident memory of each
process. Sizes beyond the machine's memory work (``--gb 40`` with ``--dir`` on
a disk that holds it); below it, the reads come from the page cache after the
build, which is the harder case for the stats/raw ratio (no disk to hide in).

It also times the per-block kernel alone: the fused numba pass actstore uses
against the numpy version it replaced (float64 conversion of cache-sized
slices, per-class sums by a one-hot matrix product).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, median_time, peak_rss_mib, write_section


def build_store(path: Path, n_samples: int, n_layers: int, hidden: int, checksum: bool = True,
                codec: str | None = None, dtype: str = "float32") -> None:
    from actstore.stores import ActivationWriter, CaptureSpec, schema

    if not checksum:  # a store as actstore wrote them before checksums: the same codecs without the CRC32C
        plain = schema.compressors
        schema.compressors = lambda codec: plain(codec)[:-1]
        try:
            return build_store(path, n_samples, n_layers, hidden, codec=codec, dtype=dtype)
        finally:
            schema.compressors = plain

    spec = CaptureSpec("synthetic/activations", "none", "synthetic", hidden, list(range(n_layers)), "last",
                       dtype=dtype, codec=codec or schema.DEFAULT_CODEC)
    with ActivationWriter.open(path, "synthetic", spec) as writer:
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
            coords = {"class": labels, "pair_id": index // 2, "text_hash": np.full(rows, "0" * 16),
                      "text_index": index, "token_index": np.full(rows, -1)}
            writer.append(acts, coords, start + rows, int(index[-1] // 2))


def measure(store: str, which: str, repeats: int) -> dict:
    """One pass type over ``store`` in this process: median seconds and peak RSS."""
    import actstore

    if which == "raw":
        ds = actstore.open_store(store)

        def run():
            return ds.acts.data.sum(dtype="f4").compute()
    elif which == "numpy":  # the whole array in memory first (not timed), then numpy's float64 mean/var
        ds = actstore.open_store(store, coords=("class",))
        acts, labels = ds.acts.values, ds["class"].values

        def run():
            for label in ("pos", "neg"):
                rows = acts[labels == label]
                rows.mean(0, dtype=np.float64)
                rows.var(0, ddof=1, dtype=np.float64)
    else:

        def run():
            return actstore.compute_stats(store, force=True)
    # The first pass in a process also pays one-off costs (imports; for stats,
    # loading numba's cached compile): reported apart from the warm median.
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    median, times = median_time(run, repeats)
    # The pass's own peak, before the checks below open the store's per-sample coordinates
    # (O(samples): at 5 GB they alone added ~70 MiB to the peak measured after them).
    peak = peak_rss_mib()
    if which == "stats":
        stats = actstore.open_stats(store)
        ds = actstore.open_store(store)
        # The pass really covered every sample.
        assert int(stats["count"].sum()) == ds.sizes["sample"] * ds.sizes["layer"]
        # ENR + export from the cached statistics: should not depend on the number of samples.
        out = Path(store).parent / "v.safetensors"
        enr_median, _ = median_time(lambda: actstore.save_vector(actstore.build_vector(store, 0, "enr", 64), out), max(repeats, 5))
        fixed = fixed_costs(store, stats, max(repeats, 5))
    result = {"median": median, "times": times, "first": first, "peak_mib": peak}
    if which == "stats":
        result["enr_export_s"] = enr_median
        result["fixed_s"] = fixed
    return result


def fixed_costs(store: str, stats, repeats: int) -> dict:
    """Median seconds of the parts of a statistics pass that the raw read of the activations does
    not have: opening the group, reading the class labels (they grow with the samples) and writing
    the statistics cache."""
    from actstore.stats.streaming import cache_stats
    from actstore.stores.group import StoreGroup
    from actstore.stores.reader import class_codes

    group = StoreGroup.open(store, None)
    n = int(group.group.attrs["n_samples"])
    return {"open": median_time(lambda: StoreGroup.open(store, None), repeats)[0],
            "labels": median_time(lambda: class_codes(group.group, store, n), repeats)[0],
            "cache": median_time(lambda: cache_stats(store, group.group.basename, stats), repeats)[0]}


# glibc's allocator keeps freed chunk buffers in up to 8 arenas per core and gives
# them back lazily: peak RSS then creeps up with the number of chunks read, though
# what is live stays flat. Two settings show it: fewer arenas, and trimming on every free.
ALLOCATOR_SETTINGS = {"arenas2": {"MALLOC_ARENA_MAX": "2"}, "trim": {"MALLOC_TRIM_THRESHOLD_": "0"}}


def run_measure(store: Path, which: str, repeats: int, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", str(store), "--which", which,
                          "--repeats", str(repeats)], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _numpy_block_state(block, codes, shift, n_classes, cache_bytes=256 << 10):
    # The kernel actstore used before numba: float64 slices, one-hot matmuls.
    flat = block.reshape(block.shape[0], -1)
    s1 = np.zeros((n_classes, flat.shape[1]))
    s2 = np.zeros_like(s1)
    step = max(1, cache_bytes // (8 * flat.shape[1]))
    for start in range(0, flat.shape[0], step):
        rows = slice(start, start + step)
        centred = np.subtract(flat[rows], shift.reshape(-1), dtype=np.float64)
        onehot = np.zeros((n_classes, centred.shape[0]))
        onehot[codes[rows], np.arange(centred.shape[0])] = 1.0
        s1 += onehot @ centred
        np.square(centred, out=centred)
        s2 += onehot @ centred
    return s1, s2


def kernel_times(hidden: int, repeats: int = 50) -> tuple[float, float]:
    """Seconds per 2048 x hidden float32 block: (numpy one-hot, actstore's numba kernel)."""
    from actstore.stats.streaming import _block_state

    rng = np.random.default_rng(0)
    block = rng.standard_normal((2048, 1, hidden), dtype=np.float32) * 3 + 100
    codes = (np.arange(2048) % 2).astype(np.int64)
    shift = block[0].astype(np.float64)
    _block_state(block, codes, shift, 2)  # compile (or load the cached compile)
    s1, s2 = _numpy_block_state(block, codes, shift, 2)
    state = _block_state(block, codes, shift, 2)[0]
    n, mean, m2 = (a.reshape(s1.shape) for a in state)
    assert np.allclose(n * mean, s1, rtol=1e-9, atol=1e-6)  # same sums, either way
    assert np.allclose(m2 + s1 * mean, s2, rtol=1e-9, atol=1e-6)
    results = []
    for fn in (_numpy_block_state, _block_state):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(block, codes, shift, 2)
        results.append((time.perf_counter() - t0) / repeats)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", default="0.5,5", help="comma-separated uncompressed sizes of the acts array")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir)")
    parser.add_argument("--codec", default=None, help="acts codec of the stores (default: a new group's)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--checksum", action="store_true",
                        help="only the cost of the CRC32C checksum: the same data with and without it, raw and stats")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--which", default="stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.which, args.repeats)))
        return

    from actstore.stores.schema import DEFAULT_CODEC

    if args.checksum:
        args.codec = args.codec or DEFAULT_CODEC
        checksum_cost(args)
        return
    from limits import pass_gbps

    args.codec = args.codec or DEFAULT_CODEC
    sizes = [float(x) for x in args.gb.split(",")]
    limit = pass_gbps()  # the ceiling of any pass over data in the page cache, measured in this run
    print(f"limit: in-memory pass (copy + float64 sum, one thread) {limit:.2f} GB/s", flush=True)
    rows = []
    for gb in sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-stats-", dir=args.dir))
        store = work / "synthetic.zarr"
        n_samples = int(gb * 1e9 / (args.layers * args.hidden * 4))
        t0 = time.perf_counter()
        build_store(store, n_samples, args.layers, args.hidden, codec=args.codec)
        nbytes = n_samples * args.layers * args.hidden * 4
        disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        print(f"built {nbytes / 1e9:.2f} GB ({disk / 1e9:.2f} GB on disk) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        raw = run_measure(store, "raw", args.repeats)
        stats = run_measure(store, "stats", args.repeats)
        for name, env in ALLOCATOR_SETTINGS.items():
            stats[name] = run_measure(store, "stats", 1, env)
        row = {"gb": nbytes / 1e9, "disk_gb": disk / 1e9, "n": n_samples, "raw": raw, "stats": stats,
               "raw_gbs": nbytes / raw["median"] / 1e9, "stats_gbs": nbytes / stats["median"] / 1e9}
        row["ratio"] = row["stats_gbs"] / row["raw_gbs"]
        print(f"{row['gb']:.2f} GB: raw {row['raw_gbs']:.2f} GB/s ({raw['peak_mib']:.0f} MiB), "
              f"stats {row['stats_gbs']:.2f} GB/s ({stats['peak_mib']:.0f} MiB): {row['ratio']:.2f}x", flush=True)
        if not rows:  # the smallest store also in memory, for numpy (a 10x store may not fit)
            row["numpy"] = run_measure(store, "numpy", args.repeats)
            row["numpy_gbs"] = nbytes / row["numpy"]["median"] / 1e9
        rows.append(row)
        shutil.rmtree(work, ignore_errors=True)

    if args.no_write:
        return
    numpy_s, numba_s = kernel_times(args.hidden)
    block_gb = 2048 * args.hidden * 4 / 1e9
    def growth(key=None):
        first, last = rows[0]["stats"], rows[-1]["stats"]
        if key:
            first, last = first[key], last[key]
        return last["peak_mib"] / first["peak_mib"]

    allocator = "; ".join(
        f"`{' '.join(f'{k}={v}' for k, v in env.items())}`: "
        + ", ".join(f"{r['stats'][name]['peak_mib']:.0f} MiB ({r['stats'][name]['median']:.2f} s)" for r in rows)
        + f" -> **{growth(name):.2f}x**"
        for name, env in ALLOCATOR_SETTINGS.items())
    table = "\n".join(
        f"| {r['gb']:.2f} ({r['disk_gb']:.2f} on disk) | {r['n']} | {r['raw']['median']:.2f} | {r['raw_gbs']:.2f} "
        f"| {r['stats']['median']:.2f} | {r['stats_gbs']:.2f} | **{r['ratio']:.2f}x** | {r['stats_gbs'] / limit:.2f}x "
        f"| {r['raw']['peak_mib']:.0f} "
        f"| {r['stats']['peak_mib']:.0f} |" for r in rows)
    write_section(
        "Statistics throughput (bench_stats.py)",
        f"`python benchmarks/bench_stats.py --gb {args.gb} --layers {args.layers} --hidden {args.hidden} "
        f"--repeats {args.repeats} --codec {args.codec}` at {git_rev()}\n\n"
        f"Machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.2f} when the section was written\n\n"
        f"Synthetic stores of N samples x {args.layers} layers x {args.hidden} float32 (codec {args.codec}, CRC32C "
        f"verified on every read, "
        f"2 classes), dask threaded scheduler; each pass in a fresh process (peak RSS is that process's), "
        f"median of {args.repeats} after one warm-up pass. Reads come from the page cache (the store was just "
        f"written). The first pass in a process costs more: stats {rows[0]['stats']['first']:.2f} s vs warm "
        f"{rows[0]['stats']['median']:.2f} s on the smallest store (imports, loading numba's cached compile), "
        f"raw {rows[0]['raw']['first']:.2f} vs {rows[0]['raw']['median']:.2f} s.\n\n"
        "| GB uncompressed | samples | raw s | raw GB/s | stats s | stats GB/s | stats / raw | stats / limit "
        "| raw peak MiB | stats peak MiB |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"{table}\n\n"
        f"Limit: a pass over the same number of bytes held in memory (numpy copy + float64 sum, one thread; "
        f"`benchmarks/limits.py`), measured in this run: **{limit:.2f} GB/s**. Targets (issue 21): stats at "
        f"least 2 GB/s and at least 0.9x raw at every size.\n\n"
        f"Peak memory of the stats pass, largest / smallest store: **{growth():.2f}x** for "
        f"{rows[-1]['gb'] / rows[0]['gb']:.0f}x the data with the default allocator settings. The same "
        f"pass (one run each) under other glibc malloc settings, smallest to largest store: {allocator}. "
        "The pass reads each chunk into buffers its worker thread reuses (nothing is allocated per "
        "chunk) and the class labels a slice at a time; what still grows with the samples is their "
        "class codes (8 bytes a sample).\n\n"
        "What a statistics pass does besides reading the activations, which the raw read does not do "
        "(median of 5, each part alone; the class labels grow with the samples, the other two are fixed): "
        + ", ".join(f"at {r['n']} samples: open {r['stats']['fixed_s']['open'] * 1e3:.0f} ms, class labels "
                    f"{r['stats']['fixed_s']['labels'] * 1e3:.0f} ms, cache write {r['stats']['fixed_s']['cache'] * 1e3:.0f} ms "
                    f"({sum(r['stats']['fixed_s'].values()) / r['stats']['median']:.0%} of the pass)" for r in rows)
        + ". Without them the smallest store's pass would take "
        f"{rows[0]['stats']['median'] - sum(rows[0]['stats']['fixed_s'].values()):.2f} s against the raw read's "
        f"{rows[0]['raw']['median']:.2f} s.\n\n"
        f"In memory, numpy's own float64 per-class mean and var over the smallest store, already loaded "
        f"(not timed), take {rows[0]['numpy']['median']:.2f} s ({rows[0]['numpy_gbs']:.2f} GB/s; peak "
        f"{rows[0]['numpy']['peak_mib']:.0f} MiB): the streaming pass, reading and decoding from the store, "
        f"runs at **{rows[0]['stats_gbs'] / rows[0]['numpy_gbs']:.2f}x** numpy's speed on data it does not hold.\n\n"
        "ENR + export of a k=64 vector from the cached statistics (`actstore.build_vector` + `save_vector`, median of 5): "
        + ", ".join(f"{r['stats']['enr_export_s'] * 1e3:.1f} ms at {r['n']} samples" for r in rows)
        + f" (**{rows[-1]['stats']['enr_export_s'] / rows[0]['stats']['enr_export_s']:.2f}x** for "
        f"{rows[-1]['n'] / rows[0]['n']:.0f}x the samples).\n\n"
        f"Per-block kernel alone (2048 x {args.hidden} float32, one thread): numpy float64 slices + one-hot "
        f"matmuls {numpy_s * 1e3:.2f} ms ({block_gb / numpy_s:.2f} GB/s); fused numba pass "
        f"{numba_s * 1e3:.2f} ms ({block_gb / numba_s:.2f} GB/s): **{numpy_s / numba_s:.1f}x**.",
    )


def checksum_cost(args) -> None:
    """Raw read and stats of one store of data written with and without the checksum, in turns."""
    gb = float(args.gb.split(",")[0])
    work = Path(tempfile.mkdtemp(prefix="bench-crc-", dir=args.dir))
    n_samples = int(gb * 1e9 / (args.layers * args.hidden * 4))
    nbytes = n_samples * args.layers * args.hidden * 4
    stores = {"crc32c": work / "crc.zarr", "none": work / "plain.zarr"}
    for name, store in stores.items():
        build_store(store, n_samples, args.layers, args.hidden, checksum=name == "crc32c", codec=args.codec)
    import actstore

    passes = {}
    for name, store in stores.items():
        ds = actstore.open_store(store)
        passes[name, "raw"] = lambda ds=ds: ds.acts.data.sum(dtype="f4").compute()
        passes[name, "stats"] = lambda store=store: actstore.compute_stats(store, force=True)
    for run in passes.values():  # warm: imports, numba's cached compile, the page cache
        run()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in passes}
    for _ in range(args.repeats):  # alternate in one process, so that a busy moment hits all four alike
        for key, run in passes.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    med = {key: float(np.median(v)) for key, v in times.items()}
    lines = [f"| {name} | {which} | {med[name, which]:.2f} | {nbytes / med[name, which] / 1e9:.2f} | "
             + " ".join(f"{t:.2f}" for t in times[name, which]) + " |"
             for name in stores for which in ("raw", "stats")]
    target = med["none", "raw"] / med["crc32c", "stats"]
    print("\n".join(lines))
    print(f"stats with checksum / raw read without: {target:.2f}x")
    write_section(
        "Checksum cost (bench_stats.py --checksum)",
        f"`python benchmarks/bench_stats.py --checksum --gb {gb:g} --layers {args.layers} --hidden {args.hidden} "
        f"--repeats {args.repeats} --codec {args.codec}` at {git_rev()}\n\n"
        f"Machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.2f} when the section was written\n\n"
        f"The same synthetic data ({nbytes / 1e9:.2f} GB, {n_samples} samples x {args.layers} x {args.hidden} float32, "
        f"codec {args.codec}) written twice: with the CRC32C checksum every store now has, and without (as "
        "before). One process, every pass warm (one pass each first); the four passes alternate, "
        f"{args.repeats} rounds; medians.\n\n"
        "| store | pass | median s | GB/s | each s |\n|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        f"stats with the checksum / raw read+decode without it: **{target:.2f}x**; raw read with / without "
        f"the checksum: **{med['none', 'raw'] / med['crc32c', 'raw']:.2f}x**; stats with / without: "
        f"**{med['none', 'stats'] / med['crc32c', 'stats']:.2f}x**; stats / raw, both with the checksum: "
        f"**{med['crc32c', 'raw'] / med['crc32c', 'stats']:.2f}x**.",
    )


if __name__ == "__main__":
    main()

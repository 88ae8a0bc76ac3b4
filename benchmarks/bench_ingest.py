"""The store's ingest path alone, fed synthetic activations at memory speed, against the codec's raw write.

    python benchmarks/bench_ingest.py [--gb 1.0] [--window-rows 3638] [--layers 18] [--hidden 640] [--repeats 3]

Rows go to a fresh store the way ``actstore capture --position all`` writes them:
windows of ``--window-rows`` rows (a 64-text window of gemma-3-270m on the
refusal pairs is 3638 token rows), each appended with its coordinates and
committed by :class:`actstore.stores.writer.ActivationWriter` on the writer
thread of :class:`actstore.capture.ingest.OrderedWriter`, with and without the
per-class moments a full capture keeps up to date. The limit is the codec's raw
write: the same data into a zarr array of the same chunks and codec, created at
its final size and written in whole chunks (no resizes, no coordinates, no
commits, no partly filled chunk written twice). Each core count runs in a fresh
process (zarr's thread pool, which encodes the chunks, is sized once per
process; torch gets the same number of threads); within a repeat the three runs
alternate, and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, write_section


def synthetic_window(rows: int, layers: int, hidden: int, seed: int = 0):
    """Activation-like float32 ``(rows, layers, hidden)``: per-coordinate scales, a few massive coordinates."""
    import numpy as np

    rng = np.random.default_rng(seed)
    scale = rng.lognormal(size=(1, layers, hidden)).astype(np.float32)
    scale[..., :4] *= 100
    return rng.normal(size=(1, layers, hidden)).astype(np.float32) + scale * rng.standard_normal(
        (rows, layers, hidden), dtype=np.float32)


def worker(args) -> dict:
    import numpy as np
    import torch
    import zarr

    zarr.config.set({"threading.max_workers": args.cores})
    torch.set_num_threads(args.cores)
    from actstore.capture.ingest import OrderedWriter
    from actstore.moments import Moments
    from actstore.stats.streaming import window_moments
    from actstore.stores.schema import CaptureSpec, compressors, sample_chunk
    from actstore.stores.writer import ActivationWriter

    window = synthetic_window(args.window_rows, args.layers, args.hidden)
    n_windows = max(1, round(args.gb * 1e9 / window.nbytes))
    total_rows = n_windows * args.window_rows
    nbytes = total_rows * args.layers * args.hidden * 4
    labels = np.where(np.arange(args.window_rows) % 2 == 0, "pos", "neg")
    chunk_rows = sample_chunk(args.hidden, 4)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    spec = CaptureSpec(model_id="synthetic", model_fingerprint="synthetic", model_type=None,
                       hidden_size=args.hidden, layers=list(range(args.layers)), position="all",
                       codec=args.codec)

    def ingest(moments: bool):
        def once():
            path = work / "ingest.zarr"
            shutil.rmtree(path, ignore_errors=True)
            with ActivationWriter.open(path, "g", spec) as writer:
                writer.begin_run("synthetic", "0" * 64, n_windows, False, {})
                tracked = [Moments.empty((args.layers, args.hidden))]

                def commit(i: int) -> None:
                    index = np.arange(i * args.window_rows, (i + 1) * args.window_rows)
                    coords = {"class": labels, "pair_id": index // 2, "text_index": index // 57,
                              "token_index": index % 57, "text_hash": np.char.mod("%016x", index // 57)}
                    writer.append(window, coords, i + 1, int(index[-1] // 2))
                    if moments:
                        tracked[0] = tracked[0].merge(window_moments(window, labels))

                with OrderedWriter(commit) as overlapped:
                    for i in range(n_windows):
                        overlapped.put(i)
            assert zarr.open_group(path, mode="r")["g"].attrs["n_samples"] == total_rows

        return once

    def raw():
        path = work / "raw.zarr"
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(path, shape=(total_rows, args.layers, args.hidden), dtype="float32",
                                  chunks=(chunk_rows, 1, args.hidden), compressors=compressors(args.codec),
                                  fill_value=0)
        slab = chunk_rows * max(1, args.window_rows // chunk_rows)  # whole chunks, about a window's worth
        tiled = np.concatenate([window] * (slab // args.window_rows + 2))[:slab]
        for start in range(0, total_rows, slab):
            stop = min(start + slab, total_rows)
            array[start:stop] = tiled[: stop - start]

    runs = {"raw": raw, "ingest": ingest(False), "ingest + moments": ingest(True)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    return {"cores": args.cores, "gb": nbytes / 1e9, "windows": n_windows, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="uncompressed GB ingested per run")
    parser.add_argument("--window-rows", type=int, default=3638)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codec", default=None, help="acts codec (default: a new group's, DEFAULT_CODEC)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md alone")
    parser.add_argument("--cores", type=int, default=None, help=argparse.SUPPRESS)  # a worker process
    args = parser.parse_args()
    if args.codec is None:
        from actstore.stores.schema import DEFAULT_CODEC

        args.codec = DEFAULT_CODEC
    if args.cores is not None:
        print(json.dumps(worker(args)))
        return

    from limits import write_speed_gbps

    all_cores = os.cpu_count() or 1
    counts = sorted({1, min(2, all_cores), all_cores})
    limit = write_speed_gbps()  # chunk-sized files into the page cache: the ceiling of any write path
    print(f"limit: page-cache write of chunk-sized files {limit:.2f} GB/s", flush=True)
    results = []
    for cores in counts:
        command = [sys.executable, __file__, "--cores", str(cores), "--gb", str(args.gb), "--window-rows",
                   str(args.window_rows), "--layers", str(args.layers), "--hidden", str(args.hidden),
                   "--repeats", str(args.repeats), "--codec", args.codec]
        env = {**os.environ, "OMP_NUM_THREADS": str(cores)}
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{cores} core(s): " + "; ".join(f"{name} {', '.join(f'{t:.2f}' for t in values)} s"
                                             for name, values in results[-1]["times"].items()))
    rows = []
    ratios = {}
    for result in results:
        gb = result["gb"]
        median = {name: statistics.median(values) for name, values in result["times"].items()}
        speed = {name: gb / seconds for name, seconds in median.items()}
        ratios[result["cores"]] = (speed["ingest"] / speed["raw"], speed["ingest + moments"] / speed["raw"])
        label = f"{result['cores']}" + (" (all)" if result["cores"] == all_cores else "")
        rows.append(f"| {label} | {speed['raw']:.2f} | {speed['ingest']:.2f} | {speed['ingest + moments']:.2f} | "
                    f"**{ratios[result['cores']][0]:.2f}x** | {ratios[result['cores']][1]:.2f}x | "
                    f"{speed['raw'] / limit:.2f}x | {speed['ingest'] / limit:.2f}x |")
        print(rows[-1])
    gb, windows = results[0]["gb"], results[0]["windows"]
    if args.no_write:
        return
    codec = {"none": "no compression (CRC32C only)", "lz4": "Blosc LZ4 + shuffle", "zstd": "Zstd"}[args.codec]
    path = ("`ActivationWriter.append` + commit per window on the writer thread (coordinates, resizes, the partly "
            "filled last chunk of each window written again by the next)")
    write_section(
        "Ingest path (bench_ingest.py)",
        f"`python benchmarks/bench_ingest.py --gb {args.gb} --window-rows {args.window_rows} --layers {args.layers} "
        f"--hidden {args.hidden} --repeats {args.repeats} --codec {args.codec}` "
        f"at {git_rev()}\n\n"
        f"Machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.2f} when the section was written\n\n"
        f"{gb:.2f} GB of synthetic activation-like float32 per run, {windows} windows of {args.window_rows} rows x "
        f"{args.layers} layers x {args.hidden}, {codec}, chunks of {2048 if args.hidden == 640 else '?'} "
        "rows of one layer. raw: the codec's write of the same data into an array of its final size in whole "
        f"chunks; ingest: {path}; + moments: also the "
        "per-class moments a full capture keeps (`actstore.stats.streaming.window_moments`, as capture does). Each core "
        "count in a fresh process (zarr's codec pool and "
        f"torch's threads of that size); median of {args.repeats}, the three alternating in each repeat.\n\n"
        "| cores | raw GB/s | ingest GB/s | ingest + moments GB/s | ingest / raw | + moments / raw | raw / limit "
        "| ingest / limit |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nLimit: writing the same bytes as chunk-sized files into the page cache (no encoding, no checksum; "
        f"`benchmarks/limits.py`), measured in this run: **{limit:.2f} GB/s**.\n\n"
        f"Target (issue 21): ingest >= 0.9x the codec's raw write, with all cores: "
        f"**{ratios[all_cores][0]:.2f}x** ({'met' if ratios[all_cores][0] >= 0.9 else 'missed'}).",
    )


if __name__ == "__main__":
    main()

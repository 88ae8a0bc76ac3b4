"""Codec choice for ``acts``: size on disk, write and read+decode throughput.

    python benchmarks/bench_codecs.py [--mb 256] [--hidden 640] [--repeats 3]

Writes the same activation-like float32 array (per-dimension offsets and
scales, a few outlier dimensions; or real gemma-3-270m activations with
--store PATH) with each candidate codec and the store's chunk shape, then
times a full dask read + decode (sum) of each.
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


def codecs():
    """name -> (compressors, rows per chunk or None for the store's, rows per shard or None)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    lz4 = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    return {
        "blosc-lz4-shuffle (actstore)": (lz4, None, None),
        "blosc-zstd3-shuffle": ([BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")], None, None),
        "blosc-zstd3-bitshuffle": ([BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")], None, None),
        "zstd1": ([ZstdCodec(level=1)], None, None),
        "none": (None, None, None),
        # Many small chunks (what a small commit window or a tiny hidden size would give), as files
        # and as inner chunks of store-sized shards (zarr's sharding codec), read shard by shard.
        "blosc-lz4, 256-row chunks": (lz4, 256, None),
        "blosc-lz4, 256-row chunks in shards": (lz4, 256, "store"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", default=None,
                        help="take the data (the first --mb MiB of samples) from this actstore store instead")
    parser.add_argument("--only-class", default=None, help="with --store: keep only this class's samples")
    parser.add_argument("--made-by", default=None, help="the command that made --store (for RESULTS.md)")
    args = parser.parse_args()

    import dask.array as da
    import zarr

    from actstore.stores.schema import sample_chunk

    if args.store:
        import actstore

        ds = actstore.open_store(args.store)
        acts = ds.acts
        if args.only_class:
            # A/B pairs share their prompt: with --position all, the pos and neg rows of a
            # pair are identical up to the answer; keep one class to measure unduplicated data.
            acts = acts.isel(sample=np.flatnonzero(ds["class"].values == args.only_class))
        rows = max(1, args.mb * 2**20 // (acts.shape[1] * acts.shape[2] * 4))
        data = acts[:rows].values.astype(np.float32)
        model_name = ds.attrs["model_id"].rstrip("/").split("/")[-1]
        source = (f"real activations{' of class ' + args.only_class if args.only_class else ''} ({model_name}, "
                  f"position {ds.attrs['position']}, layers {acts.shape[1]}) from {args.store}")
    else:
        rng = np.random.default_rng(0)
        n = args.mb * 2**20 // (args.hidden * 4)
        scale = rng.lognormal(size=(1, 1, args.hidden)).astype(np.float32)
        scale[..., :4] *= 100
        data = rng.normal(size=(1, 1, args.hidden)).astype(np.float32) + scale * rng.standard_normal(
            (n, 1, args.hidden), dtype=np.float32)
        source = "synthetic activation-like float32"
    chunks = (sample_chunk(data.shape[2], 4), 1, data.shape[2])
    work = Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    rows = []
    for i, (name, (compressors, chunk_rows, shard)) in enumerate(codecs().items()):
        path = work / f"array{i}"
        these = chunks if chunk_rows is None else (chunk_rows, 1, data.shape[2])
        shards = chunks if shard else None
        t0 = time.perf_counter()
        array = zarr.create_array(path, shape=data.shape, chunks=these, shards=shards, dtype="float32",
                                  compressors=compressors, fill_value=0)
        array[...] = data
        write_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        # Sharded arrays are read a shard per dask task (zarr decodes its inner chunks).
        lazy = da.from_zarr(zarr.open_array(path, mode="r"), chunks=shards or these)
        median, _ = median_time(lambda lazy=lazy: lazy.sum(dtype="f4").compute(), args.repeats)
        rows.append((name, data.nbytes / disk, data.nbytes / write_s / 1e9, data.nbytes / median / 1e9))
        print(f"{name:32s} ratio {rows[-1][1]:.3f}  write {rows[-1][2]:.2f} GB/s  read+decode {rows[-1][3]:.2f} GB/s")
    shutil.rmtree(work, ignore_errors=True)
    table = "\n".join(f"| {n} | {r:.3f} | {w:.2f} | {d:.2f} |" for n, r, w, d in rows)
    made_by = f"\n\nThe store was made by `{args.made_by}`." if args.made_by else ""
    write_section(
        "Codecs, " + ("real activations" if args.store else "synthetic data") + " (bench_codecs.py)",
        f"`python benchmarks/bench_codecs.py --mb {args.mb} --hidden {args.hidden} --repeats {args.repeats}"
        f"{' --store ' + args.store if args.store else ''}"
        f"{' --only-class ' + args.only_class if args.only_class else ''}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"Data: {data.nbytes / 2**20:.0f} MiB of {source}, chunks {chunks} unless said; read+decode is a dask sum over "
        f"all chunks (threaded scheduler), median of {args.repeats}.{made_by}\n\n"
        "| codec | compression ratio | write GB/s | read+decode GB/s |\n|---|---|---|---|\n" + table,
    )


if __name__ == "__main__":
    main()

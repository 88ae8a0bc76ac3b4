"""The read path, decided by measurement (issue 21 §2): codec x reader, raw read and statistics.

    python benchmarks/bench_read_path.py [--gb 0.5] [--repeats 5] [--dir DIR] [--no-write]

One synthetic store per stored form (bench_stats.build_store: activation-like float32, 4 layers
x 640, 2 classes), written by actstore's own writer: codec none, Blosc LZ4 + shuffle, Zstd, each
with the CRC32C, and bfloat16 (uint16 bits, no compression). Each is read by:

* ``zarr``: zarr-python's codec pipeline (``dask.array.from_zarr``, 4 chunks per task: the
  reader before issue 21);
* ``direct``: actstore's reader (``actstore.stores.chunks``: the chunk files read, CRC32C
  verified and decoded inside each dask task);
* ``zarrs``: the ``zarrs`` package's Rust codec pipeline through zarr's config
  (``codec_pipeline.path``), when it is installed (``pip install zarrs``); 4 chunks per task.

For each pair: the raw read (decode and float32 sum of every chunk) and ``compute_stats`` (the
per-class Welford/Chan pass), dask's threaded scheduler on all cores; every measurement in a
fresh process, the alternatives alternating within each repeat; the median and the best. The
limit beside them: a pass over the same bytes in memory (limits.pass_gbps). Checksums are
verified in every row (none of the speed comes from skipping them).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, write_section  # noqa: E402

FORMS = ("none", "lz4", "zstd", "bfloat16", "sharded")
# "sharded": the "none" store's acts rewritten by zarr with 8 chunks of rows per shard file
# (zarr's sharding codec, CRC32C on each inner chunk and on the shard index). The direct reader
# does not read shards (it hands them to zarr), so that form has no "direct" row.
SHARD_ROWS = 8
READERS = ("zarr", "direct", "zarrs")


def build(path: Path, form: str, gb: float, layers: int = 4, hidden: int = 640) -> None:
    from bench_stats import build_store

    n = int(gb * 1e9 / (layers * hidden * 4))
    if form == "bfloat16":  # the writer stores float32 rows as bfloat16 bits (uint16)
        build_store(path, n, layers, hidden, codec="none", dtype="bfloat16")
    elif form == "sharded":
        build_store(path, n, layers, hidden, codec="none")
        reshard(path)
    else:
        build_store(path, n, layers, hidden, codec=form)


def reshard(path: Path) -> None:
    """Rewrite the acts of the store at ``path`` in shards of :data:`SHARD_ROWS` chunks of rows,
    keeping its chunks, attributes and dimension names."""
    import zarr

    from actstore.stores import schema

    group = zarr.open_group(str(path), mode="a")["synthetic"]
    old = group[schema.ACTS]
    values, attrs, chunks = old[...], dict(old.attrs), old.chunks
    del group[schema.ACTS]
    new = group.create_array(schema.ACTS, shape=values.shape, chunks=chunks, dtype=values.dtype,
                             shards=(chunks[0] * SHARD_ROWS, *chunks[1:]), fill_value=np.nan,
                             compressors=schema.compressors("none"), dimension_names=old.metadata.dimension_names)
    new[...] = values
    new.attrs.update(attrs)

def readers_of(form: str, readers: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(r for r in readers if not (form == "sharded" and r == "direct"))


def measure(store: str, reader: str, which: str) -> float:
    """Seconds of one pass in this process (after one warm-up pass)."""
    if reader == "zarrs":
        import zarr
        import zarrs  # noqa: F401  registers its pipeline

        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    import actstore
    from actstore.stores import chunks

    if reader != "direct":  # every array through zarr's (or zarrs') pipeline, statistics included
        os.environ[chunks.ZARR_READS] = "1"

    def run():
        if which == "raw":
            return actstore.open_store(store).acts.data.sum(dtype="f4").compute()
        return actstore.compute_stats(store, force=True)

    run()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--measure", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    from limits import pass_gbps

    try:
        import zarrs  # noqa: F401
        readers = READERS
    except ImportError:
        readers = READERS[:2]
    work = Path(tempfile.mkdtemp(prefix="bench-read-", dir=args.dir))
    stores, disk = {}, {}
    for form in FORMS:
        stores[form] = work / f"{form}.zarr"
        build(stores[form], form, args.gb)
        disk[form] = sum(f.stat().st_size for f in stores[form].rglob("*") if f.is_file())
    nbytes = int(args.gb * 1e9 / (4 * 640 * 4)) * 4 * 640 * 4
    limit = pass_gbps()
    times: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for which in ("raw", "stats"):
            for form in FORMS:
                for reader in readers_of(form, readers):
                    out = subprocess.run([sys.executable, __file__, "--measure", str(stores[form]), reader, which],
                                         check=True, capture_output=True, text=True)
                    times.setdefault((form, reader, which), []).append(json.loads(out.stdout.splitlines()[-1]))
        print(f"repeat {repeat + 1} of {args.repeats} done", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for form in FORMS:
        for reader in readers_of(form, readers):
            raw, stats = (statistics.median(times[(form, reader, w)]) for w in ("raw", "stats"))
            best = min(times[(form, reader, "stats")])
            rows.append(f"| {form} | {nbytes / disk[form]:.3f} | {reader} | {nbytes / raw / 1e9:.2f} | "
                        f"{nbytes / stats / 1e9:.2f} ({nbytes / best / 1e9:.2f}) | {raw / stats:.2f}x | "
                        f"{nbytes / stats / 1e9 / limit:.2f}x |")
    table = ("| stored as | compression ratio | reader | raw GB/s | stats GB/s (best) | stats / raw | stats / limit |\n"
             "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(table)
    if args.no_write:
        return
    write_section(
        "Read path and codec, decided by measurement (bench_read_path.py)",
        f"`python benchmarks/bench_read_path.py --gb {args.gb} --repeats {args.repeats}` at {git_rev()}\n\n"
        f"Machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.2f} when the section was written\n\n"
        f"{nbytes / 1e9:.2f} GB of synthetic float32 activations (4 layers x 640, 2 classes) per store; GB/s of the "
        f"float32 data; each figure the median of {args.repeats} fresh processes, alternatives alternating; the "
        "CRC32C is verified on every read. zarr: zarr-python's pipeline (the reader before issue 21); direct: "
        "actstore.stores.chunks; zarrs: the zarrs Rust pipeline (if installed). sharded: the none store's acts "
        f"rewritten by zarr in shards of {SHARD_ROWS} chunks of rows (read through zarr; the direct reader hands "
        "shards to zarr). Limit: an in-memory pass over the "
        f"same bytes (copy + float64 sum, one thread), **{limit:.2f} GB/s** in this run.\n\n" + table,
    )


if __name__ == "__main__":
    main()

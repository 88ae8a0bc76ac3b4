"""Per-chunk read routes, one thread, over every acts chunk of one store (issue 21 §2).

    python benchmarks/bench_chunk_routes.py STORE {zarr,zarrs,direct,memory} [REPEATS]

zarr: ``array[chunk]`` through zarr-python's pipeline; zarrs: the same with the zarrs package's
pipeline (if installed); direct: the chunk file read, its CRC32C checked, Blosc decoded with
numcodecs (or nothing for a store of codec none); memory: a float32
sum over the same number of bytes held in memory. Prints GB/s (median and best). A store to run it
on: ``bench_stats.build_store`` (see bench_read_path.build).
"""

import sys
import time
from pathlib import Path

import numpy as np

store = Path(sys.argv[1])
mode = sys.argv[2]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
import zarr

if mode == "zarrs":
    import zarrs  # noqa: F401

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
root = zarr.open_group(str(store), mode="r")
gname = list(root.group_keys())[0]
arr = root[gname]["acts"]
S, L, H = arr.chunks
n = arr.shape[0]
nb = arr.nbytes


def zarr_pass():
    tot = 0.0
    for l in range(arr.shape[1]):
        for s in range(0, n, S):
            tot += float(arr[s : s + S, l, :].sum(dtype="f4"))
    return tot


import google_crc32c
from numcodecs import blosc

chunk_dir = store / gname / "acts" / "c"
COMPRESSED = any(type(c).__name__ == "BloscCodec" for c in arr.metadata.codecs)
files = sorted(p for p in chunk_dir.rglob("*") if p.is_file())


def direct_pass():
    tot = 0.0
    for p in files:
        data = p.read_bytes()
        mv = memoryview(data)
        if google_crc32c.value(np.frombuffer(data, "u1")[:-4]) != int.from_bytes(data[-4:], "little"):
            raise ValueError(p)
        a = (
            np.frombuffer(blosc.decompress(np.frombuffer(data, "u1")[:-4]), dtype="f4")
            if COMPRESSED
            else np.frombuffer(data, "f4", count=(len(data) - 4) // 4)
        )
        tot += float(a.sum(dtype="f4"))
    return tot


def memory_pass(buf=[]):
    if not buf:
        buf.append(np.ones(nb // 4, dtype="f4"))
    return float(buf[0].sum(dtype="f4"))


fn = {"zarr": zarr_pass, "zarrs": zarr_pass, "direct": direct_pass, "memory": memory_pass}[mode]
fn()
ts = []
for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
print(
    f"{mode}: {nb / 1e9:.3f} GB, chunks {len(files)}, median {np.median(ts):.3f} s, {nb / 1e9 / np.median(ts):.2f} GB/s, min {nb / 1e9 / min(ts):.2f}"
)

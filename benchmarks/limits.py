"""The machine's physical limits, measured in the same run as the figure they bound (issue 21 §1).

Every speed in RESULTS.md is given beside the limit that caps it:

* ``pass_gbps``: a pass over bytes already in memory (numpy copy + float64 sum of float32):
  the ceiling of any statistics pass over data in the page cache;
* ``crc32c_gbps``: google-crc32c (what zarr's checksum codec calls) on one chunk;
* ``decode_gbps``: one codec's decode of one real-sized chunk (blosc lz4 with shuffle, zstd), and
  ``none`` for the chunk's copy alone;
* ``write_speed_gbps``: writing chunk-sized files into the page cache: the ceiling of ingest;
* ``matmul_gflops``: ``torch.mm`` at a given shape (the LM head: tokens x hidden @ hidden x vocab),
  in the dtype a sweep runs in: the ceiling of a sweep configuration's arithmetic.

Run alone (``python benchmarks/limits.py``) it prints the table; the other benchmarks import
the functions and print their figures as fractions of these.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

CHUNK_BYTES = 8 << 20  # the store's chunk size (stores/schema.py _CHUNK_BYTES)


def _best_rate(fn, nbytes: float, repeats: int) -> float:
    """Bytes (or flops) per second of ``fn``: the best of ``repeats`` runs (a limit is a best case)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def activations_like(nbytes: int, seed: int = 0) -> np.ndarray:
    """float32 values with the spread of residual activations (heavy-tailed, a few large coordinates)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_t(df=4, size=nbytes // 4).astype(np.float32)
    values[:: 641] *= 40  # a few outlier coordinates, as residual streams have
    return values


def pass_gbps(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """GB/s of copying float32 data held in memory and summing it in float64 (one pass)."""
    data = activations_like(nbytes)
    out = np.empty_like(data)

    def one_pass():
        np.copyto(out, data)
        out.sum(dtype=np.float64)

    return _best_rate(one_pass, nbytes, repeats) / 1e9


def crc32c_gbps(nbytes: int = CHUNK_BYTES, repeats: int = 20) -> float:
    import google_crc32c

    data = activations_like(nbytes).tobytes()
    return _best_rate(lambda: google_crc32c.value(data), nbytes, repeats) / 1e9


def decode_gbps(codec: str, nbytes: int = CHUNK_BYTES, repeats: int = 10) -> tuple[float, float]:
    """(decoded GB/s, compression ratio) of one chunk of activation-like float32 for ``codec``
    ('lz4' = blosc lz4 with byte shuffle, 'zstd' = blosc zstd level 3 with byte shuffle, 'none')."""
    from numcodecs import Blosc

    data = activations_like(nbytes)
    if codec == "none":
        raw = data.tobytes()
        return _best_rate(lambda: np.frombuffer(raw, np.float32).copy(), nbytes, repeats) / 1e9, 1.0
    cname = {"lz4": "lz4", "zstd": "zstd"}[codec]
    blosc = Blosc(cname=cname, clevel=5 if cname == "lz4" else 3, shuffle=Blosc.SHUFFLE, typesize=4)
    encoded = blosc.encode(data)
    return _best_rate(lambda: blosc.decode(encoded), nbytes, repeats) / 1e9, nbytes / len(encoded)


def matmul_gflops(m: int, k: int, n: int, dtype: str = "float32", repeats: int = 5) -> float:
    """GFLOP/s of ``torch.mm`` of (m, k) @ (k, n) in ``dtype`` on this machine's CPU threads."""
    import torch

    torch_dtype = getattr(torch, dtype)
    a = torch.randn(m, k, dtype=torch_dtype)
    b = torch.randn(k, n, dtype=torch_dtype)
    torch.mm(a, b)  # warm-up: thread pool and kernel choice
    return _best_rate(lambda: torch.mm(a, b), 2.0 * m * k * n, repeats) / 1e9


def write_speed_gbps(nbytes: int = 512 << 20, chunk: int = CHUNK_BYTES, repeats: int = 3) -> float:
    """GB/s of writing ``nbytes`` as chunk-sized files into a fresh folder (page cache, no fsync):
    the ceiling of any write path, ingest included."""
    import os
    import shutil
    import tempfile

    data = activations_like(chunk).tobytes()

    def write_all():
        folder = tempfile.mkdtemp(prefix="limits-write-")
        try:
            for i in range(nbytes // chunk):
                with open(os.path.join(folder, str(i)), "wb") as f:
                    f.write(data)
        finally:
            shutil.rmtree(folder)

    return _best_rate(write_all, nbytes, repeats) / 1e9


def main() -> None:
    import os
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pass-mib", type=int, default=512, help="bytes for the in-memory pass (MiB)")
    parser.add_argument("--head", default="256,640,262144",
                        help="tokens,hidden,vocab of the LM head matmul (default: gemma-3-270m, 256 tokens)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    m, k, n = (int(x) for x in args.head.split(","))
    rows = [(f"in-memory pass (copy + float64 sum, one thread), {args.pass_mib} MiB", f"{pass_gbps(args.pass_mib << 20):.2f} GB/s"),
            (f"CRC32C (google-crc32c) of one {CHUNK_BYTES >> 20} MiB chunk", f"{crc32c_gbps():.2f} GB/s"),
            (f"write {args.pass_mib} MiB as {CHUNK_BYTES >> 20} MiB files (page cache, no fsync)",
             f"{write_speed_gbps(args.pass_mib << 20):.2f} GB/s")]
    for codec in ("none", "lz4", "zstd"):
        rate, ratio = decode_gbps(codec)
        rows.append((f"decode one chunk, {codec} (compression ratio {ratio:.3f} on activation-like data)",
                     f"{rate:.2f} GB/s"))
    rows.append((f"`torch.mm` {m}x{k} @ {k}x{n} float32 (the LM head of gemma-3-270m over {m} tokens)",
                 f"{matmul_gflops(m, k, n):.1f} GFLOP/s"))
    table = "| limit | measured |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.no_write:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import git_rev, machine, write_section

    write_section(
        "Physical limits (limits.py)",
        f"`python benchmarks/limits.py` at {git_rev()}\n\nMachine: {machine()}; 1-minute load average "
        f"{os.getloadavg()[0]:.2f} when the section was written\n\nThe best of a few runs each (a limit is a best "
        "case). Every benchmark below measures the limit that bounds it again in its own run and gives its "
        "figures as fractions of it; this table is the same functions run alone.\n\n" + table,
    )


if __name__ == "__main__":
    main()

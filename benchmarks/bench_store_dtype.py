"""Half-precision stores on real all-token gemma-3-270m activations: size, read speed, error against float32.

    python benchmarks/bench_store_dtype.py [--texts 64] [--repeats 3]

Captures the first ``--texts`` texts of caa-pairs/refusal/train.json at every
layer and every token in float32 (gemma's residual stream has massive
coordinates), then writes the same rows as each candidate, Blosc LZ4 + shuffle,
chunks of one layer and 8 MiB:

* float32: the reference;
* float16: what ``--store-dtype float16`` writes; refused when a value is beyond
  +-65504 (the count of such values is reported; the figures are of the values cast);
* bfloat16 bits as uint16: what ``--store-dtype bfloat16`` writes (round to nearest
  even), decoded to float32 by ``open_store``;
* float32 + BitRound(7): numcodecs' bit rounding to bfloat16's 7 mantissa bits,
  stored as float32 (the zeroed low bits left to the compressor).

Read + decode is a dask sum over the array as float32 (decoding included), the
candidates alternating in each repeat; median. Errors against float32: the largest
relative error of an element, the error at the largest coordinate, and the
largest error of a per-(layer, coordinate) mean in units of its standard deviation.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, preamble, write_section


def candidates():
    import numpy as np
    from zarr.codecs.numcodecs import BitRound

    from actstore.stores.schema import bfloat16_bits, bfloat16_values

    f16_max = np.finfo(np.float16).max
    return {
        "float32": ("float32", [], lambda x: x, lambda x: x),
        "float16 (refused: overflow)": ("float16", [], lambda x: np.clip(x, -f16_max, f16_max).astype(np.float16),
                                        lambda x: x.astype(np.float32)),
        "bfloat16 bits as uint16 (`--store-dtype bfloat16`)": ("uint16", [], bfloat16_bits, bfloat16_values),
        "float32 + BitRound(7)": ("float32", [BitRound(keepbits=7)], lambda x: x, lambda x: x),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import dask.array as da
    import numpy as np
    import zarr

    import actstore
    from actstore.stores.schema import compressors, sample_chunk

    setup = preamble("store-dtype", "refusal", args.texts // 2)
    store = setup.work / "f32.zarr"
    actstore.capture_to_store(setup.loaded, setup.data, store, layers="all", position="all", progress=False)
    acts = actstore.open_store(store).acts.values
    n, n_layers, hidden = acts.shape
    f16_over = int((np.abs(acts) > np.finfo(np.float16).max).sum())
    top = np.unravel_index(np.abs(acts).argmax(), acts.shape)
    mean64, std64 = acts.astype(np.float64).mean(0), acts.astype(np.float64).std(0)
    arrays, rows = {}, {}
    for i, (name, (dtype, filters, encode, decode)) in enumerate(candidates().items()):
        path = setup.work / f"c{i}.zarr"
        t0 = time.perf_counter()
        array = zarr.create_array(path, shape=acts.shape, dtype=dtype, filters=filters,
                                  chunks=(sample_chunk(hidden, np.dtype(dtype).itemsize), 1, hidden),
                                  compressors=compressors("lz4"), fill_value=0)
        array[...] = encode(acts)
        write_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        back = decode(zarr.open_array(path, mode="r")[...])
        nonzero = acts != 0
        rel = np.abs(back[nonzero] - acts[nonzero]) / np.abs(acts[nonzero])
        mean_err = np.abs(back.astype(np.float64).mean(0) - mean64) / np.maximum(std64, 1e-30)
        rows[name] = {"disk": disk, "write": acts.nbytes / write_s / 1e9, "rel": float(rel.max()),
                      "top": float(abs(back[top] - acts[top])), "mean": float(mean_err.max()), "read": []}
        lazy = da.from_zarr(zarr.open_array(path, mode="r"))
        arrays[name] = lazy.map_blocks(decode, dtype=np.float32)
    for _ in range(args.repeats):
        for name, lazy in arrays.items():
            t0 = time.perf_counter()
            lazy.sum(dtype="f4").compute()
            rows[name]["read"].append(time.perf_counter() - t0)
    shutil.rmtree(setup.work, ignore_errors=True)
    lines = []
    base = rows["float32"]["disk"]
    for name, r in rows.items():
        read = acts.nbytes / statistics.median(r["read"]) / 1e9
        lines.append(f"| {name} | {r['disk'] / 1e6:.1f} | {base / r['disk']:.2f}x | {r['write']:.2f} | {read:.2f} | "
                     f"{r['rel']:.1e} | {r['top']:.3g} | {r['mean']:.1e} |")
        print(lines[-1])
    write_section(
        "Store dtypes on real activations (bench_store_dtype.py)",
        f"`python benchmarks/bench_store_dtype.py --texts {args.texts} --repeats {args.repeats}` at {git_rev()}\n\n"
        f"Machine: {machine()} (shared with other engineers' work while it ran)\n\n"
        f"google/gemma-3-270m (float32, CPU), first {args.texts} texts of caa-pairs/refusal/train.json, "
        f"`--layers all --position all`: {n} tokens x {n_layers} layers x {hidden} = {acts.nbytes / 1e9:.3f} GB "
        f"of float32. Largest |value|: {abs(acts[top]):.4g} (layer index {top[1]}, coordinate {top[2]}); "
        f"**{f16_over}** values beyond float16's 65504, so `--store-dtype float16` refuses this capture. "
        "Blosc LZ4 + shuffle, one-layer 8 MiB chunks; read + decode to float32 by dask, median of "
        f"{args.repeats}, candidates alternating.\n\n"
        "| stored as | MB on disk | smaller than float32 | write GB/s | read+decode GB/s | max rel. error | "
        "error at the largest coordinate | max mean error / std |\n|---|---|---|---|---|---|---|---|\n" +
        "\n".join(lines) +
        "\n\nGB/s are of the float32 data. Relative errors are bounded by the unit roundoff of 8 significant bits, "
        "2^-8 = 3.9e-3, for bfloat16 and BitRound(7) alike.",
    )


if __name__ == "__main__":
    main()

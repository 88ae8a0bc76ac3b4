"""Generation overhead of steering on google/gemma-3-270m: none vs sparse (k=64) vs dense.

    python benchmarks/bench_steering.py [--repeats 5] [--new-tokens 32] [--batch 4]

Builds k=64 and dense vectors at layer 6 from a small refusal capture, then
times greedy generation with no steering, the sparse vector and the dense one,
interleaving the three in each repeat; reports median tokens/s and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, preamble, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layer", type=int, default=6)
    args = parser.parse_args()

    import actstore
    from actstore.evaluation.scoring import generate

    setup = preamble("steer", "refusal", 64)
    loaded, work, pairs = setup.loaded, setup.work, setup.pairs
    actstore.capture_to_store(loaded, setup.data, work / "s.zarr", layers=str(args.layer), offset=1, progress=False)
    sparse = actstore.build_vector(work / "s.zarr", args.layer, "enr", 64)
    dense = actstore.build_vector(work / "s.zarr", args.layer, "enr", None)
    prompts = [p["positive"].rsplit("\n", 1)[0] for p in pairs[: args.batch]]
    kwargs = dict(max_new_tokens=args.new_tokens)

    def timed(vector):
        t0 = time.perf_counter()
        if vector is None:
            generate(loaded.model, loaded.tokenizer, prompts, **kwargs)
        else:
            with actstore.steer(loaded, vector, 4.0):
                generate(loaded.model, loaded.tokenizer, prompts, **kwargs)
        return time.perf_counter() - t0

    for vector in (None, sparse, dense):
        timed(vector)  # warm-up
    times = {"none": [], "sparse k=64": [], "dense": []}
    for _ in range(args.repeats):
        for name, vector in (("none", None), ("sparse k=64", sparse), ("dense", dense)):
            times[name].append(timed(vector))
    tokens = args.new_tokens * args.batch
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    for name, median in medians.items():
        ratio = median / medians["none"]
        rows.append(f"| {name} | {median:.3f} | {tokens / median:.1f} | {ratio:.3f} |")
        print(f"{name:12s} median {median:.3f} s  {tokens / median:.1f} tokens/s  time ratio {ratio:.3f}  "
              f"{times[name]}")
    write_section(
        "Steering overhead in generation (bench_steering.py)",
        f"`python benchmarks/bench_steering.py --repeats {args.repeats} --new-tokens {args.new_tokens} "
        f"--batch {args.batch} --layer {args.layer}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"google/gemma-3-270m (float32, CPU), greedy generation of {args.new_tokens} tokens for {args.batch} "
        f"refusal prompts, vectors at layer {args.layer} (alpha 4), the three settings interleaved in each of "
        f"{args.repeats} repeats; median.\n\n"
        "| steering | median s | new tokens/s | time / none |\n|---|---|---|---|\n" + "\n".join(rows),
    )


if __name__ == "__main__":
    main()

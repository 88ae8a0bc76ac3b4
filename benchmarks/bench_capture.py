"""Capture throughput on google/gemma-3-270m: early exit vs the whole model.

    python benchmarks/bench_capture.py [--texts 256] [--layer 6] [--repeats 3]

Captures the first N texts of caa-pairs/refusal/train.json at one layer into a
fresh store, with early exit (stop after the block) and without (every block
and the LM head run), and reports tokens/s (median of the repeats).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, git_rev, machine, median_time, write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import actstore
    from actstore.demo import prepare_demo_model
    from actstore.models import load_model

    loaded = load_model(str(prepare_demo_model()))
    work = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    pairs = json.loads((SHARED_DATA / "caa-pairs" / "refusal" / "train.json").read_text())[: args.texts // 2]
    data = work / "pairs.json"
    data.write_text(json.dumps(pairs))
    rows = []
    results = {}
    for label, stop_early in (("early exit", True), ("whole model", False)):
        tokens = {}

        def once():
            store = work / "s.zarr"
            shutil.rmtree(store, ignore_errors=True)
            report = actstore.capture_to_store(loaded, data, store, str(args.layer), batch_size=args.batch_size,
                                               stop_early=stop_early, progress=False)
            tokens["n"] = report.n_tokens

        once()  # warm-up
        median, times = median_time(once, args.repeats)
        results[label] = tokens["n"] / median
        rows.append(f"| {label} | {tokens['n']} | {median:.2f} | {tokens['n'] / median:.0f} |")
        print(f"{label}: median {median:.2f} s over {args.repeats} runs ({', '.join(f'{t:.2f}' for t in times)}); "
              f"{tokens['n'] / median:.0f} tokens/s")
    ratio = results["early exit"] / results["whole model"]
    print(f"early exit speed-up: {ratio:.2f}x")
    shutil.rmtree(work, ignore_errors=True)
    write_section(
        "Capture throughput (bench_capture.py)",
        f"`python benchmarks/bench_capture.py --texts {args.texts} --layer {args.layer} "
        f"--batch-size {args.batch_size} --repeats {args.repeats}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"google/gemma-3-270m (float32, CPU), first {args.texts} texts of caa-pairs/refusal/train.json, "
        f"layer {args.layer} of 18, position last, into a fresh store; median of {args.repeats} runs.\n\n"
        "| forward pass | tokens | median s | tokens/s |\n|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nEarly exit speed-up: **{ratio:.2f}x**.",
    )


if __name__ == "__main__":
    main()

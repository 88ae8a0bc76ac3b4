"""Capture throughput on google/gemma-3-270m: early exit vs the whole model vs a bare forward.

    python benchmarks/bench_capture.py [--texts 256] [--layer 6] [--repeats 3]
    python benchmarks/bench_capture.py --all-tokens [--texts 256] [--repeats 3]

Captures the first N texts of caa-pairs/refusal/train.json at one layer into a
fresh store, with early exit (stop after the block) and without (every block
and the LM head run), and reports tokens/s (median of the repeats). The third
row is the floor: a bare forward pass of the model up to that block (a hook that
only stops it) on the same padded batches, tokenized beforehand; capture / bare
is what tokenizing, reducing positions, copying and writing the store cost.

With ``--all-tokens``: capture at dataset scale, every layer (``--layers all``)
and every token (``--position all``), with and without ``--stats-only``, and
``--position last`` at every layer, each against a bare forward through the
deepest block on the same batches (windows of 64 texts, as capture makes them
for ``all``), alternating within each repeat; ratios on process CPU time
(``--with-last`` adds ``--position last`` at every layer).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, median_time, preamble, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--all-tokens", action="store_true", help="every layer and every token (see above)")
    parser.add_argument("--with-last", action="store_true", help="with --all-tokens: also --position last")
    args = parser.parse_args()
    if args.all_tokens:
        all_tokens(args)
        return

    import actstore

    setup = preamble("capture", "refusal", args.texts // 2)
    loaded, work, data, pairs = setup.loaded, setup.work, setup.data, setup.pairs
    texts = [line for p in pairs for line in (p["positive"], p["negative"])]
    batches = padded_batches(loaded, texts, args.batch_size)
    n_tokens = sum(int(mask.sum()) for _, mask in batches)

    def capture(stop_early: bool):
        def once():
            store = work / "s.zarr"
            shutil.rmtree(store, ignore_errors=True)
            # offset=0: position last, as in earlier figures (an A/B set now defaults to the letter;
            # the same forward passes either way). swap_options=False: the texts as written, the
            # batches of the bare forward (twins would double the texts, not change the cost per token).
            report = actstore.capture_to_store(loaded, data, store, layers=str(args.layer), batch_size=args.batch_size,
                                               stop_early=stop_early, offset=0, swap_options=False, progress=False)
            assert report.n_tokens == n_tokens  # the same batches as the bare forward
        return once

    def bare():
        bare_forward(loaded, batches, args.layer)

    # Early exit and the bare forward alternate within each repeat, so that drifts of a shared
    # machine fall on both; the whole model runs after them.
    timed = {"early exit": capture(True), f"bare forward to block {args.layer} (same batches, nothing kept)": bare}
    times = {label: [] for label in timed}
    for fn in timed.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for label, fn in timed.items():
            times[label].append(median_time(fn, 1)[0])
    whole = capture(False)
    whole()
    times["whole model"] = median_time(whole, args.repeats)[1]
    rows, results = [], {}
    for label, values in times.items():
        median = statistics.median(values)
        results[label.split(" (")[0]] = n_tokens / median
        rows.append(f"| {label} | {n_tokens} | {median:.2f} | {n_tokens / median:.0f} |")
        print(f"{label}: median {median:.2f} s ({', '.join(f'{t:.2f}' for t in values)}); "
              f"{n_tokens / median:.0f} tokens/s")
    results["bare"] = results.pop(f"bare forward to block {args.layer}")
    ratio = results["early exit"] / results["whole model"]
    overhead = results["bare"] / results["early exit"]
    print(f"early exit speed-up: {ratio:.2f}x; capture / bare forward: {overhead:.3f}x")
    shutil.rmtree(work, ignore_errors=True)
    write_section(
        "Capture throughput (bench_capture.py)",
        f"`python benchmarks/bench_capture.py --texts {args.texts} --layer {args.layer} "
        f"--batch-size {args.batch_size} --repeats {args.repeats}` at {git_rev()}\n\n"
        f"Machine: {machine()}\n\n"
        f"google/gemma-3-270m (float32, CPU), first {args.texts} texts of caa-pairs/refusal/train.json, "
        f"layer {args.layer} of 18, position last, into a fresh store; median of {args.repeats} runs (early exit "
        f"and bare forward alternating in each repeat).\n\n"
        "| forward pass | tokens | median s | tokens/s |\n|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nEarly exit speed-up: **{ratio:.2f}x**. Capture (early exit) time / bare forward time: "
        f"**{overhead:.3f}x**.",
    )


def all_tokens(args) -> None:
    import actstore

    setup = preamble("capture", "refusal", args.texts // 2)
    loaded, work, data, pairs = setup.loaded, setup.work, setup.data, setup.pairs
    texts = [line for p in pairs for line in (p["positive"], p["negative"])]
    deepest = loaded.num_layers - 1
    batches = padded_batches(loaded, texts, args.batch_size, window=64)
    n_tokens = sum(int(mask.sum()) for _, mask in batches)
    written = {}

    def capture(**values):
        def once():
            store = work / "s.zarr"
            shutil.rmtree(store, ignore_errors=True)
            report = actstore.capture_to_store(loaded, data, store, layers="all", batch_size=args.batch_size,
                                               swap_options=False, progress=False, **values)
            if values.get("position") == "all":
                assert report.n_tokens == n_tokens  # the same batches as the bare forward
            if not values.get("stats_only"):
                written[values["position"]] = report.n_samples_written * loaded.num_layers * loaded.hidden_size * 4
        return once

    timed = {
        f"bare forward through block {deepest} (same batches, nothing kept)":
            lambda: bare_forward(loaded, batches, deepest),
        "`--position all --stats-only`": capture(position="all", stats_only=True),
        "`--position all`": capture(position="all"),
    }
    if args.with_last:
        timed["`--position last`"] = capture(position="last", offset=0, window=64)
    times = {label: [] for label in timed}
    cpu = {label: [] for label in timed}
    faults = {label: [] for label in timed}  # minor page faults: fresh pages from the kernel, whatever the load
    capture(position="all", stats_only=True)()  # warm-up (numba's cached kernel, allocator)
    for _ in range(args.repeats):
        for label, fn in timed.items():
            c0 = time.process_time()  # every thread of this process: the work done, whatever the load
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[label].append(median_time(fn, 1)[0])
            cpu[label].append(time.process_time() - c0)
            faults[label].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    bare = statistics.median(next(iter(times.values())))
    bare_cpu = statistics.median(next(iter(cpu.values())))
    rows, ratios, cpu_ratios = [], {}, {}
    for label, values in times.items():
        median, median_cpu = statistics.median(values), statistics.median(cpu[label])
        ratios[label], cpu_ratios[label] = median / bare, median_cpu / bare_cpu
        rows.append(f"| {label} | {median:.2f} | {', '.join(f'{t:.2f}' for t in values)} | {median / bare:.3f}x | "
                    f"{median_cpu:.1f} | **{median_cpu / bare_cpu:.3f}x** | {statistics.median(faults[label]):.0f} |")
        print(rows[-1])
    shutil.rmtree(work, ignore_errors=True)
    all_label, stats_label = "`--position all`", "`--position all --stats-only`"
    all_ratio = max(ratios[all_label], cpu_ratios[all_label])
    stats_ratio = max(ratios[stats_label], cpu_ratios[stats_label])
    write_section(
        "Capture at dataset scale (bench_capture.py --all-tokens)",
        f"`python benchmarks/bench_capture.py --all-tokens --texts {args.texts} --batch-size {args.batch_size} "
        f"--repeats {args.repeats}{' --with-last' if args.with_last else ''}` at {git_rev()}\n\n"
        f"Machine: {machine()}; 1-minute load average {os.getloadavg()[0]:.2f} when the section was written. "
        "No GPU was lent to this run (no GPU column). The runs alternate within each repeat so that any other "
        "load falls on all of them (the spread of the runs is in the table).\n\n"
        f"google/gemma-3-270m (float32, CPU), first {args.texts} texts of caa-pairs/refusal/train.json "
        f"({n_tokens} tokens), `--layers all` (18 blocks), into a fresh store, windows of 64 texts; "
        f"`--position all` writes {written.get('all', 0) / 1e9:.3f} GB of float32 per run. "
        f"Median of {args.repeats} runs, alternating in each repeat. Ratios on wall time and on CPU time (all "
        "threads of the process: the work each run costs, steadier than wall time on a shared machine, as "
        "bench_peers does); a target is met only if both are within it. A ratio below 1 is noise, not a "
        "speed-up.\n\n"
        "| run | median wall s | runs (s) | wall / bare | median CPU s | CPU / bare | minor page faults |\n"
        "|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) +
        f"\n\nTargets (the larger of the wall and CPU ratios): all-token capture <= 1.10x the bare forward: "
        f"**{all_ratio:.3f}x** "
        f"({'met' if all_ratio <= 1.10 else 'missed'}); stats-only <= 1.05x: **{stats_ratio:.3f}x** "
        f"({'met' if stats_ratio <= 1.05 else 'missed'}).",
    )


def padded_batches(loaded, texts, batch_size, window=512):
    """The batches capture_to_store runs: windows of texts, sorted by length, padded."""
    from actstore.capture import tokenize

    batches = []
    for start in range(0, len(texts), window):
        chunk = texts[start:start + window]
        ids = tokenize(loaded.tokenizer, chunk, [f"text {i}" for i in range(len(chunk))], None)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for b in range(0, len(order), batch_size):
            padded = loaded.tokenizer.pad({"input_ids": [ids[i] for i in order[b:b + batch_size]]},
                                          return_tensors="pt")
            batches.append((padded["input_ids"], padded["attention_mask"]))
    return batches


class _Stop(Exception):
    pass


def bare_forward(loaded, batches, layer) -> None:
    """The model up to ``layer`` and no further, keeping nothing."""
    import torch

    def stop(module, args, output):
        raise _Stop

    handle = loaded.blocks[layer].register_forward_hook(stop)
    try:
        with torch.no_grad():
            for input_ids, mask in batches:
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                try:
                    loaded.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                 use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()


if __name__ == "__main__":
    main()

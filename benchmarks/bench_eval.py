"""Seconds per sweep configuration, before and after replaying each layer's cached block output.

    python benchmarks/bench_eval.py [--layer 6] [--items 0] [--ppl-tokens 8192] [--repeats 3]

google/gemma-3-270m, the held-out refusal items (all 83 unless --items) and
--ppl-tokens of WikiText-2 (the `actstore eval` default), one ENR k=64 vector at
--layer. One configuration is what `actstore eval` measures per (layer, method,
k, alpha): the on-target scores of every item and the perplexity windows, steered.

* before: the whole model per configuration and both answer letters as their own
  sequences (what the sweep did until this change);
* after: blocks 0..L replayed from their cached output (computed once per layer,
  timed apart), one sequence per A/B item, the LM head cut to the answer letters'
  rows for the A/B items (as the sweep's A/B protocol does).

Both run in each repeat, alternating; medians. Their per-item scores and window
NLLs must agree (printed). Writes the section "Evaluation cost" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine, write_section  # noqa: E402


OP_GROUPS = (  # (group, op names): torch.profiler's aten ops of a gemma forward pass
    ("matmul (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (sdpa)", ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                          "aten::_softmax", "aten::softmax")),
    ("log-softmax / NLL over the vocabulary", ("aten::_log_softmax", "aten::log_softmax", "aten::nll_loss_forward",
                                               "aten::cross_entropy_loss", "aten::logsumexp", "aten::gather")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous",
                          "aten::cat", "aten::index", "aten::index_select")),
)


def profile_account(fn, matmul_limit: float) -> str:
    """A markdown table: self CPU seconds and share of one run of ``fn`` per op group, and the
    matmuls' own GFLOP/s as a fraction of ``matmul_limit``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    seconds, flops = {}, 0.0
    for event in events:
        group = next((g for g, names in OP_GROUPS if event.key in names), "everything else (elementwise, norms, "
                     "embedding, hooks, Python)")
        seconds[group] = seconds.get(group, 0.0) + event.self_cpu_time_total / 1e6
        if event.key in OP_GROUPS[0][1]:
            flops += event.flops
    mm = seconds.get(OP_GROUPS[0][0], 0.0)
    lines = ["| op group | self CPU s | share |", "|---|---|---|"]
    lines += [f"| {g} | {s:.2f} | {s / total:.0%} |" for g, s in sorted(seconds.items(), key=lambda x: -x[1])]
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    lines += ["", "Largest ops: " + ", ".join(f"`{e.key}` {e.self_cpu_time_total / 1e6:.2f} s" for e in top) + "."]
    rate = flops / mm / 1e9 if mm else float("nan")
    lines += ["", f"Profiled run: {wall:.1f} s wall, {total:.1f} s of op time (torch threads: {torch.get_num_threads()}; "
              f"the profiler adds its own cost). The matmuls do {flops / 1e12:.2f} TFLOP in {mm:.1f} s: "
              f"**{rate:.0f} GFLOP/s, {rate / matmul_limit:.2f}x** of the limit; they are **{mm / total:.0%}** of "
              f"the op time, so the configuration as a whole runs at **{flops / total / 1e9 / matmul_limit:.2f}x** "
              "of the matmul rate for the arithmetic it does."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--items", type=int, default=0, help="0: every held-out item")
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--train-pairs", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    import actstore
    from actstore.models.embedded import prepare_demo_model
    from actstore.evaluation.grid import residual_norm
    from actstore.evaluation.replay import PrefixReplay, plain_forward
    from actstore.evaluation.scoring import (ABScoring, PerplexityWindows, probability, read_ab_items,
                                             read_text_tokens)

    loaded = actstore.load_model(str(prepare_demo_model()))
    source = SHARED_DATA / "caa-pairs" / "refusal"
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    train = work / "train.json"
    train.write_text(json.dumps(json.loads((source / "train.json").read_text())[: args.train_pairs]))
    actstore.capture_to_store(loaded, train, work / "s.zarr", layers=[args.layer], offset=1, progress=False)
    stats = actstore.open_stats(work / "s.zarr")
    vector = actstore.vectors.build.vector_from_stats(stats, args.layer, 64)
    scale = 0.02 * residual_norm(stats, args.layer) / float(np.linalg.norm(vector.vector))
    items = read_ab_items(source / "test.json")
    items = items[: args.items] if args.items else items
    ppl_ids = read_text_tokens(loaded.tokenizer, SHARED_DATA / "wikitext-2" / "test.txt", args.ppl_tokens)
    windows = PerplexityWindows(loaded.tokenizer, ppl_ids)
    two = ABScoring(loaded.tokenizer, items, 8, one_sequence=False)
    one = ABScoring(loaded.tokenizer, items, 8)
    plain = plain_forward(loaded.model)

    t0 = time.perf_counter()
    replay = PrefixReplay(loaded, args.layer, {**{("on", i): b for i, b in enumerate(one.batches)},
                                               **{("ppl", i): b for i, b in enumerate(windows.batches)}})
    cache_seconds = time.perf_counter() - t0

    def before():
        with actstore.steer(loaded, vector, scale):
            return two.scores(plain), windows.nll(plain)[0]

    def after():
        with replay.active(), actstore.steer(loaded, vector, scale):
            return (probability(one.logodds(lambda i, b: replay(("on", i), b), loaded.model)),
                    windows.nll(lambda i, b: replay(("ppl", i), b))[0])

    times = {"before": [], "after": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("before", before), ("after", after)):
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(name, f"{times[name][-1]:.1f} s", flush=True)
    # Issue 21 §4: the configuration's arithmetic against the machine's matmul rate. The LM head
    # over the perplexity tokens (2 x tokens x hidden x vocab flops) is timed alone, on the same
    # batch shapes, with and without the log-softmax the NLL needs; torch.mm at that shape is the limit.
    from limits import matmul_gflops

    head = loaded.model.get_output_embeddings()
    hidden_size, vocab = head.weight.shape[1], head.weight.shape[0]
    shapes = [tuple(b.input_ids.shape) for b in windows.batches]

    def head_only(softmax: bool):
        with torch.inference_mode():
            for batch, seq in shapes:
                logits = head(torch.randn(batch, seq, hidden_size))
                if softmax:
                    torch.log_softmax(logits.float(), dim=-1)

    head_times = {}
    for softmax in (False, True):
        head_only(softmax)
        t0 = time.perf_counter()
        head_only(softmax)
        head_times[softmax] = time.perf_counter() - t0
    head_tokens = sum(b * q for b, q in shapes)
    head_flops = 2.0 * head_tokens * hidden_size * vocab
    limit = matmul_gflops(shapes[0][0] * shapes[0][1], hidden_size, vocab)
    account = profile_account(after, limit)
    score_diff = float(np.abs(outputs["before"][0] - outputs["after"][0]).max())
    nll_diff = float(np.abs(outputs["before"][1] - outputs["after"][1]).max() / np.abs(outputs["before"][1]).max())
    med = {name: statistics.median(t) for name, t in times.items()}
    n_tokens = sum(int(b.attention_mask.sum()) for b in one.batches)
    body = f"""`python benchmarks/bench_eval.py --layer {args.layer} --items {args.items} \
--ppl-tokens {args.ppl_tokens} --repeats {args.repeats}` at {git_rev()}

Machine: {machine()}

google/gemma-3-270m (float32, CPU), {len(items)} held-out refusal items ({n_tokens} prompt tokens), \
{len(ppl_ids)} WikiText-2 tokens in {len(windows.batches)} batches of 256-token windows, one ENR k=64 vector at \
layer {args.layer} of 18 (added norm 0.02 of the layer's residual norm). One configuration = every item's A/B \
score and every window's NLL, steered. Median of {args.repeats}, the two alternating in each repeat.

| per configuration | median s | runs (s) | configurations per hour |
|---|---|---|---|
| before: whole model, two sequences per A/B item | {med['before']:.1f} | \
{', '.join(f'{t:.1f}' for t in times['before'])} | {3600 / med['before']:.0f} |
| after: blocks 0..{args.layer} replayed, one sequence per item | {med['after']:.1f} | \
{', '.join(f'{t:.1f}' for t in times['after'])} | {3600 / med['after']:.0f} |

Speed-up: **{med['before'] / med['after']:.2f}x** per configuration. Computing the cached block outputs of \
layer {args.layer} (once per layer, {replay.nbytes / 2**20:.0f} MiB): {cache_seconds:.1f} s. Same numbers: largest \
difference of an A/B score {score_diff:.1e}, of a window NLL {nll_diff:.1e} (relative). Torch threads: \
{torch.get_num_threads()}. The LM head over gemma's 262,144-word vocabulary at every perplexity token is the \
floor that replay cannot remove.

Against the machine's matmul rate (issue 21 §4): the LM head over the {head_tokens} perplexity tokens alone ({head_flops / 1e12:.2f} TFLOP) takes {head_times[False]:.1f} s ({head_flops / head_times[False] / 1e9:.0f} GFLOP/s, **{head_flops / head_times[False] / 1e9 / limit:.2f}x** of `torch.mm` at its shape, {limit:.0f} GFLOP/s, measured in this run), {head_times[True]:.1f} s with the log-softmax the NLL needs: **{head_times[True] / med['after']:.0%}** of an 'after' configuration. The rest is the blocks after layer {args.layer}, the A/B prompts and the hooks.

Where an 'after' configuration's time goes (one more run under `torch.profiler`, self CPU time per op group; matmul GFLOP/s from the profiler's flop counts of `aten::mm`/`addmm`/`bmm`, against the limit above):

{account}
"""
    print(body)
    write_section("Evaluation cost (bench_eval.py)", body)


if __name__ == "__main__":
    main()

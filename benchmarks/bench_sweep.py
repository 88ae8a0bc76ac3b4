"""Sweeps at batch speed (issue 32 §4): configurations per hour and generation tokens per second.

    python benchmarks/bench_sweep.py [--repeats 2] [--pack N] [--instruct] [--label before|after]
    python benchmarks/bench_sweep.py --quick        # a smoke run: tiny grids, writes nothing

google/gemma-3-270m (float32, CPU), the store captured once from the first --train-pairs pairs of
caa-pairs/refusal/train.json at --layer (offset 1: the answer letter, as the plan's captures).

(a) The plan's refusal A/B grid, small: the first --items test questions (both answer orders),
    layer 8, ENR k in {16, 64, 256, dense} x fractions {0.02, 0.04, 0.08}, perplexity from 4096
    tokens of 32 documents (the plan's settings), end to end through ``run_sweep``.
(b) A judged-generation-like grid: 16 harmless prompts, 48 new tokens, a 1024-token perplexity pass
    in 32-token windows, k in {16, 64, 256, dense} x 2 fractions = 8 configurations, against the same
    sweep with 1 configuration (k=64), end to end, alternating in each repeat (target: <= 3x). The
    default scorer (vader): no judge, so the sweep's cost is the model's.
(c) Generation tokens/s (greedy, every row made to write --new-tokens tokens) at batch 1, 8 and 32:
    unsteered, steered with one vector (``steer``) and, where the code has it, a mixed batch
    (``steer_rows``: k = 16, 64, 256, dense and unsteered rows in turn). With --instruct also
    SmolLM2-135M-Instruct (random sparse vectors of the same sizes at its middle layer).
(d) One A/B configuration (replayed from layer 8's cached block output) under ``torch.profiler``:
    where its time goes and its matmul rate against ``torch.mm`` (bench_eval.py's account).

``--pack N`` is passed to the sweeps where ``SweepRequest`` has a ``pack`` field (ignored, and
said so, on code without it). Writes the section "Sweep throughput (bench_sweep.py)" of
RESULTS.md (with ``--label``: that label appended to the section's name), nothing with --quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine, write_section  # noqa: E402

KS = (16, 64, 256, None)
AB_FRACTIONS = (0.02, 0.04, 0.08)
GEN_FRACTIONS = (0.02, 0.04)
BATCHES = (1, 8, 32)


@dataclasses.dataclass
class Setup:
    args: argparse.Namespace
    loaded: object
    work: Path
    store: Path
    prompts: list[str]  # harmless instructions, for (b) and (c)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--train-pairs", type=int, default=128)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pack", type=int, default=None, help="SweepRequest(pack=N), where the code has it")
    parser.add_argument("--instruct", action="store_true", help="(c) also on SmolLM2-135M-Instruct")
    parser.add_argument("--label", default="", help="appended to the RESULTS.md section's name")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny grids, nothing written")
    args = parser.parse_args()
    if args.quick:
        args.train_pairs, args.items, args.new_tokens, args.repeats = 8, 4, 4, 1
    return args


def _has_pack() -> bool:
    from actstore.evaluation import SweepRequest

    return "pack" in {f.name for f in dataclasses.fields(SweepRequest)}


def _default_packing() -> str:
    return "the sweep default (up to 8 configurations a batch)" if _has_pack() else "none (no pack field)"


def _pack(args) -> dict:
    has = _has_pack()
    if args.pack is not None and not has:
        print("--pack ignored: this code's SweepRequest has no 'pack' field", flush=True)
    return {"pack": args.pack} if has and args.pack is not None else {}


def setup(args) -> Setup:
    import actstore
    from actstore.models.embedded import prepare_demo_model

    loaded = actstore.load_model(str(prepare_demo_model()))
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    train = work / "train.json"
    pairs = json.loads((SHARED_DATA / "caa-pairs" / "refusal" / "train.json").read_text())[: args.train_pairs]
    train.write_text(json.dumps(pairs))
    t0 = time.perf_counter()
    actstore.capture_to_store(loaded, train, work / "s.zarr", layers=[args.layer], offset=1, progress=False)
    print(f"store: {len(pairs)} pairs captured in {time.perf_counter() - t0:.1f} s", flush=True)
    harmless = json.loads((SHARED_DATA / "refusal-direction" / "harmless_val.json").read_text())
    prompts = [" ".join(r["instruction"].split()) for r in harmless[:max(BATCHES)]]
    return Setup(args, loaded, work, work / "s.zarr", prompts)


def _sweep(s: Setup, name: str, **fields) -> tuple[float, int, float]:
    """One ``run_sweep`` into a fresh folder: (wall s, configurations, summed per-configuration s)."""
    import pandas as pd

    from actstore.evaluation import SweepRequest, run_sweep

    out = s.work / f"{name}-{time.perf_counter_ns()}"
    request = SweepRequest(store=s.store, out=out, layers=str(s.args.layer), separation=False, progress=False,
                           **_pack(s.args), **fields)
    t0 = time.perf_counter()
    run_sweep(s.loaded, request)
    wall = time.perf_counter() - t0
    seconds = pd.read_csv(out / "results.csv")["seconds"].to_numpy(dtype=float)
    return wall, len(seconds), float(seconds.sum())


def ab_grid(s: Setup) -> dict:
    quick = s.args.quick
    fields = dict(data_test=SHARED_DATA / "caa-pairs" / "refusal" / "test.json", max_items=s.args.items,
                  ks=(64, None) if quick else KS, fractions=(0.04,) if quick else AB_FRACTIONS,
                  ppl_tokens=256 if quick else 4096, ppl_documents=2 if quick else 32)
    runs = [_sweep(s, "ab", **fields) for _ in range(s.args.repeats)]
    wall = statistics.median(r[0] for r in runs)
    n = runs[0][1]
    configs = statistics.median(r[2] for r in runs)
    print(f"(a) {n} configurations: {[round(r[0], 1) for r in runs]} s end to end", flush=True)
    return {"n": n, "wall": wall, "walls": [r[0] for r in runs], "configs": configs, "fields": fields,
            "per_hour": 3600 * n / wall, "per_hour_configs": 3600 * n / configs}


def generation_grid(s: Setup) -> dict:
    quick = s.args.quick
    prompts, n_prompts = s.work / "prompts.txt", 4 if quick else 16
    prompts.write_text("\n".join(s.prompts[:n_prompts]) + "\n")
    common = dict(prompts=prompts, max_new_tokens=s.args.new_tokens, ppl_tokens=128 if quick else 1024,
                  ppl_window=32, ppl_documents=4 if quick else 32)
    grids = {"1": dict(ks=(64,), fractions=(0.04,)),
             "8": dict(ks=(64, None) if quick else KS, fractions=GEN_FRACTIONS)}
    walls: dict[str, list[float]] = {"1": [], "8": []}
    counts = {}
    for repeat in range(s.args.repeats):
        for name, grid in sorted(grids.items(), reverse=bool(repeat % 2)):  # the order alternates: no warm-up bias
            wall, counts[name], _ = _sweep(s, f"gen{name}", **common, **grid)
            walls[name].append(wall)
            print(f"(b) {counts[name]} configurations: {wall:.1f} s", flush=True)
    med = {name: statistics.median(w) for name, w in walls.items()}
    return {"walls": walls, "median": med, "counts": counts, "ratio": med["8"] / med["1"], "prompts": n_prompts,
            "ppl_tokens": common["ppl_tokens"], "grid": grids["8"]}


def _vectors(loaded, store: Path | None, layer: int) -> list:
    """ENR vectors k = 16, 64, 256, dense from the store; random sparse ones of those sizes (at the
    model's middle layer, norm 4) for a model without a store."""
    import numpy as np

    import actstore
    from actstore.vectors.info import VectorInfo
    from actstore.vectors.vector import SteeringVector

    if store is not None:
        stats = actstore.open_stats(store)
        return [actstore.vectors.build.vector_from_stats(stats, layer, k) for k in KS]
    hidden, rng, out = loaded.hidden_size, np.random.default_rng(0), []
    for k in KS:
        index = np.sort(rng.choice(hidden, size=k or hidden, replace=False))
        values = rng.normal(size=len(index)).astype(np.float32)
        values *= 4.0 / np.linalg.norm(values)
        out.append(SteeringVector(values, index, np.abs(values), VectorInfo(layer=loaded.num_layers // 2)))
    return out


def _generate_seconds(loaded, prompts: list[str], new_tokens: int, steering) -> float:
    import torch

    from actstore.evaluation.replay import padding_side

    tokenizer = loaded.tokenizer
    with padding_side(tokenizer, "left"):
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with steering(), torch.no_grad():
        t0 = time.perf_counter()
        loaded.model.generate(**batch, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        return time.perf_counter() - t0


def tokens_per_second(s: Setup, loaded, store: Path | None) -> dict:
    """{batch: {mode: tokens/s}}, the modes alternating within each repeat (median)."""
    from contextlib import nullcontext

    import actstore.steering as steering

    layer = s.args.layer if store is not None else loaded.num_layers // 2
    vectors = _vectors(loaded, store, layer)
    scale = 1.0 if store is None else 0.04 * _residual_norm(store, layer) / _norm(vectors[1])
    modes = {"unsteered": lambda rows: nullcontext,
             "steered": lambda rows: (lambda: steering.steer(loaded, vectors[1], scale))}
    if hasattr(steering, "steer_rows"):
        cycle = [*[(v, scale) for v in vectors], None]
        modes["mixed"] = lambda rows: (lambda: steering.steer_rows(loaded, [cycle[i % 5] for i in range(rows)]))
    out = {}
    for rows in BATCHES[:2] if s.args.quick else BATCHES:
        prompts = (s.prompts * rows)[:rows]
        _generate_seconds(loaded, prompts, 2, nullcontext)  # warm-up
        times = {mode: [] for mode in modes}
        for _ in range(max(2, s.args.repeats)):
            for mode, make in modes.items():
                times[mode].append(_generate_seconds(loaded, prompts, s.args.new_tokens, make(rows)))
        out[rows] = {mode: rows * s.args.new_tokens / statistics.median(t) for mode, t in times.items()}
        print(f"(c) batch {rows}: " + ", ".join(f"{m} {v:.1f} tok/s" for m, v in out[rows].items()), flush=True)
    return out


def _residual_norm(store: Path, layer: int) -> float:
    import actstore
    from actstore.evaluation.grid import residual_norm

    return residual_norm(actstore.open_stats(store), layer)


def _norm(vector) -> float:
    import numpy as np

    return float(np.linalg.norm(vector.vector))


def profiled(s: Setup) -> str:
    """(d): one replayed A/B configuration under the profiler (bench_eval.py's account)."""
    from bench_eval import profile_account
    from limits import matmul_gflops

    import actstore
    from actstore.evaluation.replay import PrefixReplay
    from actstore.evaluation.scoring import ABScoring, PerplexityWindows, read_ab_items, read_text_tokens

    loaded, layer = s.loaded, s.args.layer
    items = read_ab_items(SHARED_DATA / "caa-pairs" / "refusal" / "test.json")[: s.args.items]
    ids = read_text_tokens(loaded.tokenizer, SHARED_DATA / "wikitext-2" / "test.txt", 256 if s.args.quick else 4096)
    windows, scoring = PerplexityWindows(loaded.tokenizer, ids, 128), ABScoring(loaded.tokenizer, items, 8)
    replay = PrefixReplay(loaded, layer, {**{("on", i): b for i, b in enumerate(scoring.batches)},
                                          **{("ppl", i): b for i, b in enumerate(windows.batches)}})
    vector = _vectors(loaded, s.store, layer)[1]
    scale = 0.04 * _residual_norm(s.store, layer) / _norm(vector)
    sliced = "model" in inspect.signature(PerplexityWindows.nll).parameters  # the vocabulary pass in slices

    def configuration():
        with replay.active(), actstore.steer(loaded, vector, scale):
            scoring.logodds(lambda i, b: replay(("on", i), b), loaded.model)
            ppl = [lambda i, b: replay(("ppl", i), b)] + ([loaded.model] if sliced else [])
            return windows.nll(*ppl)

    configuration()  # warm-up
    head = loaded.model.get_output_embeddings().weight
    shape = windows.batches[0].input_ids.shape
    limit = matmul_gflops(shape[0] * shape[1], head.shape[1], head.shape[0])
    note = ("in slices, no full logits (its logsumexp's self time shows as aten::max, sub, exp_, sum: 'everything "
            "else' below)" if sliced else "over the full logits")
    return f"Perplexity's vocabulary pass: {note}.\n\n" + profile_account(configuration, limit)


def _tokens_table(results: dict[str, dict]) -> str:
    lines = ["| model | batch | unsteered tok/s | steered (one vector) tok/s | mixed batch (steer_rows) tok/s |",
             "|---|---|---|---|---|"]
    for model, by_batch in results.items():
        for rows, rates in by_batch.items():
            base = rates["unsteered"]
            mixed = (f"{rates['mixed']:.1f} ({rates['mixed'] / base:.2f}x)" if "mixed" in rates
                     else "n/a (no steer_rows)")
            lines.append(f"| {model} | {rows} | {base:.1f} | {rates['steered']:.1f} ({rates['steered'] / base:.2f}x) "
                         f"| {mixed} |")
    return "\n".join(lines)


def _ks(ks) -> str:
    return "{" + ", ".join("dense" if k is None else str(k) for k in ks) + "}"


def report(s: Setup, ab: dict, gen: dict, tokens: dict[str, dict], account: str, command: str) -> str:

    a, f = s.args, ab["fields"]
    pack = _pack(a)
    walls = ", ".join(f"{w:.1f}" for w in ab["walls"])
    gen_rows = "\n".join(f"| {gen['counts'][n]} | {gen['median'][n]:.1f} | {', '.join(f'{w:.1f}' for w in ws)} |"
                         for n, ws in gen["walls"].items())
    return f"""`{command}` at {git_rev()}

Machine: {machine()}. Packing: {pack or _default_packing()}.

google/gemma-3-270m (float32, CPU); store: the first {a.train_pairs} pairs of caa-pairs/refusal/train.json at layer \
{a.layer} (offset 1). Every sweep: `run_sweep` on the loaded model into a fresh folder, no separation, \
end to end (baseline, the layer's cached block outputs and every configuration). Medians of {a.repeats} runs.

**(a) The refusal A/B grid** ({a.items} test questions in both orders, layer {a.layer}, ENR k in \
{_ks(f['ks'])} x fractions {set(f['fractions'])}, perplexity {f['ppl_tokens']} tokens from {f['ppl_documents']} \
documents): {ab['n']} configurations in \
{ab['wall']:.1f} s end to end (runs: {walls}): **{ab['per_hour']:.0f} configurations per hour** end to end, \
{ab['per_hour_configs']:.0f} per hour on results.csv's per-configuration seconds (the layer's cache counted in \
its first configuration; the baseline not).

**(b) A judged-generation-like grid** ({gen['prompts']} harmless prompts, {a.new_tokens} new tokens, vader \
scores, perplexity {gen['ppl_tokens']} tokens in 32-token windows; k in {_ks(gen['grid']['ks'])} x fractions \
{set(gen['grid']['fractions'])} against k=64 at 0.04 alone, alternating):

| configurations | end to end s (median) | runs (s) |
|---|---|---|
{gen_rows}

{gen['counts']['8']} configurations cost **{gen['ratio']:.2f}x** the 1-configuration sweep (target: at most 3x).

**(c) Generation** (greedy, every row writes {a.new_tokens} tokens; steered: ENR k=64 at 0.04 of the residual \
norm; mixed: rows cycle through k = 16, 64, 256, dense and unsteered; medians of {max(2, a.repeats)}, the modes \
alternating):

{_tokens_table(tokens)}

**(d) Where one A/B configuration's time goes** (replayed from layer {a.layer}'s cached block output, steered; \
{a.items} questions and {f['ppl_tokens']} perplexity tokens in 128-token windows):

{account}
"""


def main() -> None:
    args = _args()
    command = "python benchmarks/bench_sweep.py " + " ".join(sys.argv[1:])
    started = [time.perf_counter()]
    phases = {}

    def phase(name: str) -> None:
        phases[name] = time.perf_counter() - started[-1]
        started.append(time.perf_counter())

    s = setup(args)
    phase("load and capture")
    ab = ab_grid(s)
    phase("(a)")
    gen = generation_grid(s)
    phase("(b)")
    tokens = {"gemma-3-270m": tokens_per_second(s, s.loaded, s.store)}
    if args.instruct:
        import actstore
        from actstore.models.embedded import prepare_instruct_model

        instruct = actstore.load_model(str(prepare_instruct_model()))
        tokens["SmolLM2-135M-Instruct"] = tokens_per_second(s, instruct, None)
    phase("(c)")
    account = profiled(s)
    phase("(d)")
    body = report(s, ab, gen, tokens, account, command.strip())
    body += (f"\nThe whole benchmark took {time.perf_counter() - started[0]:.0f} s ("
             + ", ".join(f"{name} {t:.0f} s" for name, t in phases.items()) + ").\n")
    print(body)
    if args.quick:
        print("--quick: RESULTS.md left as it was")
        return
    write_section("Sweep throughput (bench_sweep.py)" + (f": {args.label}" if args.label else ""), body)


if __name__ == "__main__":
    main()

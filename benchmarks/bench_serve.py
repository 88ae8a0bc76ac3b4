"""Throughput of steering served by vLLM: unsteered, one vector, 8 and 64 distinct vectors per batch,
dense against k=64 sparse (issue 20's table). Run it in .venv-serve:

    .venv-serve/bin/python benchmarks/bench_serve.py [--requests 64] [--new-tokens 32] [--repeats 3]

One engine (offline ``LLM``, the plugin loaded through its entry point, gemma-3-270m float32,
``enforce_eager``) serves a batch of ``--requests`` prompts, each generating exactly
``--new-tokens`` tokens (greedy, EOS ignored), under each setting; the settings are interleaved
in every repeat and the median is reported, with its ratio to unsteered from the same run.
Vectors are random (a throughput test: what is added does not matter, where and how does),
at layer 6, alpha 1, written for the served model's fingerprint. "unsteered" runs with the plugin
loaded (its hooks fire and add nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_rev, machine, write_section

PROMPT_STEMS = ("The weather today", "My favourite book", "The best way to learn", "In the city at night",
                "A letter to my friend", "The old house on the hill", "Why people travel", "The recipe calls for")


def write_vectors(folder: Path, model_path: str, hidden: int, count: int, layer: int) -> None:
    from actstore.models.load import _fingerprint_local
    from actstore.vectors.info import VectorInfo
    from actstore.vectors.vector import SteeringVector, save_vector

    fingerprint = _fingerprint_local(Path(model_path))
    rng = np.random.default_rng(0)
    for i in range(count):
        for kind in ("dense", "sparse"):
            values = rng.normal(size=hidden).astype(np.float32)
            if kind == "sparse":
                keep = rng.choice(hidden, 64, replace=False)
                kept = np.zeros_like(values)
                kept[keep] = values[keep]
                values = kept
            info = VectorInfo(layer=layer, method="random", k=64 if kind == "sparse" else None,
                              fingerprint=fingerprint, hidden_size=hidden)
            indices = np.flatnonzero(values).astype(np.int64)
            save_vector(SteeringVector(values, indices, np.abs(values), info), folder / f"{kind}-{i}.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--note", default="", help="What else ran on the machine (goes into RESULTS.md).")
    args = parser.parse_args()

    import json

    from actstore.models.embedded import prepare_demo_model

    model_path = str(prepare_demo_model())
    hidden = json.loads((Path(model_path) / "config.json").read_text())["hidden_size"]
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    write_vectors(folder, model_path, hidden, 64, args.layer)
    os.environ["ACTSTORE_SERVE_VECTORS"] = str(folder)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=model_path, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              kv_cache_memory_bytes=2 << 30, max_num_seqs=args.requests, enable_prefix_caching=False)
    startup = time.perf_counter() - started
    prompts = [f"{PROMPT_STEMS[i % len(PROMPT_STEMS)]} (request {i}):" for i in range(args.requests)]

    def params(kind: str | None, distinct: int) -> list[SamplingParams]:
        out = []
        for i in range(args.requests):
            extra = None if kind is None else {"actstore_vector": f"{kind}-{i % distinct}", "actstore_alpha": 1.0}
            out.append(SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True,
                                      extra_args=extra))
        return out

    settings = {"unsteered": params(None, 1)}
    for distinct in (1, 8, 64):
        for kind, label in (("dense", "dense"), ("sparse", "k=64")):
            settings[f"{distinct} vector{'s' if distinct > 1 else ''}, {label}"] = params(kind, distinct)

    def timed(batch_params) -> float:
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, batch_params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == args.new_tokens for o in outputs)
        return elapsed

    timed(settings["unsteered"])  # warm-up: kernels, caches
    times: dict[str, list[float]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        for name, batch_params in settings.items():
            times[name].append(timed(batch_params))
            print(f"repeat {repeat + 1}/{args.repeats} {name:22s} {times[name][-1]:.2f} s", flush=True)
    tokens = args.requests * args.new_tokens
    base = statistics.median(times["unsteered"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rate = tokens / median
        spread = f"{tokens / max(samples):.0f}-{tokens / min(samples):.0f}"
        rows.append(f"| {name} | {median:.2f} | {rate:.0f} | {spread} | {base / median:.2f} |")
        print(f"{name:22s} median {median:.2f} s  {rate:.0f} tokens/s ({spread})  x{base / median:.2f} of unsteered")
    import vllm

    write_section(
        "Steering served by vLLM (bench_serve.py)",
        f"`python benchmarks/bench_serve.py --requests {args.requests} --new-tokens {args.new_tokens} "
        f"--repeats {args.repeats} --layer {args.layer}` at {git_rev()} (in .venv-serve)\n\n"
        f"Machine: {machine()}; vllm-cpu {vllm.__version__} (its CPU backend binds one core for compute and "
        f"reserves the other)\n\n"
        + (f"{args.note}\n\n" if args.note else "")
        + f"google/gemma-3-270m (float32, enforce_eager, prefix caching off), {args.requests} requests in one "
        f"batch, {args.new_tokens} generated tokens each (greedy, EOS ignored); random vectors at layer "
        f"{args.layer}, alpha 1; N vectors = request i uses vector i mod N. Settings interleaved in each of "
        f"{args.repeats} repeats; median, range over repeats, throughput relative to unsteered (plugin loaded, no "
        "request steered) in the same run. "
        f"Engine start {startup:.0f} s. Targets (issue 20): one vector >= 0.9x unsteered; 64 distinct k=64 "
        "vectors >= 0.8x.\n\n"
        "| setting | median s | generated tokens/s | range | x unsteered |\n|---|---|---|---|---|\n"
        + "\n".join(rows),
    )


if __name__ == "__main__":
    main()

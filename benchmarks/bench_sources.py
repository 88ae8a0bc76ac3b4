"""Memory of a capture as its input grows 10x: a plain-text corpus and a Parquet dataset.

    python benchmarks/bench_sources.py [--growth 10] [--max-length 256]

Inputs made from WikiText-2 (../shared/data/wikitext-2/test.txt): the text
itself, and a Parquet file of its non-empty lines (rows of ``text``); then the
same repeated ``--growth`` times. Each is captured in a fresh process with
``--stats-only --layers all --position all`` (the model's work is not what is
measured) by a small random Gemma-3 model built from a config around
gemma-3-270m's own tokenizer (hidden 64, 2 blocks: the input path, not the
forward pass, dominates); the corpus is cut into ``--max-length``-token windows.
The peak resident memory of each process (VmHWM) is reported: it should not
grow with the input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, git_rev, machine, write_section

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
import actstore
from _common import peak_rss_mib
model, data, store, _, max_length = sys.argv[1:6]
loaded = actstore.load_model(model)
after_load = peak_rss_mib()
t0 = time.perf_counter()
report = actstore.capture_to_store(loaded, data, store, "all", position="all", stats_only=True,
                                   max_length=int(max_length), batch_size=16, progress=False)
print(json.dumps({"texts": report.n_texts, "tokens": report.n_tokens, "seconds": time.perf_counter() - t0,
                  "peak": peak_rss_mib(), "after_load": after_load}))
"""


def small_model(folder: Path) -> Path:
    """A random 2-block Gemma-3 with gemma-3-270m's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    from actstore.models.embedded import prepare_demo_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_demo_model())
    config = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=32, intermediate_size=128, vocab_size=len(tokenizer),
                              max_position_embeddings=4096)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--growth", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    model = small_model(work / "model")
    text = (SHARED_DATA / "wikitext-2" / "test.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    inputs = {}
    for times in (1, args.growth):
        corpus = work / f"corpus-x{times}.txt"
        corpus.write_text(text * times)
        parquet = work / f"lines-x{times}.parquet"
        pq.write_table(pa.table({"text": lines * times}), parquet, row_group_size=1024)
        inputs[("corpus (.txt)", times)] = corpus
        inputs[("Parquet, one line a row", times)] = parquet
    results = {}
    for (kind, times), data in inputs.items():
        store = work / "s.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(data), str(store),
                              str(Path(__file__).resolve().parent), str(args.max_length)],
                             capture_output=True, text=True, check=True, env={**os.environ})
        results[(kind, times)] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[(kind, times)]
        print(f"{kind} x{times}: {data.stat().st_size / 1e6:.1f} MB, {r['texts']} texts, {r['tokens']} tokens, "
              f"{r['seconds']:.1f} s, peak {r['peak']:.0f} MiB (after load {r['after_load']:.0f}); "
              f"wall {time.perf_counter() - t0:.1f} s")
    rows = []
    growth = {}
    for (kind, times), r in results.items():
        size = inputs[(kind, times)].stat().st_size / 1e6
        rows.append(f"| {kind} | x{times} | {size:.1f} | {r['texts']} | {r['tokens']} | {r['seconds']:.1f} | "
                    f"{r['after_load']:.0f} | {r['peak']:.0f} |")
        if times == args.growth:
            growth[kind] = r["peak"] / results[(kind, 1)]["peak"]
    shutil.rmtree(work, ignore_errors=True)
    summary = "; ".join(f"{kind}: **{g:.2f}x**" for kind, g in growth.items())
    print(summary)
    write_section(
        "Dataset inputs: memory as the input grows (bench_sources.py)",
        f"`python benchmarks/bench_sources.py --growth {args.growth} --max-length {args.max_length}` at "
        f"{git_rev()}\n\nMachine: {machine()} (shared with other engineers' work while it ran)\n\n"
        "WikiText-2 test.txt as a plain-text corpus cut into windows of "
        f"{args.max_length} tokens, and its non-empty lines as a Parquet file (row groups of 1024 rows), each "
        f"also repeated {args.growth}x; captured with `--stats-only --layers all --position all` by a random "
        "2-block Gemma-3 (hidden 64) with gemma-3-270m's tokenizer, each in a fresh process. Peak RSS is the "
        "process's VmHWM (after load: the peak once the model is loaded).\n\n"
        "| input | size | MB | texts | tokens | capture s | after load MiB | peak MiB |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nPeak memory, x{args.growth} / x1: {summary}.",
    )


if __name__ == "__main__":
    main()

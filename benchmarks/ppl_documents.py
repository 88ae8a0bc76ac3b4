"""Perplexity-ratio intervals: contiguous text (today) against windows from many documents.

    python benchmarks/ppl_documents.py [--pairs 100] [--fraction 0.04] [--out benchmarks/results/PPL_DOCUMENTS.md]

One steered configuration of google/gemma-3-270m (refusal, layer 8, ENR k=64, built from the
first --pairs pairs of caa-pairs/refusal/train.json captured with their twins; added norm
--fraction of the layer's residual norm) against the unsteered model, on WikiText-2's test
split read as documents (:mod:`actstore.corpus`), in these designs:

* ``contiguous 2048 / 8192``: the first tokens of the file in windows of 256 (today's
  default: two and three articles);
* ``docs 4096 @128``: 4096 tokens as one window of 128 from each of 32 documents (three seeds);
* ``docs 4096 @64``: two windows of 64 from each of 32 documents;
* ``docs 8192 @128``: two windows of 128 from each of 32 documents.

For each: the inflation exp(sum(nll_steered - nll_base) / tokens) with a 95% paired percentile
bootstrap over windows (what the sweep reports today) and over documents (the cluster
bootstrap: a document's windows move together), the seconds of both forwards (wall and
process CPU), and the width of the log-inflation interval times sqrt(seconds): the cost of a
given precision, comparable across sizes (lower is better; a design repeated n times halves
its width for 4x the seconds). The table goes to --out and stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine  # noqa: E402


def windows_nll(loaded, windows: list[list[int]], vector, scale: float, batch_size: int):
    """(nll_base, nll_steered, tokens, seconds wall, seconds cpu) per window list."""
    from actstore.evaluate import PerplexityWindows
    from actstore.replay import plain_forward
    from actstore.steering import steer

    length = len(windows[0])
    assert all(len(w) == length for w in windows)
    flat = [t for w in windows for t in w]
    batches = PerplexityWindows(loaded.tokenizer, flat, length, batch_size)
    wall, cpu = time.perf_counter(), time.process_time()
    forward = plain_forward(loaded.model)
    nll_base, tokens = batches.nll(forward)
    with steer(loaded, vector, scale):
        nll_steered, _ = batches.nll(forward)
    return nll_base, nll_steered, tokens, time.perf_counter() - wall, time.process_time() - cpu


def by_document(values: np.ndarray, documents: list[int]) -> np.ndarray:
    order = sorted(set(documents))
    return np.asarray([values[[i for i, d in enumerate(documents) if d == doc]].sum() for doc in order])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.04)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "PPL_DOCUMENTS.md"))
    args = parser.parse_args()

    import torch

    import actstore
    from actstore.corpus import document_windows, read_documents
    from actstore.demo import prepare_demo_model
    from actstore.intervals import inflation_interval
    from actstore.methods import build_vector
    from actstore.sweep import residual_norm

    torch.manual_seed(0)
    started = time.perf_counter()
    loaded = actstore.load_model(str(prepare_demo_model()))
    work = Path(tempfile.mkdtemp(prefix="bench-ppl-documents-"))
    pairs = json.loads((SHARED_DATA / "caa-pairs" / "refusal" / "train.json").read_text())[: args.pairs]
    data = work / "pairs.json"
    data.write_text(json.dumps(pairs))
    store = work / "refusal.zarr"
    actstore.capture_to_store(loaded, data, store, str(args.layer), progress=False)
    vector = build_vector(store, args.layer, "enr", args.k)
    norm = residual_norm(actstore.compute_stats(store), args.layer)
    scale = args.fraction * norm / float(np.linalg.norm(vector.vector))
    capture_seconds = time.perf_counter() - started

    text = SHARED_DATA / "wikitext-2" / "test.txt"
    documents = read_documents(text)
    tokenizer = loaded.tokenizer
    # Contiguous: the first tokens of the whole file, as read_text_tokens reads them today.
    contiguous_ids = tokenizer(text.read_text()[: 8192 * 8], add_special_tokens=False)["input_ids"][:8192]
    # Which document each contiguous token is in: tokenize document by document in file order.
    doc_of_token: list[int] = []
    for d in documents:
        doc_of_token += [d.index] * len(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if len(doc_of_token) >= 8192:
            break

    designs = []
    for n in (2048, 8192):
        windows = [contiguous_ids[i : i + 256] for i in range(0, n, 256)]
        docs = [doc_of_token[i] for i in range(0, n, 256)]
        designs.append((f"contiguous {n} @256 (today)", windows, docs))
    for n, window, seed in ((4096, 128, 0), (4096, 128, 1), (4096, 128, 2), (4096, 64, 0), (8192, 128, 0)):
        chosen = document_windows(tokenizer, documents, n, window=window, min_documents=32, seed=seed)
        designs.append((f"docs {n} @{window} seed {seed}", [list(w.token_ids) for w in chosen],
                        [w.document for w in chosen]))

    rows = []
    for name, windows, docs in designs:
        nll_base, nll_steered, tokens, wall, cpu = windows_nll(loaded, windows, vector, scale, args.batch_size)
        over_windows = inflation_interval(nll_steered, nll_base, tokens)
        over_docs = inflation_interval(by_document(nll_steered, docs), by_document(nll_base, docs),
                                       by_document(tokens.astype(float), docs))
        width_w = math.log(over_windows.high) - math.log(over_windows.low)
        width_d = (math.log(over_docs.high) - math.log(over_docs.low)) if len(set(docs)) > 1 else math.nan
        per_doc = np.exp((by_document(nll_steered, docs) - by_document(nll_base, docs))
                         / by_document(tokens.astype(float), docs))
        rows.append({"design": name, "tokens": int(tokens.sum()), "windows": len(windows),
                     "documents": len(set(docs)), "inflation": over_windows.estimate,
                     "ci_windows": [over_windows.low, over_windows.high], "ci_documents": [over_docs.low, over_docs.high],
                     "log_width_windows": width_w, "log_width_documents": width_d, "seconds": wall, "cpu_seconds": cpu,
                     "cost_documents": width_d * math.sqrt(wall), "per_document_sd": float(np.std(np.log(per_doc), ddof=1))
                     if len(per_doc) > 1 else math.nan})
        print(json.dumps(rows[-1]), flush=True)

    lines = [
        "# Perplexity intervals: contiguous text against windows from documents",
        "",
        f"`python benchmarks/ppl_documents.py --pairs {args.pairs} --fraction {args.fraction}` "
        f"({git_rev()}; {machine()}).",
        "",
        f"One configuration: gemma-3-270m, refusal (first {args.pairs} train pairs with their twins), layer "
        f"{args.layer}, ENR k={args.k}, added norm {args.fraction} x the residual norm ({norm:.0f}), against the "
        f"unsteered model, on WikiText-2 test ({len(documents)} articles). Capture and vector: "
        f"{capture_seconds:.0f} s. 95% paired percentile bootstraps (2000 resamples) over windows (today) and over "
        "documents (all of a document's windows together). width: of log(inflation)'s interval; cost: the "
        "documents' width x sqrt(wall seconds), the price of a given precision (lower is better).",
        "",
        "| design | tokens | windows | documents | inflation | 95% CI over windows | 95% CI over documents "
        "| width (documents) | wall s | CPU s | cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['tokens']} | {r['windows']} | {r['documents']} | {r['inflation']:.4f} "
            f"| [{r['ci_windows'][0]:.4f}, {r['ci_windows'][1]:.4f}] "
            f"| [{r['ci_documents'][0]:.4f}, {r['ci_documents'][1]:.4f}] | {r['log_width_documents']:.4f} "
            f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['cost_documents']:.4f} |")
    lines += ["", "Per-document log-inflation SD: " + ", ".join(
        f"{r['design']}: {r['per_document_sd']:.4f}" for r in rows if not math.isnan(r["per_document_sd"])), ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

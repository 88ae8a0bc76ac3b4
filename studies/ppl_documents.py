"""Perplexity-ratio intervals: contiguous text (today) against windows from many documents.

    python studies/ppl_documents.py [--pairs 60] [--seeds 0,1] [--fraction 0.04]
                                       [--out studies/results/PPL_DOCUMENTS.md]

One steered configuration of google/gemma-3-270m (refusal, layer 8, ENR k=64, built from the
first --pairs pairs of caa-pairs/refusal/train.json captured with their twins; added norm
--fraction of the layer's residual norm) against the unsteered model, on WikiText-2's test
split read as documents (:mod:`actstore.inputs.corpus`), in these designs:

* ``contiguous 2048 / 8192``: the first tokens of the file in windows of 256 (today's
  default: two and three articles; one run over 8192 tokens, the 2048 design its first 8
  windows, its seconds a quarter of the run's);
* ``docs 4096 @128``: 4096 tokens as one window of 128 from each of 32 documents (--seeds).

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
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402


def windows_nll(loaded, windows: list[list[int]], vector, scale: float, batch_size: int):
    """(nll_base, nll_steered, tokens, seconds wall, seconds cpu) per window list."""
    from actstore.evaluation.replay import plain_forward
    from actstore.evaluation.scoring import PerplexityWindows
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


def design_row(design, nll_base, nll_steered, tokens, docs, wall, cpu, inflation_interval) -> dict:
    over_windows = inflation_interval(nll_steered, nll_base, tokens)
    per_doc = [by_document(x, docs) for x in (nll_steered, nll_base, tokens.astype(float))]
    over_docs = inflation_interval(*per_doc)
    width_w = math.log(over_windows.high) - math.log(over_windows.low)
    width_d = math.log(over_docs.high) - math.log(over_docs.low) if len(set(docs)) > 1 else math.nan
    log_per_doc = (per_doc[0] - per_doc[1]) / per_doc[2]
    return {"design": design, "tokens": int(tokens.sum()), "windows": len(tokens), "documents": len(set(docs)),
            "inflation": over_windows.estimate, "ci_windows": [over_windows.low, over_windows.high],
            "ci_documents": [over_docs.low, over_docs.high], "log_width_windows": width_w,
            "log_width_documents": width_d, "seconds": wall, "cpu_seconds": cpu,
            "cost_documents": width_d * math.sqrt(wall), "cost_windows": width_w * math.sqrt(wall),
            "per_document_sd": float(np.std(log_per_doc, ddof=1)) if len(log_per_doc) > 1 else math.nan,
            # per window, for later analyses (between- and within-document spread)
            "window_nll_base": [float(x) for x in nll_base], "window_nll_steered": [float(x) for x in nll_steered],
            "window_tokens": [int(x) for x in tokens], "window_documents": [int(d) for d in docs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--fraction", type=float, default=0.04)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[0, 1],
                        help="document_windows seeds of the 32-document design (default 0,1)")
    parser.add_argument("--out", default=str(HERE / "results" / "PPL_DOCUMENTS.md"))
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="only rewrite --out from the rows of an earlier run's .json (nothing measured)")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        settings = saved["settings"]
        for key in ("pairs", "fraction", "seeds", "layer", "k"):
            setattr(args, key, settings[key])
        render(saved["rows"], args, settings["norm"], settings["n_documents"], settings["capture_seconds"])
        return

    import torch

    import actstore
    from actstore.evaluation.intervals import inflation_interval
    from actstore.evaluation.sweep import residual_norm
    from actstore.inputs.corpus import document_windows, read_documents
    from actstore.models.embedded import prepare_demo_model
    from actstore.vectors.build import build_vector

    torch.manual_seed(0)
    started = time.perf_counter()
    loaded = actstore.load_model(str(prepare_demo_model()))
    work = Path(tempfile.mkdtemp(prefix="bench-ppl-documents-"))
    pairs = json.loads((SHARED_DATA / "caa-pairs" / "refusal" / "train.json").read_text())[: args.pairs]
    data = work / "pairs.json"
    data.write_text(json.dumps(pairs))
    store = work / "refusal.zarr"
    actstore.capture_to_store(loaded, data, store, layers=str(args.layer), progress=False)
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

    # Contiguous designs are prefixes of one run over the first 8192 tokens (the first 8 windows of 256 are
    # the 2048-token design); their seconds are that run's, scaled by their share of its windows.
    runs = []
    contiguous = [contiguous_ids[i : i + 256] for i in range(0, 8192, 256)]
    runs.append(("contiguous", contiguous, [doc_of_token[i] for i in range(0, 8192, 256)]))
    for seed in args.seeds:
        chosen = document_windows(tokenizer, documents, 4096, window=128, min_documents=32, seed=seed)
        runs.append((f"docs 4096 @128 seed {seed}", [list(w.token_ids) for w in chosen], [w.document for w in chosen]))

    rows = []
    for name, windows, docs in runs:
        nll_base, nll_steered, tokens, wall, cpu = windows_nll(loaded, windows, vector, scale, args.batch_size)
        parts = [(f"contiguous {n} @256 (today)", n // 256) for n in (2048, 8192)] if name == "contiguous" \
            else [(name, len(windows))]
        for design, count in parts:
            share = count / len(windows)
            rows.append(design_row(design, nll_base[:count], nll_steered[:count], tokens[:count], docs[:count],
                                   wall * share, cpu * share, inflation_interval))
            print(json.dumps(rows[-1]), flush=True)

    render(rows, args, norm, len(documents), capture_seconds)


def render(rows: list[dict], args, norm: float, n_documents: int, capture_seconds: float) -> None:
    """Write --out (markdown) and its .json beside it."""
    lines = [
        "# Perplexity intervals: contiguous text against windows from documents",
        "",
        f"`python studies/ppl_documents.py --pairs {args.pairs} --fraction {args.fraction} "
        f"--seeds {','.join(map(str, args.seeds))}` ({git_rev()}; {machine()}).",
        "",
        f"One configuration: gemma-3-270m, refusal (first {args.pairs} train pairs with their twins), layer "
        f"{args.layer}, ENR k={args.k}, added norm {args.fraction} x the residual norm ({norm:.0f}), against the "
        f"unsteered model, on WikiText-2 test ({n_documents} articles). Capture and vector: "
        f"{capture_seconds:.0f} s. 95% paired percentile bootstraps (2000 resamples) over windows (what the sweep "
        "reports today) and over documents (all of a document's windows together; not given for 2-3 documents, "
        "where a bootstrap has 3-10 distinct resamples). width: of log(inflation)'s interval; cost: width x "
        "sqrt(CPU seconds), the price of a given precision (lower is better: n times the text costs n times the "
        "seconds for 1/sqrt(n) the width). Seconds are of both forwards (unsteered and steered) on a shared "
        "2-core machine; CPU seconds vary less with the load than wall seconds.",
        "",
        "| design | tokens | windows | documents | inflation | 95% CI over windows (width) "
        "| 95% CI over documents (width) | wall s | CPU s | cost over windows | cost over documents |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        enough = r["documents"] >= 8
        docs_ci = (f"[{r['ci_documents'][0]:.4f}, {r['ci_documents'][1]:.4f}] ({r['log_width_documents']:.4f})"
                   if enough else f"n/a ({r['documents']} documents)")
        docs_cost = f"{r['log_width_documents'] * math.sqrt(r['cpu_seconds']):.3f}" if enough else "n/a"
        lines.append(
            f"| {r['design']} | {r['tokens']} | {r['windows']} | {r['documents']} | {r['inflation']:.4f} "
            f"| [{r['ci_windows'][0]:.4f}, {r['ci_windows'][1]:.4f}] ({r['log_width_windows']:.4f}) "
            f"| {docs_ci} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} "
            f"| {r['log_width_windows'] * math.sqrt(r['cpu_seconds']):.3f} | {docs_cost} |")
    spread = [r["per_document_sd"] for r in rows if r["documents"] >= 8]
    sd = float(np.mean(spread)) if spread else math.nan
    lines += ["", "SD over documents of log(inflation) (one window of 128 per document, so each window's own "
              "noise is in it): " + ", ".join(f"{r['design']} {r['per_document_sd']:.4f}" for r in rows
                                              if r["documents"] >= 8) + f"; mean {sd:.4f}.", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    meta = {"pairs": args.pairs, "fraction": args.fraction, "seeds": args.seeds, "layer": args.layer, "k": args.k,
            "norm": norm, "n_documents": n_documents, "capture_seconds": capture_seconds}
    Path(args.out).with_suffix(".json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()

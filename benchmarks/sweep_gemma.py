"""The paper's claims re-tested on google/gemma-3-270m: five CAA behaviors and morality.

    python benchmarks/sweep_gemma.py [--train-pairs 400] [--test-items 100] [--ppl-tokens 8192]
                                     [--layers 2,4,6,8] [--k 16,64,dense] [--methods enr,whitened]
                                     [--fractions ...] [--behaviors ...] [--out benchmarks/results]

For each behavior: capture the first --train-pairs pairs of train.json (A/B sets
at the answer letter, --offset 1, where CAA reads them; morality's free-text
pairs at their last token), then `actstore eval` over layers x methods x k x the
default alpha grid (fractions of each layer's residual norm), on the first
--test-items items of test.json (A/B letters; morality: the per-token preference)
and --ppl-tokens of WikiText-2. Each behavior's folder gets the eval's files;
the summary across behaviors (frontier at each budget, retained fraction, best
layer, whitened vs plain, cost) goes to <out>/SUMMARY.md with every interval,
and <out>/frontier.csv holds all behaviors' frontiers. Every command is printed
and recorded. Interrupted runs resume (capture --resume; eval resumes its folder),
so a long sweep can be run in pieces.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

BEHAVIORS = ("refusal", "corrigible-neutral-HHH", "survival-instinct", "sycophancy", "hallucination", "morality")


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def source(behavior: str) -> Path:
    folder = "bias-pairs" if behavior == "morality" else "caa-pairs"
    return SHARED_DATA / folder / behavior


def _ci(value, low, high, spec=".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def summary_markdown(frontier, results, budgets, matched=None) -> list[str]:
    """The cross-behavior tables of SUMMARY.md."""
    lines = ["## Frontier: largest shift within each perplexity budget, every behavior", "",
             "Per behavior, layer and vector: the configuration with the largest shift whose inflation is within "
             "the budget (its shift and inflation with 95% intervals), and the fraction of the dense vector's "
             "frontier shift it keeps at the same budget and layer (paired bootstrap over items; only where the "
             "dense shift's interval excludes zero).", ""]
    for budget in budgets:
        lines += [f"### Budget: inflation <= {budget:g}", "",
                  "| behavior | layer | vector | alpha (fraction) | shift [95% CI] | inflation [95% CI] | "
                  "fraction of dense [95% CI] |", "|---|---|---|---|---|---|---|"]
        rows = frontier[frontier["budget"] == budget].sort_values(["behavior", "layer", "method", "k"])
        for r in rows.to_dict("records"):
            vector = f"{r['method']} k={r['k']}" if r["k"] != "dense" else "dense"
            reachable = not math.isnan(r["alpha"])
            lines.append(
                f"| {r['behavior']} | {r['layer']} | {vector} | {r['alpha']:.3g} | "
                f"{_ci(r['on_target_shift'], r['on_target_ci_low'], r['on_target_ci_high'])} | "
                f"{_ci(r['ppl_inflation'], r['ppl_inflation_ci_low'], r['ppl_inflation_ci_high'])} | "
                f"{_ci(r['fraction_of_dense'], r['fraction_ci_low'], r['fraction_ci_high'])} |"
                if reachable else f"| {r['behavior']} | {r['layer']} | {vector} | none within budget | | | |")
        lines.append("")
    lines += ["## Best layer per vector (largest frontier shift within each budget)", "",
              "| behavior | budget | vector | best layer | shift [95% CI] | runner-up layer | its shift [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    for (behavior, budget, method, k), rows in frontier.dropna(subset=["alpha"]).groupby(
            ["behavior", "budget", "method", "k"]):
        rows = rows.sort_values("on_target_shift", ascending=False)
        first = rows.iloc[0]
        second = rows.iloc[1] if len(rows) > 1 else None
        vector = f"{method} k={k}" if k != "dense" else "dense"
        cells = [str(behavior), f"{budget:g}", vector]
        for row in (first, second):
            cells += ([str(row["layer"]), _ci(row["on_target_shift"], row["on_target_ci_low"],
                                              row["on_target_ci_high"])] if row is not None else ["", ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if matched is not None and len(matched):
        lines += ["## Matched effect: least inflation reaching a fraction of the dense vector's best shift", "",
                  "| behavior | layer | vector | target | shift [95% CI] | inflation [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for r in matched.sort_values(["behavior", "layer", "target_fraction", "method", "k"]).to_dict("records"):
            vector = f"{r['method']} k={r['k']}" if r["k"] != "dense" else "dense"
            reached = not math.isnan(r["alpha"])
            lines.append(f"| {r['behavior']} | {r['layer']} | {vector} | {r['target_fraction']:g} x "
                         f"{r['target_shift'] / r['target_fraction']:.3g} | "
                         + (f"{_ci(r['on_target_shift'], r['on_target_ci_low'], r['on_target_ci_high'])} | "
                            f"{_ci(r['ppl_inflation'], r['ppl_inflation_ci_low'], r['ppl_inflation_ci_high'])} |"
                            if reached else "not reached | |"))
        lines.append("")
    else:
        lines += ["## Matched effect", "", "No dense vector has a best shift whose interval excludes zero.", ""]
    detectable = results.groupby("behavior")["detectable"].agg(["sum", "count"])
    lines += ["## Detectable effects per behavior", "",
              "| behavior | test items | configurations whose shift's interval excludes zero | of | "
              "largest shift [95% CI] (config) |", "|---|---|---|---|---|"]
    for behavior, row in detectable.iterrows():
        best = results[results["behavior"] == behavior].sort_values("on_target_shift").iloc[-1]
        lines.append(f"| {behavior} | {int(best['n_items'])} | {int(row['sum'])} | {int(row['count'])} | "
                     f"{_ci(best['on_target_shift'], best['on_target_ci_low'], best['on_target_ci_high'])} "
                     f"(layer {best['layer']} {best['method']} k={best['k']} fraction {best['alpha']:g}, "
                     f"inflation {best['ppl_inflation']:.3g}) |")
    seconds = results["seconds"].to_numpy(dtype=float)
    lines += ["", "## Cost", "",
              f"{len(results)} configurations; median {float(sorted(seconds)[len(seconds) // 2]):.3g} s each, "
              f"{3600 / seconds.mean():.0f} configurations per hour at the mean ({seconds.sum() / 3600:.2f} h in all).",
              ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=400)
    parser.add_argument("--test-items", type=int, default=100)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--ppl-window", type=int, default=256)
    parser.add_argument("--layers", default="2,4,6,8")
    parser.add_argument("--k", default="16,64,dense")
    parser.add_argument("--methods", default="enr,whitened")
    parser.add_argument("--fractions", default=None, help="default: actstore eval's")
    parser.add_argument("--budgets", default="1.05,1.25,2")
    parser.add_argument("--behaviors", default=",".join(BEHAVIORS))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--work", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild SUMMARY.md from the behaviors' folders already in --out")
    args = parser.parse_args()

    import pandas as pd

    from actstore.demo import prepare_demo_model

    exe = str(Path(sys.executable).with_name("actstore"))
    model = str(prepare_demo_model())
    out = Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-gemma-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    behaviors = args.behaviors.split(",")
    for behavior in behaviors if not args.summary_only else ():
        folder = source(behavior)
        train = work / f"{behavior}-train.json"
        if not train.exists():
            train.write_text(json.dumps(json.loads((folder / "train.json").read_text())[: args.train_pairs]))
        store = work / f"{behavior}.zarr"
        offset = [] if behavior == "morality" else ["--offset", "1"]
        run([exe, "capture", "-q", "--model", model, "--data", str(train), "--layers", args.layers, *offset,
             "--store", str(store), "--resume"], log)
        run([exe, "eval", "-q", "--model", model, "--store", str(store), "--data-test", str(folder / "test.json"),
             "--max-items", str(args.test_items), "--layers", args.layers, "--k", args.k, "--methods", args.methods,
             "--budgets", args.budgets, *(["--fractions", args.fractions] if args.fractions else []),
             "--text", str(SHARED_DATA / "wikitext-2" / "test.txt"), "--ppl-tokens", str(args.ppl_tokens),
             "--ppl-window", str(args.ppl_window), "--behavior", behavior, "--out", str(out / behavior)], log)
    done = [b for b in behaviors if (out / b / "results.csv").exists()]
    budgets = [float(b) for b in args.budgets.split(",")]
    if args.summary_only:
        from actstore.ledger import Ledger
        from actstore.report import write_report

        for behavior in done:  # a sweep stopped part-way has results but no report yet
            ledger = Ledger.open_existing(out / behavior)
            write_report(ledger.results(), ledger, budgets)
    results = pd.concat([pd.read_csv(out / b / "results.csv", dtype={"k": str}) for b in done], ignore_index=True)
    frontier = pd.concat([pd.read_csv(out / b / "frontier.csv", dtype={"k": str}) for b in done], ignore_index=True)
    frontier.to_csv(out / "frontier.csv", index=False)
    matched = pd.concat([pd.read_csv(out / b / "matched_effect.csv", dtype={"k": str}) for b in done],
                        ignore_index=True)
    header = (f"# gemma-3-270m: the paper's claims re-tested\n\nMade by `python benchmarks/sweep_gemma.py "
              f"--train-pairs {args.train_pairs} --test-items {args.test_items} --ppl-tokens {args.ppl_tokens} "
              f"--ppl-window {args.ppl_window} "
              f"--layers {args.layers} --k {args.k} --methods {args.methods} --budgets {args.budgets}"
              f"{' --fractions ' + args.fractions if args.fractions else ''}` at {git_rev()}; behaviors with "
              f"results: {', '.join(done)}.\n\nMachine: {machine()}\n\nCommands run (stores in a temporary "
              "folder):\n\n```\n" + ("\n".join(log) if log else "(--summary-only: see each behavior's folder)")
              + "\n```\n\nEach behavior's folder holds results.md, results.csv, items.csv, windows.csv, "
              "frontier.csv, matched_effect.csv and frontier_<behavior>.png.\n\n")
    (out / "SUMMARY.md").write_text(header + "\n".join(summary_markdown(frontier, results, budgets, matched)))
    print(f"wrote {out / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()

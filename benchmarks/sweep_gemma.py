"""The paper's claims re-tested on google/gemma-3-270m, from the written plan (benchmarks/results/PLAN.md).

    python benchmarks/sweep_gemma.py [--behaviors refusal,morality] [--out benchmarks/results/plan]
                                     [--work DIR] [--ppl-tokens 4096] [--ppl-documents 32]
    python benchmarks/sweep_gemma.py --slice      # one configuration: seconds each, the plan's hours
    python benchmarks/sweep_gemma.py --count      # the plan's configurations, nothing run
    python benchmarks/sweep_gemma.py --summary-only

Per behavior: capture its whole train.json at layers 4-10 (A/B sets with their
option-swapped twins, at the answer letter; morality's free-text pairs at their
last token), then `actstore eval` on its whole test.json (A/B: every question
in both answer orders, on log-odds; morality: the per-token preference) in two
runs that extend one folder:

* the k claim at layer 8: ENR k in {4, 16, 64, 256, dense}, whitened k in {16, 64},
  and the controls at the same k and alphas (random, seed 0; letter, A/B only);
* the layer claim at layers 4-10 (8 from the first run): ENR k=64 and dense.

The primary contrasts (:data:`PRIMARY`, 7 per behavior at inflation 1.25) are
pre-specified and Holm-corrected together; every other figure is secondary.

Every configuration at the default alphas (fractions of the layer's residual
norm), perplexity from --ppl-tokens tokens of --ppl-documents documents of the
default corpus. Each behavior's folder gets the eval's files; <out>/SUMMARY.md
holds the counts, the primary contrasts (Holm), the frontier differences and the
cost across behaviors, and <out>/frontier.csv, contrasts.csv all behaviors'
rows. Every command is printed and recorded; interrupted runs resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

SHARED_DATA = Path(os.environ.get("ACTSTORE_SHARED_DATA", SHARED_DATA))  # a worktree's ../shared may be elsewhere

BEHAVIORS = ("refusal", "morality")
K_LAYER = 8
K_CLAIM = {"layers": "8", "k": "4,16,64,256,dense", "methods": "enr,random"}
WHITENED = {"layers": "8", "k": "16,64", "methods": "whitened"}
LAYER_CLAIM = {"layers": "4,5,6,7,9,10", "k": "64,dense", "methods": "enr"}
CAPTURE_LAYERS = "4,5,6,7,8,9,10"
PRIMARY_BUDGET = 1.25
# The plan's family of primary contrasts per behavior (Holm-corrected together; PLAN.md): (a) each ENR
# k minus dense at layer 8, (d) whitened minus ENR at the same k, (c) layer 8 minus the best other layer.
PRIMARY = tuple([f"sparse_minus_dense=8:enr:{k}-8:enr:dense@{PRIMARY_BUDGET:g}" for k in (4, 16, 64, 256)]
                + [f"whitened_minus_enr=8:whitened:{k}-8:enr:{k}@{PRIMARY_BUDGET:g}" for k in (16, 64)]
                + [f"layer_8_minus_best=8:enr:64-best:enr:64@{PRIMARY_BUDGET:g}"])


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def source(behavior: str) -> Path:
    return SHARED_DATA / ("bias-pairs" if behavior == "morality" else "caa-pairs") / behavior


def is_ab(behavior: str) -> bool:
    return behavior != "morality"


def eval_runs(behavior: str) -> list[dict]:
    """The plan's `actstore eval` runs for one behavior (flags without the common ones)."""
    methods = K_CLAIM["methods"] + (",letter" if is_ab(behavior) else "")
    return [{**K_CLAIM, "methods": methods}, WHITENED, LAYER_CLAIM]


def plan_configurations(behaviors, fractions: int) -> int:
    """How many configurations the plan measures at ``fractions`` alphas."""
    from actstore.evaluation.grid import Grid, parse_ks

    total = 0
    for behavior in behaviors:
        for spec in eval_runs(behavior):
            grid = Grid(tuple(int(x) for x in spec["layers"].split(",")), tuple(parse_ks(spec["k"])),
                        tuple(float(i + 1) for i in range(fractions)), methods=tuple(spec["methods"].split(",")))
            total += len(grid.configurations())
    return total


def _ci(value, low, high, spec=".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def summary_markdown(results, frontier, contrasts) -> list[str]:
    """The cross-behavior tables of SUMMARY.md."""
    from actstore.evaluation.grid import is_control
    from actstore.evaluation.report import count_line

    lines = ["## Counts (primary measure; Benjamini-Hochberg per behavior, controls a family of their own)", ""]
    for behavior, rows in results.groupby("behavior"):
        vectors = rows[~rows["method"].map(is_control)]
        controls = rows[rows["method"].map(is_control)]
        lines.append(f"- **{behavior}** ({rows['measure'].iloc[0]}, {int(rows['n_questions'].iloc[0])} questions): "
                     f"vectors: {count_line(vectors)}"
                     + (f"; controls: {count_line(controls)}" if len(controls) else "") + ".")
    lines += ["", "## Primary contrasts (Holm-corrected per behavior)", "",
              "| behavior | contrast | layer | budget | vector | minus | difference [95% CI] | p | Holm p |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in contrasts.sort_values(["behavior", "contrast", "layer", "k", "budget"]).to_dict("records"):
        lines.append(f"| {r['behavior']} | {r['contrast']} | {r['layer']} | {r['budget']:g} | {r['method']} "
                     f"k={r['k']} | {r['reference']} | {_ci(r['estimate'], r['ci_low'], r['ci_high'])} | "
                     f"{r['p_value']:.2g} | {r['p_holm']:.2g} |")
    lines += ["", "## Frontier: shift at each budget, and minus dense (interpolated; bootstrap redoes it)", "",
              "| behavior | layer | vector | budget | shift [95% CI] | minus dense [95% CI] | fraction of dense [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    for r in frontier.sort_values(["behavior", "layer", "method", "budget"]).to_dict("records"):
        if not r["reached"]:
            continue
        lines.append(f"| {r['behavior']} | {r['layer']} | {r['method']} {r['k']} | {r['budget']:g} | "
                     f"{_ci(r['shift'], r['ci_low'], r['ci_high'])} | "
                     f"{_ci(r['diff_vs_dense'], r['diff_ci_low'], r['diff_ci_high'])} | "
                     f"{_ci(r['fraction'], r['fraction_ci_low'], r['fraction_ci_high'])} |")
    seconds = results["seconds"].to_numpy(dtype=float)
    lines += ["", "## Cost", "",
              f"{len(results)} configurations; median {float(sorted(seconds)[len(seconds) // 2]):.3g} s each, "
              f"{3600 / seconds.mean():.0f} configurations per hour at the mean ({seconds.sum() / 3600:.2f} h in all).",
              ""]
    return lines


def capture(exe: str, model: str, behavior: str, work: Path, log: list[str]) -> Path:
    store = work / f"{behavior}.zarr"
    offset = ["--offset", "1"] if is_ab(behavior) else []
    run([exe, "capture", "-q", "--model", model, "--data", str(source(behavior) / "train.json"), "--layers",
         CAPTURE_LAYERS, *offset, "--store", str(store), "--resume"], log)
    return store


def evaluate(exe: str, model: str, behavior: str, store: Path, out: Path, spec: dict, args, log: list[str],
             extra: list[str] = ()) -> None:
    run([exe, "eval", "-q", "--model", model, "--store", str(store), "--data-test",
         str(source(behavior) / "test.json"), "--layers", spec["layers"], "--k", spec["k"], "--methods",
         spec["methods"], "--budgets", args.budgets, "--ppl-tokens", str(args.ppl_tokens), "--ppl-documents",
         str(args.ppl_documents), "--behavior", behavior, "--out", str(out),
         *[a for spec in PRIMARY for a in ("--contrasts", spec)], *extra], log)


def time_slice(exe: str, model: str, args, work: Path, log: list[str]) -> str:
    """One refusal configuration after the layer's cache (the second of two alphas): seconds, and the
    plan's hours at that rate."""
    import pandas as pd

    store = capture(exe, model, "refusal", work, log)
    out = work / "slice"
    started = time.perf_counter()
    evaluate(exe, model, "refusal", store, out, {"layers": str(K_LAYER), "k": "64", "methods": "enr"}, args, log,
             ["--fractions", "0.02,0.04", "--no-separation"])
    wall = time.perf_counter() - started
    seconds = pd.read_csv(out / "results.csv")["seconds"].to_list()
    n = plan_configurations(args.behaviors.split(","), 5)
    return (f"`python benchmarks/sweep_gemma.py --slice` at {git_rev()}\n\nMachine: {machine()}\n\n"
            f"Refusal (83 test questions, both orders), layer {K_LAYER} ENR k=64, {args.ppl_tokens} perplexity "
            f"tokens from {args.ppl_documents} documents: first configuration (with the layer's cached block "
            f"outputs) {seconds[0]:.1f} s, the next {seconds[1]:.1f} s: **{3600 / seconds[1]:.0f} configurations "
            f"per hour**. The whole eval command took {wall:.0f} s (model load, baseline, report). The plan "
            f"measures {n} configurations: about {n * seconds[1] / 3600:.1f} h at that rate, plus one cache per "
            f"layer and behavior.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviors", default=",".join(BEHAVIORS))
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--ppl-documents", type=int, default=32)
    parser.add_argument("--budgets", default="1.05,1.25,2")
    parser.add_argument("--out", default=str(HERE / "results" / "plan"))
    parser.add_argument("--work", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument("--slice", action="store_true", help="time one configuration; write <out>/SLICE.md")
    parser.add_argument("--count", action="store_true", help="print the plan's number of configurations")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild SUMMARY.md from the behaviors' folders already in --out")
    args = parser.parse_args()
    behaviors = args.behaviors.split(",")
    if args.count:
        print(f"{plan_configurations(behaviors, 5)} configurations at 5 alphas")
        return

    import pandas as pd

    from actstore.demo import prepare_demo_model

    exe = str(Path(sys.executable).with_name("actstore"))
    model = str(prepare_demo_model())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-gemma-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    if args.slice:
        body = time_slice(exe, model, args, work, log)
        (out / "SLICE.md").write_text("# Cost of one configuration\n\n" + body + "\n```\n" + "\n".join(log) + "\n```\n")
        print(body)
        return
    for behavior in behaviors if not args.summary_only else ():
        store = capture(exe, model, behavior, work, log)
        for spec in eval_runs(behavior):
            evaluate(exe, model, behavior, store, out / behavior, spec, args, log)
    if args.summary_only:
        from actstore.evaluation.ledger import Ledger
        from actstore.evaluation.report import write_report

        for behavior in behaviors:
            if (out / behavior / "baseline.json").exists():
                from actstore.evaluation.frontier import Contrast

                write_report(Ledger.open_existing(out / behavior), [float(b) for b in args.budgets.split(",")],
                             [Contrast.parse(spec) for spec in PRIMARY])
    done = [b for b in behaviors if (out / b / "results.csv").exists()]

    def gather(name: str):
        return pd.concat([pd.read_csv(out / b / name, dtype={"k": str}) for b in done], ignore_index=True)

    results, frontier, contrasts = gather("results.csv"), gather("frontier.csv"), gather("contrasts.csv")
    frontier.to_csv(out / "frontier.csv", index=False)
    contrasts.to_csv(out / "contrasts.csv", index=False)
    header = (f"# gemma-3-270m: the paper's claims re-tested from PLAN.md\n\nMade by `python benchmarks/sweep_gemma.py "
              f"--behaviors {args.behaviors} --ppl-tokens {args.ppl_tokens} --ppl-documents {args.ppl_documents} "
              f"--budgets {args.budgets}` at {git_rev()}; behaviors with results: {', '.join(done)}.\n\n"
              f"Machine: {machine()}\n\nCommands run (stores in a temporary folder):\n\n```\n"
              + ("\n".join(log) if log else "(--summary-only: see each behavior's folder)") + "\n```\n\n"
              "Each behavior's folder holds results.md, results.csv, items.csv, windows.csv, frontier.csv, "
              "contrasts.csv, steerability.csv and frontier_<behavior>.png.\n\n")
    (out / "SUMMARY.md").write_text(header + "\n".join(summary_markdown(results, frontier, contrasts)))
    (out / "commands.json").write_text(json.dumps(log, indent=2))
    print(f"wrote {out / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()

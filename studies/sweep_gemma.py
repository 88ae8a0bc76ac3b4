"""The paper's claims re-tested on google/gemma-3-270m, from the written plan (studies/results/PLAN.md).

    python studies/sweep_gemma.py [--tiers 1,2,3,4,5] [--out studies/results/plan] [--work DIR]
    python studies/sweep_gemma.py --slice      # one configuration timed: the plan's hours
    python studies/sweep_gemma.py --count      # the plan's configurations per tier, nothing run
    python studies/sweep_gemma.py --summary-only

Per behavior: capture its whole train.json (A/B sets with their option-swapped
twins, at the answer letter; morality's free-text pairs at their last token) at
the layers its tiers use, then `actstore eval` on its whole test.json (A/B:
every question in both answer orders, on log-odds; morality: the per-token
preference), one run per line of :data:`TIERS` (PLAN.md §2), each extending the
behavior's folder; perplexity from --ppl-tokens tokens, one window from each of
--ppl-documents documents of the default corpus. Tiers run in order.

Then SUMMARY.md: the primary family P1-P7 (:func:`primary_family`, PLAN.md §3),
computed from the folders' items.csv and windows.csv with one bootstrap per
behavior that resamples questions and documents and redoes every interpolation
and every choice, Holm-corrected together (m = 7; a contrast not testable counts
as not rejected); the narrow/diffuse axis from the train statistics; the counts
and the cost. <out>/frontier.csv and contrasts.csv hold every behavior's rows.
Every command is printed and recorded; interrupted runs resume.
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
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

SHARED_DATA = Path(os.environ.get("ACTSTORE_SHARED_DATA", SHARED_DATA))  # a worktree's ../shared may be elsewhere

FULL = "0.02,0.04,0.08,0.16"
SCAN = "0.04,0.08,0.16"
CONTROL = "0.0025,0.005,0.01,0.02,0.04,0.08,0.16"  # amendment 2026-12-05 (3): every budget reached from below
OTHER_LAYERS = "4,5,6,7,9,10"
SEEDS = ("--control-seeds", "0,1,2,3,4")  # amendment 2026-12-05 (3): 5 seeds per random control
# PLAN.md §2 as amended on 2026-12-05: (tier, behavior, layers, methods, k, fractions, extra eval flags),
# in the order they run.
TIERS = [
    (1, "refusal", "8", "enr", "4,16,64,256,dense", FULL, ()),
    (1, "refusal", "8", "random", "16,64,dense", CONTROL, SEEDS),
    (1, "refusal", "8", "letter", "dense", CONTROL, ()),
    (1, "morality", "8", "enr", "4,16,64,256,dense", FULL, ()),
    (1, "morality", "8", "random", "16,64,dense", CONTROL, SEEDS),
    (2, "refusal", "8", "whitened", "16,64", FULL, ()),
    (2, "morality", "8", "whitened", "16,64", FULL, ()),
    (3, "morality", OTHER_LAYERS, "enr", "64,dense", SCAN, ()),
    (4, "refusal", OTHER_LAYERS, "enr", "64,dense", SCAN, ()),
    (5, "survival-instinct", "8", "enr", "64,dense", FULL, ()),
    (5, "survival-instinct", "8", "random", "64,dense", CONTROL, SEEDS),
    (5, "survival-instinct", "8", "letter", "dense", CONTROL, ()),
]
# Amendment 2026-12-05 (7): the vectors' own noise for P1, P2 and P6's ENR side, two disjoint halves of
# the training pairs; each half's sweep in <out>/<behavior>-half-I-2 (tier 6: after the plan's tiers).
HALVES = [(6, behavior, "8", "enr", "64,dense", FULL, ("--train-resample", f"half:{i}/2"))
          for behavior in ("refusal", "morality") for i in (1, 2)]
# Amendment 2026-12-05 (4): margins fixed before the run, on each behavior's own scale.
MARGINS = {"refusal": 0.08, "morality": 0.019, "survival-instinct": 0.08}
PRIMARY_BUDGET, FALLBACK_BUDGET = 1.25, 1.05
NARROW_K = 64


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def source(behavior: str) -> Path:
    return SHARED_DATA / ("bias-pairs" if behavior == "morality" else "caa-pairs") / behavior


def is_ab(behavior: str) -> bool:
    return behavior != "morality"


def tier_configurations(tiers) -> dict[int, int]:
    """Configurations per tier (nothing run)."""
    from actstore.cli.options import KListType
    from actstore.evaluation.grid import Grid

    counts: dict[int, int] = {}
    for tier, _, layers, methods, ks, fractions, extra in TIERS + HALVES:
        if tier in tiers:
            seeds = tuple(int(s) for s in extra[1].split(",")) if extra == SEEDS else (0,)
            grid = Grid(tuple(int(x) for x in layers.split(",")), tuple(KListType().convert(ks, None, None)),
                        tuple(float(f) for f in fractions.split(",")), methods=(methods,), control_seeds=seeds)
            counts[tier] = counts.get(tier, 0) + len(grid.configurations())
    return counts


def capture(exe: str, model: str, behavior: str, layers: str, work: Path, log: list[str]) -> Path:
    store = work / f"{behavior}.zarr"
    offset = ["--offset", "1"] if is_ab(behavior) else []
    run([exe, "capture", "-q", "--model", model, "--data", str(source(behavior) / "train.json"), "--layers", layers,
         *offset, "--store", str(store), "--resume"], log)
    return store


def evaluate(exe: str, model: str, behavior: str, store: Path, out: Path, layers: str, methods: str, ks: str,
             fractions: str, args, log: list[str], extra: tuple[str, ...] = ()) -> None:
    run([exe, "eval", "-q", "--model", model, "--store", str(store), "--data-test",
         str(source(behavior) / "test.json"), "--layers", layers, "--k", ks, "--methods", methods, "--fractions",
         fractions, "--budgets", args.budgets, "--ppl-tokens", str(args.ppl_tokens), "--ppl-documents",
         str(args.ppl_documents), "--behavior", behavior, "--out", str(out), *analysis_flags(args, behavior), *extra], log)


def analysis_flags(args, behavior: str) -> list[str]:
    """The report's margin and resamples, and the test set kept apart from training (issue 30 §2), as
    `actstore eval` flags; none unless asked (a plan folder measured without them resumes as it was).
    ``--plan-margins``: each behavior's margin of :data:`MARGINS`."""
    margin = MARGINS.get(behavior) if args.plan_margins else args.margin
    flags = [] if margin is None else ["--margin", str(margin)]
    flags += [] if args.resamples is None else ["--resamples", str(args.resamples)]
    return flags + (["--exclude-train-overlap"] if args.exclude_train_overlap else [])


# ---- the primary family (PLAN.md §3) -------------------------------------------------------------


def load_paths(folder: Path):
    from actstore.evaluation.paths import Evidence, Paths
    from actstore.evaluation.ledger import Ledger

    ledger = Ledger.open_existing(folder)
    return Paths.of(Evidence.from_tables(ledger.results(), ledger.items(), ledger.windows()))


def shift_at(paths, behavior: str, layer: int, method: str, k: str, budget: float):
    """(shift, draws) of a vector at a budget; (nan, None) where it was not measured or not reached."""
    vector = paths.find(behavior, layer, method, k)
    if vector is None:
        return math.nan, None
    shift, _, draws = paths.at(vector, math.log(budget))
    return shift, (None if math.isnan(shift) else draws)


def _budget_for(paths, behavior: str, vectors) -> float | None:
    """PLAN.md's fallback: 1.25 where every vector of the contrast reaches it, else 1.05, else None."""
    for budget in (PRIMARY_BUDGET, FALLBACK_BUDGET):
        if all(not math.isnan(shift_at(paths, behavior, *v, budget)[0]) for v in vectors):
            return budget
    return None


def axis_share(store: Path, layer: int = 8, k: int = NARROW_K) -> float:
    """The share of the dense (mean-difference) vector's squared norm held by its k coordinates of
    largest ENR at ``layer``, from the train statistics alone (PLAN.md claim (b))."""
    import numpy as np

    import actstore

    dense = actstore.vectors.build.vector_from_stats(actstore.open_stats(store), layer, None)
    top = np.argsort(-np.asarray(dense.enr), kind="stable")[:k]
    values = np.asarray(dense.vector, dtype=np.float64)
    return float((values[top] ** 2).sum() / (values ** 2).sum())


def primary_family(paths_of: dict, shares: dict) -> list[dict]:
    """P1-P7 with estimate, 95% percentile interval, bootstrap p and Holm over the seven (a
    contrast not testable gets p = 1: it stays in m and is not rejected)."""
    import numpy as np

    from actstore.evaluation.intervals import bootstrap_p_value, holm_adjusted, percentile_interval

    rows = []

    def add(name, claim, behavior, contrast, budget, estimate=math.nan, draws=None, note=""):
        interval = percentile_interval(estimate, draws) if draws is not None else None
        rows.append({"id": name, "claim": claim, "behavior": behavior, "contrast": contrast,
                     "budget": budget, "estimate": estimate,
                     "ci_low": interval.low if interval else math.nan, "ci_high": interval.high if interval else math.nan,
                     "p_value": bootstrap_p_value(draws) if draws is not None else math.nan,
                     "testable": draws is not None and not math.isnan(estimate), "note": note})

    def difference(name, claim, behavior, contrast, a, b):
        paths = paths_of.get(behavior)
        budget = _budget_for(paths, behavior, [a, b]) if paths is not None else None
        if budget is None:
            return add(name, claim, behavior, contrast, math.nan, note="not reached at 1.25 or 1.05 / not run")
        (sa, da), (sb, db) = (shift_at(paths, behavior, *v, budget) for v in (a, b))
        add(name, claim, behavior, contrast, budget, sa - sb, da - db)

    difference("P1", "(a)", "refusal", "S(k=64) - S(dense), layer 8", (8, "enr", "64"), (8, "enr", "dense"))
    difference("P2", "(a)", "morality", "S(k=64) - S(dense), layer 8", (8, "enr", "64"), (8, "enr", "dense"))
    # P3: F(narrow) - F(diffuse), F = S(k=64) / S(dense); the behaviors resampled independently.
    fractions = {}
    for behavior in ("refusal", "morality"):
        paths = paths_of.get(behavior)
        budget = _budget_for(paths, behavior, [(8, "enr", "64"), (8, "enr", "dense")]) if paths else None
        if budget is None:
            continue
        (s64, d64), (sd, dd) = (shift_at(paths, behavior, 8, "enr", k, budget) for k in ("64", "dense"))
        if percentile_interval(sd, dd).excludes(0.0):  # a fraction of noise is not computed
            with np.errstate(all="ignore"):
                fractions[behavior] = (s64 / sd, d64 / dd, budget)
    if len(fractions) == 2 and len(shares) == 2:
        narrow = max(shares, key=shares.get)
        diffuse = min(shares, key=shares.get)
        (fn, dn, bn), (fd, dd, bd) = fractions[narrow], fractions[diffuse]
        add("P3", "(b)", f"{narrow} (narrow) vs {diffuse}", "F(narrow) - F(diffuse), F = S(k=64)/S(dense)",
            max(bn, bd), fn - fd, dn - dd)
    else:
        add("P3", "(b)", "refusal vs morality", "F(narrow) - F(diffuse)", math.nan,
            note="not testable: a dense shift's interval includes zero, or a behavior is missing")
    # P4, P5: argmax over layers 4-10 of S(k=64) minus argmax of S(dense), the argmax redone per resample.
    for name, behavior in (("P4", "refusal"), ("P5", "morality")):
        paths = paths_of.get(behavior)
        best = {}
        for k in ("64", "dense"):
            layers, shifts, draws = [], [], []
            for layer in range(4, 11):
                shift, d = shift_at(paths, behavior, layer, "enr", k, PRIMARY_BUDGET) if paths else (math.nan, None)
                if d is not None:
                    layers.append(layer), shifts.append(shift), draws.append(d)
            if len(layers) >= 2:
                stacked = np.where(np.isfinite(np.stack(draws)), np.stack(draws), -np.inf)
                best[k] = (layers[int(np.argmax(shifts))], np.asarray(layers)[np.argmax(stacked, axis=0)])
        if len(best) == 2:
            add(name, "(c)", behavior, "best layer of k=64 - best layer of dense (layers 4-10)", PRIMARY_BUDGET,
                float(best["64"][0] - best["dense"][0]), (best["64"][1] - best["dense"][1]).astype(float))
        else:
            add(name, "(c)", behavior, "best layer of k=64 - best layer of dense", math.nan,
                note="fewer than two layers reach 1.25 / not run")
    difference("P6", "(d)", "refusal", "S(whitened k=64) - S(ENR k=64), layer 8", (8, "whitened", "64"),
               (8, "enr", "64"))
    difference("P7", "(d)", "morality", "S(whitened k=64) - S(ENR k=64), layer 8", (8, "whitened", "64"),
               (8, "enr", "64"))
    p = [r["p_value"] if r["testable"] else 1.0 for r in rows]
    for row, adjusted in zip(rows, holm_adjusted(p)):
        row["p_holm"] = float(adjusted)
    return rows


def _ci(value, low, high, spec=".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def summary_markdown(results, family: list[dict], shares: dict) -> list[str]:
    from actstore.evaluation.grid import is_control
    from actstore.evaluation.report import count_line

    held = [r for r in family if r["testable"] and r["p_holm"] < 0.05]
    lines = ["## Primary family (PLAN.md §3), Holm-corrected together", "",
             f"m = {len(family)}; {sum(r['testable'] for r in family)} testable; {len(held)} rejected at familywise "
             "0.05. Intervals: 95% percentile bootstrap (2000 resamples of questions and documents per behavior, "
             "every interpolation and choice redone).", "",
             "| # | claim | behavior | contrast | budget | estimate [95% CI] | p | Holm p | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in family:
        lines.append(f"| {r['id']} | {r['claim']} | {r['behavior']} | {r['contrast']} | "
                     f"{'' if math.isnan(r['budget']) else format(r['budget'], 'g')} | "
                     f"{_ci(r['estimate'], r['ci_low'], r['ci_high'])} | {_fmt(r['p_value'])} | {_fmt(r['p_holm'])} | "
                     f"{r['note']} |")
    if shares:
        lines += ["", "Narrow/diffuse (claim (b), from the train statistics alone): share of the layer-8 dense "
                  f"vector's squared norm on its {NARROW_K} coordinates of largest ENR: "
                  + ", ".join(f"{b} {s:.3f}" for b, s in sorted(shares.items())) + "."]
    lines += ["", "## Counts (secondary; Benjamini-Hochberg per behavior, controls a family of their own)", ""]
    for behavior, rows in results.groupby("behavior"):
        vectors = rows[~rows["method"].map(is_control)]
        controls = rows[rows["method"].map(is_control)]
        lines.append(f"- **{behavior}** ({rows['measure'].iloc[0]}, {int(rows['n_questions'].iloc[0])} questions): "
                     f"vectors: {count_line(vectors)}" + (f"; controls: {count_line(controls)}" if len(controls) else "")
                     + ".")
    seconds = results["seconds"].to_numpy(dtype=float)
    lines += ["", "## Cost", "",
              f"{len(results)} configurations; median {float(sorted(seconds)[len(seconds) // 2]):.3g} s each, "
              f"{3600 / seconds.mean():.0f} configurations per hour at the mean ({seconds.sum() / 3600:.2f} h in all).",
              ""]
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2g}"


def time_slice(exe: str, model: str, args, work: Path, log: list[str]) -> str:
    """One refusal configuration after the layer's cache (the second of two alphas): seconds, and the
    plan's hours at that rate."""
    import pandas as pd

    store = capture(exe, model, "refusal", "8", work, log)
    out = work / "slice"
    started = time.perf_counter()
    evaluate(exe, model, "refusal", store, out, "8", "enr", "64", "0.04,0.08", args, log, ("--no-separation",))
    wall = time.perf_counter() - started
    seconds = pd.read_csv(out / "results.csv")["seconds"].to_list()
    per_tier = tier_configurations({t for t, *_ in TIERS})
    hours = ", ".join(f"tier {t}: {n} configurations, {n * seconds[1] / 3600:.2f} h" for t, n in sorted(per_tier.items()))
    return (f"`python studies/sweep_gemma.py --slice` at {git_rev()}\n\nMachine: {machine()}\n\n"
            f"Refusal (83 test questions, both orders), layer 8 ENR k=64, {args.ppl_tokens} perplexity tokens "
            f"from {args.ppl_documents} documents: first configuration (with the layer's cached block outputs) "
            f"{seconds[0]:.1f} s, the next {seconds[1]:.1f} s: **{3600 / seconds[1]:.0f} configurations per hour** "
            f"(refusal; morality's 61 pairs cost less). The whole eval command took {wall:.0f} s (model load, "
            f"baseline, report). At that rate: {hours}; plus one cache per layer and behavior and the captures.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", default="1,2,3,4,5")
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--ppl-documents", type=int, default=32)
    parser.add_argument("--budgets", default="1.05,1.25,2")
    parser.add_argument("--out", default=str(HERE / "results" / "plan"))
    parser.add_argument("--work", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument("--slice", action="store_true", help="time one configuration; write <out>/SLICE.md")
    parser.add_argument("--count", action="store_true", help="print the plan's configurations per tier")
    parser.add_argument("--margin", type=float, default=None, help="eval --margin: the contrasts' stated margin")
    parser.add_argument("--plan-margins", action="store_true",
                        help="each behavior's margin fixed by the amendment of 2026-12-05 (MARGINS)")
    parser.add_argument("--resamples", type=int, default=None, help="eval --resamples (default eval's)")
    parser.add_argument("--exclude-train-overlap", action="store_true",
                        help="eval --exclude-train-overlap: drop test questions found in train.json (another "
                             "setting: a new --out folder)")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild SUMMARY.md from the behaviors' folders already in --out")
    args = parser.parse_args()
    tiers = {int(t) for t in args.tiers.split(",")}
    if args.count:
        counts = tier_configurations(tiers)
        print(", ".join(f"tier {t}: {n}" for t, n in sorted(counts.items())) + f"; {sum(counts.values())} in all")
        return

    import pandas as pd

    from actstore.models.embedded import prepare_demo_model

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
    plan = [t for t in TIERS + HALVES if t[0] in tiers]
    stores: dict[str, Path] = {}
    for tier, behavior, layers, methods, ks, fractions, extra in plan if not args.summary_only else ():
        if behavior not in stores:
            needed = sorted({int(x) for t in plan if t[1] == behavior for x in t[2].split(",")})
            stores[behavior] = capture(exe, model, behavior, ",".join(map(str, needed)), work, log)
        folder = out / (behavior if tier != 6 else f"{behavior}-half-{extra[-1][5]}-2")
        evaluate(exe, model, behavior, stores[behavior], folder, layers, methods, ks, fractions, args, log, extra)
    behaviors = list(dict.fromkeys(t[1] for t in TIERS))
    done = [b for b in behaviors if (out / b / "results.csv").exists()]
    if args.summary_only:
        from actstore.evaluation.intervals import N_RESAMPLES, Analysis
        from actstore.evaluation.ledger import Ledger
        from actstore.evaluation.report import write_report

        for behavior in done:
            write_report(Ledger.open_existing(out / behavior), [float(b) for b in args.budgets.split(",")], None,
                         Analysis(args.margin, args.resamples or N_RESAMPLES))
    shares = {b: axis_share(stores[b]) for b in ("refusal", "morality") if b in stores}
    if not shares and (out / "shares.json").exists():
        shares = json.loads((out / "shares.json").read_text())
    (out / "shares.json").write_text(json.dumps(shares, indent=2))
    family = primary_family({b: load_paths(out / b) for b in done if b in ("refusal", "morality")}, shares)
    pd.DataFrame(family).to_csv(out / "primary.csv", index=False)

    def gather(name: str):
        return pd.concat([pd.read_csv(out / b / name, dtype={"k": str}) for b in done], ignore_index=True)

    results = gather("results.csv")
    gather("frontier.csv").to_csv(out / "frontier.csv", index=False)
    gather("contrasts.csv").to_csv(out / "contrasts.csv", index=False)
    header = (f"# gemma-3-270m: the paper's claims re-tested from PLAN.md\n\nMade by `python studies/sweep_gemma.py "
              f"--tiers {args.tiers} --ppl-tokens {args.ppl_tokens} --ppl-documents {args.ppl_documents} "
              f"--budgets {args.budgets}` at {git_rev()}; behaviors with results: {', '.join(done)}.\n\n"
              f"Machine: {machine()}\n\nCommands run (stores in a temporary folder):\n\n```\n"
              + ("\n".join(log) if log else "(--summary-only: see each behavior's folder)") + "\n```\n\n"
              "Each behavior's folder holds results.md, results.csv, items.csv, windows.csv, frontier.csv, "
              "contrasts.csv (its own default family, secondary), steerability.csv and frontier_<behavior>.png; "
              "primary.csv holds the table below.\n\n")
    (out / "SUMMARY.md").write_text(header + "\n".join(summary_markdown(results, family, shares)))
    (out / "commands.json").write_text(json.dumps(log, indent=2))
    print(f"wrote {out / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()

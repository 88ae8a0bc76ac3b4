"""The paper's claims re-tested on google/gemma-3-270m, from the written plan (studies/results/PLAN.md).

    python studies/sweep_gemma.py [--tiers 1,2,3,4,5,6] [--out studies/results/plan] [--work DIR]
    python studies/sweep_gemma.py --tiers 1,2,3,4,5,6 --plan-margins --resamples 20000 \
        --exclude-train-overlap --behaviors refusal   # the second pass, one behavior's lines
    python studies/sweep_gemma.py --slice      # one configuration timed: the plan's hours
    python studies/sweep_gemma.py --count      # the plan's configurations per tier, nothing run
    python studies/sweep_gemma.py --summary-only [--work DIR]   # the summary of the folders in --out

Per behavior: capture its whole train.json (A/B sets with their option-swapped
twins, at the answer letter; morality's free-text pairs at their last token) at
the layers its tiers use, then `actstore eval` on its whole test.json (A/B:
every question in both answer orders, on log-odds; morality: the per-token
preference), one run per line of :data:`TIERS` (PLAN.md §2), each extending the
behavior's folder; perplexity from --ppl-tokens tokens, one window from each of
--ppl-documents documents of the default corpus. Tiers run in order.

Then SUMMARY.md (:func:`plan_summary.write_summary`): the primary family P1-P7
(PLAN.md §3), computed from the folders' items.csv and windows.csv with one
bootstrap per behavior (--resamples draws) that resamples questions and documents
and redoes every interpolation and every choice, Holm-corrected together (m = 7; a
contrast not testable counts as not rejected), with the amendment of 2026-12-05's
margins (--plan-margins), Monte-Carlo errors, first-segment rule and probability
scale; the random controls per seed, the letter-leak bound and the half sweeps'
widened intervals (:mod:`plan_controls`); the narrow/diffuse axis from the train
statistics; the counts and the cost. <out>/frontier.csv and contrasts.csv hold
every behavior's rows. Every command is printed and recorded; interrupted runs resume.
"""

from __future__ import annotations

import argparse
import json
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
from plan_summary import NARROW_K, write_summary  # noqa: E402  (studies/: this script's folder)

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
# Amendment 10: whitened k=64 in the half sweeps too (its covariance the half's), for P6 and P7 entire.
HALVES = [(6, behavior, "8", method, ks, FULL, ("--train-resample", f"half:{i}/2"))
          for behavior in ("refusal", "morality") for i in (1, 2)
          for method, ks in (("enr", "64,dense"), ("whitened", "64"))]
# Amendment 2026-12-05 (4): margins fixed before the run, on each behavior's own scale.
MARGINS = {"refusal": 0.08, "morality": 0.019, "survival-instinct": 0.08}


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def source(behavior: str) -> Path:
    return SHARED_DATA / ("bias-pairs" if behavior == "morality" else "caa-pairs") / behavior


def is_ab(behavior: str) -> bool:
    return behavior != "morality"


def tier_configurations(tiers, behaviors=None) -> dict[int, int]:
    """Configurations per tier (nothing run), of ``behaviors`` only where given."""
    from actstore.cli.options import KListType
    from actstore.evaluation.grid import Grid

    counts: dict[int, int] = {}
    for tier, behavior, layers, methods, ks, fractions, extra in TIERS + HALVES:
        if tier in tiers and (behaviors is None or behavior in behaviors):
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
         str(args.ppl_documents), "--behavior", behavior, "--out", str(out), *analysis_flags(args, behavior),
         *extra], log)


def analysis_flags(args, behavior: str) -> list[str]:
    """The report's margin and resamples, and the test set kept apart from training (issue 30 §2), as
    `actstore eval` flags; none unless asked (a plan folder measured without them resumes as it was).
    ``--plan-margins``: each behavior's margin of :data:`MARGINS`."""
    margin = MARGINS.get(behavior) if args.plan_margins else args.margin
    flags = [] if margin is None else ["--margin", str(margin)]
    flags += [] if args.resamples is None else ["--resamples", str(args.resamples)]
    return flags + (["--exclude-train-overlap"] if args.exclude_train_overlap else [])


def axis_share(store: Path, layer: int = 8, k: int = NARROW_K) -> float:
    """The share of the dense (mean-difference) vector's squared norm held by its k coordinates of
    largest ENR at ``layer``, from the train statistics alone (PLAN.md claim (b))."""
    import numpy as np

    import actstore

    dense = actstore.vectors.build.vector_from_stats(actstore.open_stats(store), layer, None)
    top = np.argsort(-np.asarray(dense.enr), kind="stable")[:k]
    values = np.asarray(dense.vector, dtype=np.float64)
    return float((values[top] ** 2).sum() / (values ** 2).sum())


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
    hours = ", ".join(f"tier {t}: {n} configurations, {n * seconds[1] / 3600:.2f} h"
                      for t, n in sorted(per_tier.items()))
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
    parser.add_argument("--behaviors", default=None,
                        help="only these behaviors' lines of the plan (comma-separated), e.g. to run two "
                             "behaviors side by side in two processes; the summary still reads every folder")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild SUMMARY.md from the behaviors' folders already in --out")
    args = parser.parse_args()
    tiers = {int(t) for t in args.tiers.split(",")}
    only = args.behaviors.split(",") if args.behaviors else None
    if args.count:
        counts = tier_configurations(tiers, only)
        print(", ".join(f"tier {t}: {n}" for t, n in sorted(counts.items())) + f"; {sum(counts.values())} in all")
        return

    from actstore.evaluation.intervals import N_RESAMPLES
    from actstore.models.embedded import prepare_demo_model

    exe = str(Path(sys.executable).with_name("actstore"))
    model = "" if args.summary_only else str(prepare_demo_model())  # --summary-only reads folders: no model
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
    plan = [t for t in TIERS + HALVES if t[0] in tiers and (only is None or t[1] in only)]
    stores: dict[str, Path] = {}
    for tier, behavior, layers, methods, ks, fractions, extra in plan if not args.summary_only else ():
        if behavior not in stores:
            needed = sorted({int(x) for t in plan if t[1] == behavior for x in t[2].split(",")})
            stores[behavior] = capture(exe, model, behavior, ",".join(map(str, needed)), work, log)
        folder = out / (behavior if tier != 6 else f"{behavior}-half-{extra[-1][5]}-2")
        evaluate(exe, model, behavior, stores[behavior], folder, layers, methods, ks, fractions, args, log, extra)
    behaviors = list(dict.fromkeys(t[1] for t in TIERS))
    done = [b for b in behaviors if (out / b / "results.csv").exists()]
    margins = {b: MARGINS.get(b) if args.plan_margins else args.margin for b in behaviors}
    if args.summary_only:
        stores = {b: work / f"{b}.zarr" for b in behaviors if args.work and (work / f"{b}.zarr").exists()}
        rewrite_reports(out, done, args, margins)
        if (out / "commands.json").exists():  # the commands of the runs that made the folder, kept
            log = json.loads((out / "commands.json").read_text())
    shares = recorded_shares(out, stores)
    written = write_summary(out, done, shares, margins, args.resamples or N_RESAMPLES, summary_header(args, done, log))
    (out / "commands.json").write_text(json.dumps(log, indent=2))
    print(f"wrote {written}")


def recorded_shares(out: Path, stores: dict[str, Path]) -> dict:
    """Claim (b)'s shares from the stores at hand (this run's; under --summary-only, those in --work),
    over those <out>/shares.json recorded (behaviors run by separate processes record one each);
    written back."""
    path = out / "shares.json"
    shares = json.loads(path.read_text()) if path.exists() else {}
    shares.update({b: axis_share(stores[b]) for b in ("refusal", "morality") if b in stores})
    path.write_text(json.dumps(shares, indent=2))
    return shares


def rewrite_reports(out: Path, done: list[str], args, margins: dict) -> None:
    """Each behavior's report rewritten (--summary-only) with its margin and the resamples; the test-set
    note that its eval run wrote (the questions dropped as found in train.json) is kept."""
    from actstore.evaluation.intervals import N_RESAMPLES, Analysis
    from actstore.evaluation.ledger import Ledger
    from actstore.evaluation.report import write_report

    for behavior in done:
        report = out / behavior / "results.md"
        marker = "**Test set.** "
        notes = [line[len(marker):] for line in report.read_text().splitlines()
                 if line.startswith(marker)] if report.exists() else []
        write_report(Ledger.open_existing(out / behavior), [float(b) for b in args.budgets.split(",")], None,
                     Analysis(margins.get(behavior), args.resamples or N_RESAMPLES, notes[0] if notes else None))


def summary_header(args, done: list[str], log: list[str]) -> str:
    flags = " ".join(f for f, on in (("--plan-margins", args.plan_margins),
                                     ("--exclude-train-overlap", args.exclude_train_overlap)) if on)
    flags += f" --resamples {args.resamples}" if args.resamples else ""
    flags += f" --margin {args.margin}" if args.margin is not None and not args.plan_margins else ""
    return (f"# gemma-3-270m: the paper's claims re-tested from PLAN.md\n\nMade by `python studies/sweep_gemma.py "
            f"--tiers {args.tiers} --ppl-tokens {args.ppl_tokens} --ppl-documents {args.ppl_documents} "
            f"--budgets {args.budgets}{' ' + flags if flags else ''}` at {git_rev()}; behaviors with results: "
            f"{', '.join(done)}.\n\nMachine: {machine()}\n\nCommands run (stores in a temporary folder):\n\n```\n"
            + ("\n".join(log) if log else "(none recorded: see each behavior's folder)") + "\n```\n\n"
            "Each behavior's folder holds results.md, results.csv, items.csv, windows.csv, frontier.csv, "
            "contrasts.csv (its own default family, secondary), steerability.csv and frontier_<behavior>.png; "
            "primary.csv holds the primary table below, controls.csv, letter_leak.csv and resampled.csv its "
            "controls (studies/plan_summary.py, plan_controls.py).\n\n")


if __name__ == "__main__":
    main()

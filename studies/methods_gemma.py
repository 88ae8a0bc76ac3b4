"""Every extraction method on google/gemma-3-270m, judged on held-out pairs without generating.

    python studies/methods_gemma.py --behaviors refusal,survival-instinct --layers 2,5,8 \
        --train-pairs 400 [--work DIR] [--out studies/results/methods]

For each behavior: capture the first --train-pairs pairs of train.json and the
whole test.json (A/B sets at the answer letter, as `actstore capture` does by
default), then for every layer x method (enr, whitened, pca, probe, lda) x k
(dense, 64, 16) build the vector from the training store (`actstore extract`)
and project the test store onto it (`actstore project`): AUROC and Cohen's d
separating the test split's pos from its neg texts, each with a 95% bootstrap
interval over pairs. Writes <out>/separation.csv (every row), <out>/SEPARATION.md
(the tables, the commands) and one histogram figure per behavior and layer
(<behavior>-layer<L>/projections.png; the projections themselves are not kept).
The captures resume (--resume), so a run can be repeated cheaply.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # _common: machine, git_rev, the shared data
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

METHODS = ("enr", "whitened", "pca", "probe", "lda")
KS = (None, 64, 16)


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviors", default="refusal,survival-instinct")
    parser.add_argument("--layers", default="2,5,8")
    parser.add_argument("--train-pairs", type=int, default=400)
    parser.add_argument("--work", default=None, help="where stores go (default: <out>/../work-methods, not kept)")
    parser.add_argument("--out", default=str(HERE / "results" / "methods"))
    args = parser.parse_args()

    import pandas as pd

    from actstore.evaluation.monitor import monitor
    from actstore.models.embedded import prepare_demo_model
    from actstore.stats.streaming import group_statistics
    from actstore.stores.group import StoreGroup
    from actstore.vectors.build import LayerMethods

    exe = str(Path(sys.executable).with_name("actstore"))
    model = str(prepare_demo_model())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out.parent / "work-methods")
    work.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in args.layers.split(",")]
    log: list[str] = []
    tables = []
    for behavior in args.behaviors.split(","):
        folder = SHARED_DATA / "caa-pairs" / behavior
        train = work / f"{behavior}-train.json"
        if not train.exists():
            train.write_text(json.dumps(json.loads((folder / "train.json").read_text())[: args.train_pairs]))
        train_store, test_store = work / f"{behavior}.zarr", work / f"{behavior}-test.zarr"
        for data, store in ((train, train_store), (folder / "test.json", test_store)):
            run([exe, "capture", "-q", "--model", model, "--data", str(data), "--layers", args.layers,
                 "--store", str(store), "--resume"], log)
        run([exe, "stats", "-q", "--store", str(train_store)], log)
        log.append(f"# then, for each layer, method and k: actstore extract --store {train_store.name} --layer L "
                   f"--method M [--k K] --out v.safetensors; actstore project --store {test_store.name} "
                   "--vector v.safetensors ... (done in-process below, same library calls)")
        group = StoreGroup.open(train_store)
        stats = group_statistics(group)
        for layer in layers:
            started = time.perf_counter()
            methods = LayerMethods(group, stats, layer)
            vectors = []
            for method in METHODS:
                for k in KS:
                    if method == "whitened" and k is None:
                        continue  # the whitened dense vector is the plain dense vector
                    name = f"{method}-{'dense' if k is None else f'k{k}'}"
                    vectors.append((name, methods.vector(method, k)))
            built = time.perf_counter() - started
            folder = out / f"{behavior}-layer{layer}"
            table = monitor(test_store, vectors, folder, plot=True)
            shutil.rmtree(folder / "projections.zarr")  # regenerable; the repo keeps the table and the figure
            table.insert(0, "behavior", behavior)
            table["build_seconds_layer"] = round(built, 2)
            tables.append(table)
            print(table[["vector", "auroc", "auroc_ci_low", "auroc_ci_high", "cohens_d"]].to_string(), flush=True)
    all_rows = pd.concat(tables, ignore_index=True)
    all_rows.to_csv(out / "separation.csv", index=False)
    baselines = {b: letter_baseline(work / f"{b}-train.json", SHARED_DATA / "caa-pairs" / b / "test.json")
                 for b in args.behaviors.split(",")}
    write_markdown(all_rows, out / "SEPARATION.md", log, args, baselines)


def _letter(text: str) -> str:
    """The answer letter an A/B text ends in, '(X)' -> 'X'."""
    tail = text.rstrip()
    return tail[-2] if tail.endswith(")") and len(tail) >= 3 and tail[-3] == "(" else ""


def letter_baseline(train: Path, test: Path):
    """AUROC and d of a score that knows only the answer letter: 1 when a test text ends in the
    letter most training pos texts end in. A vector that reads the letter, not the behavior,
    separates held-out pairs about this well."""
    from collections import Counter

    from actstore.evaluation.intervals import separation_intervals

    train_pos = Counter(_letter(p["positive"]) for p in json.loads(train.read_text()))
    letter = train_pos.most_common(1)[0][0]
    pairs = json.loads(test.read_text())
    pos = [float(_letter(p["positive"]) == letter) for p in pairs]
    neg = [float(_letter(p["negative"]) == letter) for p in pairs]
    auroc, d = separation_intervals(pos, neg, paired=True)
    return letter, dict(train_pos), auroc, d


def write_markdown(rows, path: Path, log: list[str], args, baselines: dict) -> None:
    lines = ["# Every method on held-out pairs: AUROC and Cohen's d (gemma-3-270m)", "",
             f"Machine: {machine()}. Code: {git_rev()}.", "",
             f"`python studies/methods_gemma.py --behaviors {args.behaviors} --layers {args.layers} "
             f"--train-pairs {args.train_pairs}`", "",
             "Vectors are built from the first train pairs; separation is measured on the whole test split "
             "(never seen by any method), projections h.v/|v| at the vector's layer. Intervals: 95% percentile "
             "bootstrap over test pairs (2000 resamples, seed 0). AUROC 0.5 is chance. **Confound**: the answer "
             "letters are not balanced (more training pos texts end in one letter; the test split has its own mix), "
             "so a vector that reads the letter token rather than the behavior separates held-out pairs as well as "
             "the *letter only* row of each table; only a vector clearly above that row reads more than the letter.",
             ""]
    for (behavior, layer), group in rows.groupby(["behavior", "layer"], sort=False):
        n = f"{int(group['n_pos'].iloc[0])} pairs"
        lines += [f"## {behavior}, layer {layer} ({n})", "", "| vector | AUROC [95% CI] | Cohen's d [95% CI] |",
                  "|---|---|---|"]
        for row in group.to_dict("records"):
            lines.append(f"| {row['vector']} | {row['auroc']:.3f} [{row['auroc_ci_low']:.3f}, "
                         f"{row['auroc_ci_high']:.3f}] | {row['cohens_d']:.2f} [{row['d_ci_low']:.2f}, "
                         f"{row['d_ci_high']:.2f}] |")
        letter, counts, auroc, d = baselines[behavior]
        lines += [f"| *letter only* (1 if the text ends in ({letter}); train pos letters {counts}) | "
                  f"{auroc.estimate:.3f} [{auroc.low:.3f}, {auroc.high:.3f}] | {d.estimate:.2f} [{d.low:.2f}, "
                  f"{d.high:.2f}] |"]
        lines += ["", f"Histograms: `{behavior}-layer{layer}/projections.png`.", ""]
    lines += ["## Commands", "", "```", *log, "```", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

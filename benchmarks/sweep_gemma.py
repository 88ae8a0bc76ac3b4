"""The paper's evaluation on google/gemma-3-270m for every CAA behavior in ../shared/data.

    python benchmarks/sweep_gemma.py [--train-pairs 200] [--test-items 40] [--ppl-tokens 1024]

For each behavior: capture the first --train-pairs pairs of train.json at the
answer letter (--offset 1), then `actstore eval` over layers x k x alpha on the
first --test-items items of test.json and --ppl-tokens of WikiText-2. Results go
to benchmarks/results/<behavior>/; the summary across behaviors (paired t-test
of inflation dense vs sparse) to benchmarks/results/SUMMARY.md. Sizes are chosen
to finish on 2 CPU cores in about half an hour; every command is printed and
recorded. Interrupted runs resume (capture --resume; eval resumes its folder).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA, git_rev, machine  # noqa: E402

BEHAVIORS = ("refusal", "sycophancy", "hallucination", "survival-instinct", "corrigible-neutral-HHH")


def run(args: list[str], log: list[str]) -> None:
    line = " ".join(shlex.quote(a) for a in args)
    print("+", line, flush=True)
    log.append(line)
    subprocess.run(args, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=200)
    parser.add_argument("--test-items", type=int, default=40)
    parser.add_argument("--ppl-tokens", type=int, default=1024)
    parser.add_argument("--layers", default="2,4,6")
    parser.add_argument("--k", default="16,64,dense")
    parser.add_argument("--alpha", default="8,32")
    parser.add_argument("--behaviors", default=",".join(BEHAVIORS))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--work", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument("--normalize", action="store_true",
                        help="pass --normalize to eval: --alpha is then the norm of the added vector")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild SUMMARY.md from the behaviors' results.csv already in --out")
    args = parser.parse_args()

    import pandas as pd

    from actstore.demo import prepare_demo_model
    from actstore.sweep import write_report

    exe = str(Path(sys.executable).with_name("actstore"))
    model = str(prepare_demo_model())
    out = Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="sweep-gemma-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    frames = []
    for behavior in args.behaviors.split(","):
        if args.summary_only:
            if (out / behavior / "results.csv").exists():
                frames.append(pd.read_csv(out / behavior / "results.csv", dtype={"k": str}))
            continue
        source = SHARED_DATA / "caa-pairs" / behavior
        train = work / f"{behavior}-train.json"
        if not train.exists():
            train.write_text(json.dumps(json.loads((source / "train.json").read_text())[: args.train_pairs]))
        store = work / f"{behavior}.zarr"
        run([exe, "capture", "-q", "--model", model, "--data", str(train), "--layers", args.layers,
             "--offset", "1", "--store", str(store), "--resume"], log)
        run([exe, "eval", "-q", "--model", model, "--store", str(store), "--data-test", str(source / "test.json"),
             "--max-items", str(args.test_items), "--layers", args.layers, "--k", args.k, "--alpha", args.alpha,
             "--text", str(SHARED_DATA / "wikitext-2" / "test.txt"), "--ppl-tokens", str(args.ppl_tokens),
             "--behavior", behavior, "--out", str(out / behavior)] + (["--normalize"] if args.normalize else []), log)
        frames.append(pd.read_csv(out / behavior / "results.csv", dtype={"k": str}))
    combined = pd.concat(frames, ignore_index=True)
    combined.to_csv(out / "all_results.csv", index=False)
    write_report(combined, out)
    (out / "results.md").rename(out / "SUMMARY.md")
    behaviors = sorted(set(combined["behavior"]))
    header = (f"Made by `python benchmarks/sweep_gemma.py --train-pairs {args.train_pairs} --test-items "
              f"{args.test_items} --ppl-tokens {args.ppl_tokens} --layers {args.layers} --k {args.k} "
              f"--alpha {args.alpha}{' --normalize' if args.normalize else ''} --out {args.out}` at {git_rev()}; "
              f"behaviors: {', '.join(behaviors)}.\n\n"
              f"Machine: {machine()}\n\nFor each behavior it ran (stores in a temporary folder):\n\n```\n"
              + ("\n".join(log) if log else "(see each behavior's command in this script)") + "\n```\n\n")
    summary = out / "SUMMARY.md"
    summary.write_text(header + summary.read_text())
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()

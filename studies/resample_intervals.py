"""The primary contrasts with the vectors' own sampling noise (issue 30 §2): replicate sweeps, combined.

    # 1. the replicate sweeps: the plan's `actstore eval` command of a behavior, once per resample
    python studies/resample_intervals.py commands --commands studies/results/plan/commands.json \\
        --behavior refusal --specs half:1/2,half:2/2 --out-root benchmarks/results/resample
    # 2. run the printed commands, then combine them (beside the full training set's folder)
    python studies/resample_intervals.py combine benchmarks/results/resample/refusal/half-1-2 \\
        benchmarks/results/resample/refusal/half-2-2 --fixed studies/results/plan/refusal \\
        --contrasts 'sparse_minus_dense=8:enr:64-8:enr:dense@1.25' --out benchmarks/results/resample/refusal

``commands`` prints, for each resample spec, the behavior's `actstore eval` commands of methods
that read only the statistics (enr, random: a sweep with --train-resample refuses the others),
each with ``--train-resample SPEC`` and its own ``--out``. ``combine`` runs
:func:`actstore.evaluation.resampling.combine` (the estimator and its assumptions are in that
module's docstring) and writes resampled_contrasts.csv, resampled_frontier.csv and resampled.md:
each contrast's fixed-vector interval beside the one with the vectors' noise, and the ratio of
their widths. Nothing here is measured by this script itself: it reads sweep folders.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

STATISTICS_ONLY = ("enr", "random")  # the methods whose vectors a resample reaches


def replicate_commands(commands: list[str], behavior: str, specs: list[str], out_root: Path) -> list[str]:
    """The behavior's eval commands of :data:`STATISTICS_ONLY` methods, once per spec with
    ``--train-resample`` and ``--out out_root/behavior/<spec>``."""
    out = []
    for spec in specs:
        folder = out_root / behavior / spec.replace(":", "-").replace("/", "-")
        for line in commands:
            words = shlex.split(line)
            if "eval" not in words or words[words.index("--behavior") + 1] != behavior:
                continue
            methods = words[words.index("--methods") + 1].split(",")
            kept = [m for m in methods if m in STATISTICS_ONLY]
            if not kept:
                continue
            words[words.index("--methods") + 1] = ",".join(kept)
            words[words.index("--out") + 1] = str(folder)
            out.append(shlex.join([*words, "--train-resample", spec]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    commands = sub.add_parser("commands", help="print the replicate sweeps' commands")
    commands.add_argument("--commands", type=Path, required=True, help="a plan's commands.json")
    commands.add_argument("--behavior", required=True)
    commands.add_argument("--specs", required=True, help="comma-separated, e.g. half:1/2,half:2/2")
    commands.add_argument("--out-root", type=Path, required=True)
    combine = sub.add_parser("combine", help="combine replicate folders into widened intervals")
    combine.add_argument("folders", nargs="+", type=Path)
    combine.add_argument("--fixed", type=Path, default=None, help="the sweep on every training pair")
    combine.add_argument("--contrasts", action="append", default=None)
    combine.add_argument("--budgets", default="1.05,1.25,2")
    combine.add_argument("--margin", type=float, default=None)
    combine.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.step == "commands":
        lines = json.loads(args.commands.read_text())
        print("\n".join(replicate_commands(lines, args.behavior, args.specs.split(","), args.out_root)))
        return
    from actstore.evaluation.resampling import combine as combine_folders

    budgets = tuple(float(b) for b in args.budgets.split(","))
    combined = combine_folders(args.folders, args.fixed, budgets, args.contrasts, margin=args.margin)
    path = combined.write(args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()

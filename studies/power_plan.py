"""Sample sizes and power for studies/results/PLAN.md, from the stored sweeps' per-item spreads.

    python studies/power_plan.py [--results benchmarks/results] [--out studies/results/POWER.md]

Reads every <behavior>/items.csv the earlier sweeps wrote (one row per configuration and
test item; ``score`` is P(matching) for A/B sets, the per-token log-likelihood preference
in nats for free-text pairs) and, per configuration, the per-item shift on the scale the
plan uses: log-odds ``logit(score) - logit(base)`` for A/B (P clipped to [1e-6, 1-1e-6]),
the preference difference for free text. It reports:

* the paired SD of one configuration's shifts (its interval is a paired t over items);
* the paired SD of a contrast: sparse minus dense (same layer) at the alpha where each is
  nearest a perplexity budget (results.csv's inflation), the whitened minus plain ENR
  (same k), and layer 8 minus the best other layer (same k), i.e. the plan's contrasts;
* the minimum detectable effect (MDE) at 80% power, two-sided 0.05 and at the Holm-adjusted
  level of the first step of the plan's family of m = 7 primary contrasts (0.05/7):
  (t_{1-a/2,n-1} + t_{0.8,n-1}) SD/sqrt(n), for the plan's n (all test questions);
* the old sweeps' mean contrast at the budget (what effect to expect).

The old sweeps scored each question in one order, with the letter push in the shift; the
plan averages both orders per question, which removes the letter's share of the spread, so
these SDs are upper bounds for the plan's unit (a question).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLAN_N = {"refusal": 83, "morality": 61, "corrigible-neutral-HHH": 70, "survival-instinct": 188, "sycophancy": 4031}
FREE_TEXT = {"morality"}
BUDGET = 1.25
FAMILY = 7  # primary contrasts in PLAN.md, Holm-corrected together
HOLM_FIRST = 0.05 / FAMILY


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def mde(sd: float, n: int, level: float = 0.05, power: float = 0.8) -> float:
    from scipy import stats

    return float((stats.t.ppf(1 - level / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def load(folder: Path):
    items = defaultdict(dict)  # (layer, method, k, alpha) -> {item: score}
    base = {}
    for row in csv.DictReader((folder / "items.csv").open()):
        if row["method"] == "none":
            base[row["item"]] = float(row["score"])
        else:
            items[(int(row["layer"]), row["method"], row["k"], float(row["alpha"]))][row["item"]] = float(row["score"])
    inflation = {}
    for row in csv.DictReader((folder / "results.csv").open()):
        inflation[(int(row["layer"]), row["method"], row["k"], float(row["alpha"]))] = float(row["ppl_inflation"])
    return items, base, inflation


def shifts(scores: dict, base: dict, free_text: bool) -> np.ndarray:
    keys = sorted(base)
    s = np.asarray([scores[k] for k in keys])
    b = np.asarray([base[k] for k in keys])
    return s - b if free_text else logit(s) - logit(b)


def nearest_budget(inflation: dict, layer: int, method: str, k: str) -> tuple | None:
    """The configuration of (layer, method, k) whose inflation is nearest BUDGET from below."""
    within = [(key, v) for key, v in inflation.items() if key[:3] == (layer, method, k) and v <= BUDGET]
    return max(within, key=lambda kv: kv[1])[0] if within else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--out", default=str(HERE / "results" / "POWER.md"))
    args = parser.parse_args()
    lines = ["# Power for PLAN.md, from the stored sweeps' per-item spreads", "",
             "`python studies/power_plan.py` (reads <behavior>/items.csv and results.csv of the earlier sweeps; "
             "see the script's docstring). Shift scale: log-odds for A/B sets, nats/token for morality. "
             f"MDE: minimum detectable effect at 80% power, two-sided, at 0.05 and at 0.05/{FAMILY} (Holm's first "
             f"step of the {FAMILY} primary contrasts), with the plan's n (every test question; old sweeps used "
             "40-60). Contrasts: each vector at the alpha whose inflation is nearest 1.25 from below (old grid: no "
             "interpolation); 'old mean' is the old sweep's mean paired difference, one per layer (2, 5, 8).", ""]
    summary = {}
    for behavior, n_plan in PLAN_N.items():
        folder = Path(args.results) / behavior
        if not (folder / "items.csv").is_file():
            continue
        items, base, inflation = load(folder)
        free = behavior in FREE_TEXT
        single = {key: float(np.std(shifts(v, base, free), ddof=1)) for key, v in items.items()}
        # Configurations that move something (nonzero alpha); their SD spread.
        sds = sorted(single.values())
        contrasts = defaultdict(list)
        layers = sorted({key[0] for key in items})
        for layer in layers:
            dense = nearest_budget(inflation, layer, "enr", "dense")
            for k in ("16", "64"):
                sparse = nearest_budget(inflation, layer, "enr", k)
                if dense and sparse:
                    d = shifts(items[sparse], base, free) - shifts(items[dense], base, free)
                    contrasts[f"(a) k={k} - dense at the budget"].append((float(np.std(d, ddof=1)), float(d.mean())))
                whitened = nearest_budget(inflation, layer, "whitened", k)
                if whitened and sparse:
                    d = shifts(items[whitened], base, free) - shifts(items[sparse], base, free)
                    contrasts[f"(d) whitened - plain ENR, k={k}, at the budget"].append(
                        (float(np.std(d, ddof=1)), float(d.mean())))
        for k in ("64", "dense"):
            chosen = {layer: nearest_budget(inflation, layer, "enr", k) for layer in layers}
            if chosen.get(8):
                for layer in layers:
                    if layer != 8 and chosen.get(layer):
                        d = shifts(items[chosen[8]], base, free) - shifts(items[chosen[layer]], base, free)
                        contrasts[f"(c) layer 8 - layer {layer}, {k}, at the budget"].append(
                            (float(np.std(d, ddof=1)), float(d.mean())))
        n_old = len(base)
        lines += [f"## {behavior} (old sweep: {n_old} items; plan: n = {n_plan})", "",
                  f"| figure | paired SD | old mean (layers) | MDE at 0.05 | MDE at 0.05/{FAMILY} |",
                  "|---|---|---|---|---|"]
        median = statistics.median(sds)
        lines.append(f"| one configuration's shift | {median:.3f} (median; {sds[0]:.3f}-{sds[-1]:.3f} over {len(sds)}) "
                     f"| | {mde(median, n_plan):.3f} | {mde(median, n_plan, HOLM_FIRST):.3f} |")
        summary[behavior] = {"n": n_plan, "single_sd": median}
        for name, values in sorted(contrasts.items()):
            sd = statistics.median(v[0] for v in values)
            means = ", ".join(f"{v[1]:+.3f}" for v in values)
            lines.append(f"| {name} | {sd:.3f} | {means} | {mde(sd, n_plan):.3f} | {mde(sd, n_plan, HOLM_FIRST):.3f} |")
            summary[behavior][name] = sd
        # Effect sizes seen before (the largest and the median |mean shift| near the budget), for scale.
        near = [key for key in items if inflation.get(key, 9) <= BUDGET]
        means = sorted(abs(float(np.mean(shifts(items[key], base, free)))) for key in near)
        if means:
            lines += ["", f"Mean |shift| of the old configurations within inflation {BUDGET}: median "
                          f"{statistics.median(means):.3f}, largest {means[-1]:.3f} ({len(means)} configurations)."]
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

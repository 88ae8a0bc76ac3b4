"""Re-read the gemma-3-270m A/B sweeps with every answer letter weighted equally.

    python benchmarks/letter_balance.py [--results benchmarks/results]

A vector that pushes one answer letter, whatever the question, raises the score of
the test items whose behavior-matching letter it is and lowers the others'. The
plain mean shift then follows how the test items' letters happen to be split
(survival-instinct's first 60 test items: 40 A, 15 B, 5 C). For every configuration
of every A/B sweep folder under --results this recomputes, from items.csv and the
test file's letters, the plain shift and the letter-balanced shift
(:func:`actstore.intervals.stratified_mean_interval`) and the shift on each letter's
items, and writes <results>/LETTERS.md. Nothing is measured again.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SHARED_DATA  # noqa: E402

FOLDERS = {"refusal": "refusal", "corrigible-neutral-HHH": "corrigible-neutral-HHH",
           "survival-instinct": "survival-instinct", "sycophancy": "sycophancy",
           "methods/frontier-survival-instinct": "survival-instinct"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from actstore.evaluate import read_ab_items
    from actstore.intervals import paired_mean_interval, stratified_mean_interval

    results_dir = Path(args.results)
    lines = ["# The A/B sweeps with every answer letter weighted equally", "",
             "`python benchmarks/letter_balance.py` (from the sweeps' items.csv; nothing measured again). "
             "Plain: the mean per-item shift (paired t). Balanced: the mean over matching letters of each "
             "letter's mean shift (Welch t; letters with one item left out). Per letter: the shift on the items "
             "whose behavior-matching answer is that letter. 95% intervals.", ""]
    for folder, behavior in FOLDERS.items():
        path = results_dir / folder
        if not (path / "items.csv").exists():
            continue
        letters = {item.where: item.matching for item in
                   read_ab_items(SHARED_DATA / "caa-pairs" / behavior / "test.json")}
        items = pd.read_csv(path / "items.csv", dtype={"k": str, "item": str})
        results = pd.read_csv(path / "results.csv", dtype={"k": str})
        inflation = {(int(r.layer), r.method, r.k, float(r.alpha)): r.ppl_inflation for r in results.itertuples()}
        base = items[items["method"] == "none"].set_index("item")["score"]
        strata = np.array([letters[i] for i in base.index])
        split = Counter(strata.tolist())
        rows = []
        for (layer, method, k, alpha), group in items[items["method"] != "none"].groupby(
                ["layer", "method", "k", "alpha"], sort=False):
            steered = group.set_index("item")["score"].loc[base.index].to_numpy()
            plain = paired_mean_interval(steered, base.to_numpy())
            balanced, per = stratified_mean_interval(steered, base.to_numpy(), strata)
            rows.append({"layer": int(layer), "method": method, "k": k, "alpha": alpha, "plain": plain,
                         "inflation": inflation.get((int(layer), method, k, float(alpha)), float("nan")),
                         "balanced": balanced, "A": per.get("A"), "B": per.get("B")})
        plain_n = sum(r["plain"].excludes(0) for r in rows)
        balanced_up = sum(r["balanced"].low > 0 for r in rows)
        balanced_down = sum(r["balanced"].high < 0 for r in rows)
        opposite = sum(1 for r in rows if r["A"] is not None and r["B"] is not None
                       and r["A"].excludes(0) and r["B"].excludes(0) and (r["A"].estimate > 0) != (r["B"].estimate > 0))
        lines += [f"## {folder}", "",
                  f"{len(base)} test items, matching letters {dict(sorted(split.items()))}. "
                  f"{len(rows)} configurations: "
                  f"{plain_n} detectable by the plain shift; by the balanced shift **{balanced_up} detectably "
                  f"positive, {balanced_down} detectably negative**; in {opposite} the A items and the B items move "
                  "detectably in opposite directions (a letter preference).", ""]
        top = sorted(rows, key=lambda r: -r["plain"].estimate)[:6]
        lines += ["| layer | method | k | alpha | inflation | plain shift | balanced shift | A items | B items |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in top:
            lines.append(f"| {r['layer']} | {r['method']} | {r['k']} | {r['alpha']:g} | {r['inflation']:.3g} | "
                         f"{r['plain']:.3f} | "
                         f"{r['balanced']:.3f} | {format(r['A'], '.3f') if r['A'] else ''} | "
                         f"{format(r['B'], '.3f') if r['B'] else ''} |")
        usable = [r for r in rows if r["inflation"] <= 2] or rows
        best = max(usable, key=lambda r: r["balanced"].low)
        lines += ["", f"Largest lower bound of a balanced shift within perplexity inflation 2: layer {best['layer']} "
                  f"{best['method']} k={best['k']} alpha {best['alpha']:g} (inflation {best['inflation']:.3g}): "
                  f"{best['balanced']:.3f}.", ""]
    (results_dir / "LETTERS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

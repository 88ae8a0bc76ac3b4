"""What a sweep folder says: the matched-damage frontier, the retained fraction, results.md, plots.

* :func:`frontier`: for each (behavior, layer, method, k) and perplexity budget,
  the configuration with the largest on-target shift whose inflation (point
  estimate) is within the budget; with the fraction of the dense vector's
  frontier shift it keeps at the same budget, and that fraction's paired
  bootstrap interval, only where the dense shift's interval excludes zero.
* :func:`matched_effect`: the mirror figure: the least inflation at which each
  vector reaches a given fraction of the dense vector's best shift.
* :func:`write_report`: frontier.csv, matched_effect.csv, results.md and one
  frontier plot per behavior (shift against inflation, interval bands).

The frontier picks the best of several alphas, so its shift is biased upward
(the winner of several noisy measurements); its interval is that of the chosen
configuration alone. results.md says so.

Plots use matplotlib's object API on an Agg canvas: the process-wide backend
is never switched (notebooks keep their inline plots).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .intervals import ratio_interval, stratum_weights

DEFAULT_MATCH_FRACTIONS = (0.5, 0.9)
X_LIMIT = 100.0  # frontier plots show inflation up to this
GROUP = ["behavior", "layer", "method", "k"]
FRONTIER_COLUMNS = ["behavior", "layer", "method", "k", "budget", "alpha", "on_target_shift", "on_target_ci_low",
                    "on_target_ci_high", "ppl_inflation", "ppl_inflation_ci_low", "ppl_inflation_ci_high",
                    "fraction_of_dense", "fraction_ci_low", "fraction_ci_high"]
MATCHED_COLUMNS = ["behavior", "layer", "method", "k", "target_fraction", "target_shift", "alpha",
                   "on_target_shift", "on_target_ci_low", "on_target_ci_high", "ppl_inflation",
                   "ppl_inflation_ci_low", "ppl_inflation_ci_high"]


def _k_order(k: str) -> float:
    return math.inf if k == "dense" else float(k)


def _item_scores(items, row) -> np.ndarray:
    sel = items[(items["method"] == row["method"]) & (items["k"] == str(row["k"]))
                & (items["alpha"] == float(row["alpha"])) & (items["layer"] == float(row["layer"]))]
    return sel["score"].to_numpy(dtype=np.float64)


def _baseline_scores(items) -> np.ndarray:
    return items[items["method"] == "none"]["score"].to_numpy(dtype=np.float64)


def shift_view(results, letters_known: bool = True):
    """``results`` as the frontier reads them: for A/B items (results with the
    letter-balanced columns filled), the shift, its interval and ``detectable`` are the
    letter-balanced ones (:func:`actstore.intervals.stratified_mean_interval`), since a
    vector that prefers one answer letter moves the plain mean by how the letters are
    split; otherwise (or unless ``letters_known``: the items' letters, which its bootstrap
    weights need, were recorded) the plain columns. ``view.attrs["measure"]`` says which."""
    if (letters_known and len(results) and "balanced_shift" in results
            and results["balanced_shift"].notna().all()):
        view = results.copy()
        view["on_target_shift"] = results["balanced_shift"]
        view["on_target_ci_low"] = results["balanced_ci_low"]
        view["on_target_ci_high"] = results["balanced_ci_high"]
        view["detectable"] = results["balanced_detectable"].astype(bool)
        view.attrs["measure"] = "letter-balanced"
        return view
    view = results.copy(deep=False)  # the caller's frame keeps its attrs
    view.attrs["measure"] = "plain"
    return view


def frontier(results, budgets, items=None, weights=None):
    """frontier.csv as a DataFrame (columns :data:`FRONTIER_COLUMNS`); a budget no
    configuration of a vector meets gives a row of NaN (not reachable).

    ``weights``: per-item weights of the shifts (:func:`actstore.intervals.stratum_weights`
    for the letter-balanced view, :func:`shift_view`).
    ``items``: items.csv (for the fraction's interval); without it the fraction
    columns stay NaN.
    """
    import pandas as pd

    rows = []
    for key, group in results.groupby(GROUP, sort=False):
        for budget in budgets:
            within = group[group["ppl_inflation"] <= budget]
            entry = dict(zip(GROUP, key), budget=float(budget))
            if len(within):
                best = within.loc[within["on_target_shift"].idxmax()]
                entry.update({c: best[c] for c in FRONTIER_COLUMNS if c in best.index and c not in entry})
            rows.append(entry)
    table = pd.DataFrame(rows, columns=FRONTIER_COLUMNS)
    # The yardstick is the dense difference of means ("enr" dense; the whitened dense vector is
    # the same and is measured as enr when both run); without it, a method's own dense vector.
    dense = table[table["k"] == "dense"].set_index(["behavior", "layer", "budget", "method"])
    base = _baseline_scores(items) if items is not None else None
    for index, row in table.iterrows():
        ref = _reference(dense, (row["behavior"], row["layer"], row["budget"]), row["method"])
        if ref is None or pd.isna(row["alpha"]) or (row["k"] == "dense" and ref.name[-1] == row["method"]):
            continue
        if pd.isna(ref["alpha"]) or not (ref["on_target_ci_low"] > 0):
            continue  # the dense vector has no detectable positive effect within this budget
        if base is None:
            continue
        sparse_scores = _item_scores(items, row)
        dense_scores = _item_scores(items, {"layer": row["layer"], "method": ref.name[-1], "k": "dense",
                                            "alpha": ref["alpha"]})
        interval = ratio_interval(sparse_scores, dense_scores, base, weights=weights)
        table.loc[index, ["fraction_of_dense", "fraction_ci_low", "fraction_ci_high"]] = (
            interval.estimate, interval.low, interval.high)
    return table


REFERENCE_METHODS = ("enr", "whitened")


def _reference(dense, key: tuple, method: str):
    """The dense row that a vector of ``method`` at ``key`` (behavior, layer, budget) is compared with."""
    for candidate in (*REFERENCE_METHODS, method):
        if (*key, candidate) in dense.index:
            return dense.loc[(*key, candidate)]
    return None


def matched_effect(results, fractions=DEFAULT_MATCH_FRACTIONS):
    """For each vector and fraction f: the least-inflation configuration whose
    shift reaches f x the dense vector's best shift at that (behavior, layer),
    where that best shift's interval excludes zero (else no row)."""
    import pandas as pd

    rows = []
    for (behavior, layer), group in results.groupby(["behavior", "layer"], sort=False):
        dense = group[group["k"] == "dense"]
        preferred = [m for m in REFERENCE_METHODS if m in set(dense["method"])]
        dense = dense[dense["method"] == preferred[0]] if preferred else dense
        if not len(dense):
            continue
        best = dense.loc[dense["on_target_shift"].idxmax()]
        if not best["on_target_ci_low"] > 0:
            continue
        for (method, k), vector_rows in group.groupby(["method", "k"], sort=False):
            for fraction in fractions:
                target = fraction * best["on_target_shift"]
                reached = vector_rows[vector_rows["on_target_shift"] >= target]
                entry = {"behavior": behavior, "layer": layer, "method": method, "k": k,
                         "target_fraction": fraction, "target_shift": target}
                if len(reached):
                    pick = reached.loc[reached["ppl_inflation"].idxmin()]
                    entry.update({c: pick[c] for c in MATCHED_COLUMNS if c not in entry})
                rows.append(entry)
    return pd.DataFrame(rows, columns=MATCHED_COLUMNS)


def _fmt(value, spec=".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def _ci(row, prefix: str, spec=".3g") -> str:
    """``estimate [low, high]`` of ``prefix``: its ``_shift`` column where there is one
    (``on_target`` is the steered score itself, ``on_target_shift`` the effect), else ``prefix``."""
    return (f"{_fmt(row[prefix + '_shift' if prefix + '_shift' in row else prefix], spec)} "
            f"[{_fmt(row[prefix + '_ci_low'], spec)}, {_fmt(row[prefix + '_ci_high'], spec)}]")


def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cells) + " |" for cells in lines])


def plot_frontier(results, behavior: str, budgets, path: Path) -> Path:
    """Shift against perplexity inflation (log x), one panel per layer, one curve
    per vector (method, k) through its alphas, with the shift's interval as a band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullLocator

    rows = results[results["behavior"] == behavior]
    layers = sorted(rows["layer"].unique())
    vectors = sorted({(m, k) for m, k in zip(rows["method"], rows["k"])}, key=lambda v: (v[0], _k_order(v[1])))
    columns = min(len(layers), 4)
    lines = math.ceil(len(layers) / columns)
    fig = Figure(figsize=(max(3.6 * columns + 1.2, 7.5), 3.2 * lines + 1.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, columns, sharey=True, squeeze=False).ravel()
    colors = {v: f"C{i}" for i, v in enumerate(vectors)}
    for ax, layer in zip(axes, layers):
        at_layer = rows[rows["layer"] == layer]
        for vector in vectors:
            curve = at_layer[(at_layer["method"] == vector[0]) & (at_layer["k"] == vector[1])]
            curve = curve.sort_values("ppl_inflation")
            if not len(curve):
                continue
            several = rows["method"].nunique() > 1
            label = ("dense" if vector[1] == "dense" else f"k={vector[1]}") + (f" ({vector[0]})" if several else "")
            ax.plot(curve["ppl_inflation"], curve["on_target_shift"], marker="o", markersize=3,
                    color=colors[vector], label=label, linewidth=1.2)
            ax.fill_between(curve["ppl_inflation"], curve["on_target_ci_low"], curve["on_target_ci_high"],
                            color=colors[vector], alpha=0.15, linewidth=0)
        for budget in budgets:
            ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xscale("log")
        # A broken model (inflation 1e5) would squeeze the budgets' region into a sliver.
        beyond = int((at_layer["ppl_inflation"] > X_LIMIT).sum())
        ax.set_xlim(min(0.98, float(at_layer["ppl_inflation"].min()) * 0.98),
                    min(X_LIMIT, max(float(at_layer["ppl_inflation"].max()) * 1.1, max(budgets) * 1.2)))
        low, high = ax.get_xlim()
        ticks = (1, 1.25, 1.5, 2, 3) if high < 4 else (1, 2, 5, 10, 20, 50, 100)  # labels that do not collide
        ax.set_xticks([t for t in ticks if low <= t <= high])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        ax.xaxis.set_minor_locator(NullLocator())
        if beyond:
            ax.text(0.98, 0.02, f"{beyond} point(s) beyond {X_LIMIT:g}x not shown", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="grey")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("perplexity inflation (steered / base)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    balanced = results.attrs.get("measure") == "letter-balanced"
    axes[0].set_ylabel(f"on-target shift{', letter-balanced' if balanced else ''} (95% CI band)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{behavior}: on-target shift against off-target damage\n(dotted: perplexity budgets "
                 f"{', '.join(f'{b:g}x' for b in budgets)})", fontsize=10)
    fig.set_layout_engine("constrained")
    fig.savefig(path, dpi=110)
    return path


def _letter_lines(results) -> list[str]:
    """For A/B items: the shift with every behavior-matching letter weighted equally, beside the plain one."""
    if "balanced_shift" not in results or not results["balanced_shift"].notna().any():
        return []
    plain = results["detectable"].astype(bool)
    balanced = results["balanced_detectable"].fillna(False).astype(bool)
    lines = ["## Answer letters: the shift with each matching letter weighted equally", "",
             "A vector that pushes one answer letter, whatever the question, raises the score of the items whose "
             "matching letter it is and lowers the others'; the plain mean shift then follows how the test "
             "items' letters happen to be split. The balanced shift (mean over letters of each letter's mean "
             "shift, Welch t interval; results.csv columns balanced_*) does not, and the frontier, the matched "
             "effect and the counts above use it.", "",
             f"{int(plain.sum())} of {len(results)} configurations have a detectable plain shift; "
             f"{int(balanced.sum())} a detectable balanced shift; {int((plain & ~balanced).sum())} are detectable "
             "only in the plain one."]
    suspect = results[plain & ~balanced]
    if len(suspect):
        lines += ["", "**Read those with care: their plain shift may be a letter preference, not the behavior.** "
                  "For example:"]
        for row in suspect.sort_values("on_target_shift", ascending=False).head(5).to_dict("records"):
            lines.append(f"- layer {row['layer']} {row['method']} k={row['k']} alpha {row['alpha']:.4g}: plain "
                         f"{_ci(row, 'on_target')}, balanced {_ci(row, 'balanced')}")
    return lines + [""]


def _detectable_lines(results) -> list[str]:
    lines = []
    detectable = results[results["detectable"].astype(bool)]
    n = len(results)
    lines.append(f"{len(detectable)} of {n} configurations have an on-target shift whose 95% interval excludes "
                 "zero" + (":" if len(detectable) else "."))
    for row in detectable.sort_values("on_target_shift", ascending=False).head(12).to_dict("records"):
        lines.append(f"- layer {row['layer']} {row['method']} k={row['k']} alpha {row['alpha']:.4g}: "
                     f"shift {_ci(row, 'on_target')}, inflation {_ci(row, 'ppl_inflation')}")
    if len(detectable) > 12:
        lines.append(f"- ... and {len(detectable) - 12} more (results.csv, column detectable)")
    half = (results["on_target_ci_high"] - results["on_target_ci_low"]) / 2
    if n and (half.min() > results["on_target_shift"].abs().max()):
        lines.append("")
        lines.append(f"**Warning: too few items to tell.** Every interval is wider (half-width >= "
                     f"{half.min():.3g}) than every measured effect (largest |shift| "
                     f"{results['on_target_shift'].abs().max():.3g}): use more test items.")
    return lines


def plot_separation(rows, path: Path) -> Path:
    """AUROC with its interval for every vector, one panel per layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = sorted(rows["layer"].unique())
    fig = Figure(figsize=(3.4 * len(layers) + 0.8, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False).ravel()
    for ax, layer in zip(axes, layers):
        at = rows[rows["layer"] == layer]
        at = at.iloc[sorted(range(len(at)), key=lambda i: (at["method"].iloc[i], _k_order(str(at["k"].iloc[i]))))]
        labels = [f"{m} {k}" for m, k in zip(at["method"], at["k"])]
        y = np.arange(len(at))
        ax.errorbar(at["auroc"], y, xerr=[at["auroc"] - at["auroc_ci_low"], at["auroc_ci_high"] - at["auroc"]],
                    fmt="o", markersize=4, capsize=2, color="C0")
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("held-out AUROC (95% CI)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(results, ledger, budgets, match_fractions=DEFAULT_MATCH_FRACTIONS) -> Path:
    """frontier.csv, matched_effect.csv, results.md and frontier_<behavior>.png in the ledger's folder."""
    out_dir = Path(ledger.out_dir)
    if not len(results):
        return out_dir
    items = ledger.items()
    baseline = ledger.baseline
    plain = results
    # A folder from before the letters were recorded in baseline.json stays on the plain shift.
    results = shift_view(plain, letters_known="strata" in baseline)
    balanced = results.attrs["measure"] == "letter-balanced"
    weights = stratum_weights(baseline["strata"]) if balanced else None
    table = frontier(results, budgets, items, weights)
    table.insert(len(table.columns), "measure", results.attrs["measure"])
    table.to_csv(out_dir / "frontier.csv", index=False)
    mirror = matched_effect(results, match_fractions)
    mirror.to_csv(out_dir / "matched_effect.csv", index=False)
    lines = ["# Steering sweep", "",
             f"Protocol {baseline['settings']['protocol']!r} on {baseline['settings']['items']} held-out items; "
             f"perplexity on {baseline['settings']['ppl_tokens']} tokens; alpha is "
             + {"fraction": "the added norm as a fraction of the layer's residual norm",
                "norm": "the added norm", "scale": "the scale of each vector"}[baseline["settings"]["alpha_mode"]]
             + (f"; steered positions: {baseline['settings']['positions']}"
                if "positions" in baseline["settings"] else "")
             + f". Unsteered: on-target {baseline['on_target']:.4g}, "
             f"perplexity {baseline['ppl']:.4g}. Every interval is 95%: shifts are paired over items (t), "
             f"inflation paired over {baseline['settings'].get('ppl_window', 256)}-token windows (bootstrap)."
             + (" The shifts below are **letter-balanced** (every behavior-matching answer letter weighs the same; "
                "see 'Answer letters')." if balanced else ""), ""]
    lines += ["## Which configurations move the behavior", ""] + _detectable_lines(results) + [""]
    lines += _letter_lines(plain)
    lines += ["## Frontier: the largest shift within each perplexity budget", "",
              "The best of several alphas is biased upward (the winner of several noisy measurements); each "
              "interval is that of the chosen configuration. The fraction of the dense shift kept at the same "
              "budget is given only where the dense shift's interval excludes zero (paired bootstrap over "
              "items).", ""]
    cells = []
    for row in table.sort_values(["behavior", "layer", "method", "budget"], kind="stable").to_dict("records"):
        reachable = not (isinstance(row["alpha"], float) and math.isnan(row["alpha"]))
        cells.append([str(row["behavior"]), str(row["layer"]), str(row["method"]), str(row["k"]),
                      f"{row['budget']:g}", _fmt(row["alpha"], ".4g") if reachable else "none within budget",
                      _ci(row, "on_target") if reachable else "", _ci(row, "ppl_inflation") if reachable else "",
                      (f"{_fmt(row['fraction_of_dense'])} [{_fmt(row['fraction_ci_low'])}, "
                       f"{_fmt(row['fraction_ci_high'])}]") if not math.isnan(row["fraction_of_dense"])
                      else ("dense: no detectable effect" if row["k"] != "dense" and reachable else "")])
    lines += _md_table(["behavior", "layer", "method", "k", "budget", "alpha", "shift [95% CI]",
                        "inflation [95% CI]", "fraction of dense [95% CI]"], cells) + [""]
    lines += ["## Matched effect: least inflation reaching a fraction of the dense vector's best shift", ""]
    if len(mirror):
        lines += _md_table(["behavior", "layer", "method", "k", "target", "alpha", "shift [95% CI]",
                            "inflation [95% CI]"],
                           [[str(r["behavior"]), str(r["layer"]), str(r["method"]), str(r["k"]),
                             f"{r['target_fraction']:g} x dense = {r['target_shift']:.3g}",
                             _fmt(r["alpha"], ".4g") if not math.isnan(r["alpha"]) else "not reached",
                             _ci(r, "on_target") if not math.isnan(r["alpha"]) else "",
                             _ci(r, "ppl_inflation") if not math.isnan(r["alpha"]) else ""]
                            for r in mirror.to_dict("records")])
    else:
        lines.append("No dense vector has a best shift whose interval excludes zero: nothing to match.")
    if "distinct_2_shift" in results and results["distinct_2_shift"].notna().any():
        lines += ["", "## Degeneration of the generations (paired over prompts)", ""]
        lines += _md_table(["layer", "method", "k", "alpha", "distinct-2 shift [95% CI]",
                            "repeated 3-gram rate shift [95% CI]"],
                           [[str(r["layer"]), str(r["method"]), str(r["k"]), f"{r['alpha']:.4g}",
                             _ci(r, "distinct_2"), _ci(r, "repeated_3gram")] for r in results.to_dict("records")])
    separation = ledger.separation()
    if separation is not None and len(separation):
        lines += ["", "## Separation of held-out pairs (no generation)", "",
                  "Projections h.v/|v| of the held-out pos and neg texts onto each vector at its layer: AUROC "
                  "(0.5 is chance) and Cohen's d, 95% bootstrap intervals over pairs. A sparse vector that keeps "
                  "the dense one's separation keeps what tells the classes apart.", ""]
        lines += _md_table(["layer", "method", "k", "AUROC [95% CI]", "Cohen's d [95% CI]", "n pos + neg"],
                           [[str(r["layer"]), str(r["method"]), str(r["k"]),
                             f"{r['auroc']:.3f} [{r['auroc_ci_low']:.3f}, {r['auroc_ci_high']:.3f}]",
                             f"{r['cohens_d']:.2f} [{r['d_ci_low']:.2f}, {r['d_ci_high']:.2f}]",
                             f"{int(r['n_pos'])} + {int(r['n_neg'])}"]
                            for r in separation.sort_values(["layer", "method", "k"], kind="stable")
                            .to_dict("records")])
        for behavior in separation["behavior"].unique():
            plot_separation(separation[separation["behavior"] == behavior],
                            out_dir / f"separation_{behavior}.png")
    seconds = results["seconds"].to_numpy(dtype=float)
    lines += ["", "## Cost", "",
              f"{len(results)} configurations, median {np.median(seconds):.3g} s each "
              f"({3600 / np.mean(seconds):.0f} configurations per hour at the mean, {seconds.sum():.0f} s in all; "
              "the first configuration at each layer includes computing that layer's cached block outputs).", ""]
    for behavior in sorted(results["behavior"].unique()):
        name = f"frontier_{behavior}.png"
        plot_frontier(results, behavior, budgets, out_dir / name)
        lines += [f"![{behavior} frontier]({name})", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path

"""The sweep folder's plots: the interpolated frontier with its bands, the separation bars.

matplotlib's object API on an Agg canvas: the process-wide backend is never switched
(notebooks keep their inline plots). Each PNG is rendered in memory and replaced whole.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..vectors.info import parse_k
from .files import replace_file
from .frontier import _k_order
from .grid import is_control, is_prompt
from .paths import Paths

X_LIMIT = 100.0  # frontier plots show inflation up to this
CURVE_POINTS = 40


def plot_frontier(paths: Paths, behavior: str, budgets, path: Path) -> Path:
    """Shift (primary measure) against perplexity inflation (log x), one panel per layer, one
    interpolated curve per vector with its bootstrap band (95%), measured points marked (a
    vector that never inflates perplexity has its points only); the prompting baseline, which
    has no alpha, a star in every panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vectors = [v for v in paths.index if v[0] == behavior]
    layers = sorted({int(v[1]) for v in vectors})
    kinds = sorted({(v[2], v[3]) for v in vectors}, key=lambda v: (is_control(v[0]), v[0], _k_order(v[1])))
    colors = {v: f"C{i % 10}" for i, v in enumerate(kinds)}
    columns_ = min(len(layers), 4)
    lines_ = math.ceil(len(layers) / columns_)
    fig = Figure(figsize=(max(3.6 * columns_ + 1.2, 7.5), 3.2 * lines_ + 1.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines_, columns_, sharey=True, squeeze=False).ravel()
    several = len({v[2] for v in vectors}) > 1
    for ax, layer in zip(axes, layers):
        top = 1.0
        for kind in kinds:
            if (behavior, layer, *kind) in paths.index:
                label = (kind[1] if parse_k(kind[1]) is None else f"k={kind[1]}") + (f" ({kind[0]})" if several else "")
                top = max(top, _draw_vector(ax, paths, (behavior, layer, *kind), colors[kind], label))
        top = max(top, _draw_prompt(ax, paths, behavior))
        _frontier_axis(ax, layer, budgets, top)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    scale = "log-odds shift" if paths.evidence.measure == "logodds" else "on-target shift"
    axes[0].set_ylabel(f"{scale} (95% band)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{behavior}: on-target shift against off-target damage, interpolated along each vector's "
                 f"alphas\n(dotted verticals: budgets {', '.join(f'{b:g}x' for b in budgets)}; dotted curves: "
                 "controls)", fontsize=10)
    fig.set_layout_engine("constrained")
    return _save(fig, path)


def _draw_vector(ax, paths: Paths, vector: tuple, color: str, label: str) -> float:
    """One vector's measured points and, where it inflates perplexity, its interpolated curve with the
    bootstrap band; returns its largest measured inflation."""
    rows = paths.index[vector]
    measured = np.exp(paths.log_inflation[rows])
    ax.plot(measured, paths.shift[rows], "o", markersize=3, color=color, label=label)
    high = float(np.log(min(measured.max(), X_LIMIT)))
    if high <= 0:
        return float(measured.max())  # never more damage than the unsteered model: no path to interpolate along
    grid = np.linspace(high / CURVE_POINTS, high, CURVE_POINTS)
    curve, band = [], []
    for x in grid:
        shift, _, draws = paths.at(vector, float(x))
        curve.append(shift)
        finite = draws[np.isfinite(draws)]
        band.append(np.percentile(finite, [2.5, 97.5]) if finite.size else (np.nan, np.nan))
    band = np.asarray(band)
    ax.plot(np.exp(np.r_[0, grid]), np.r_[0, curve], color=color, linewidth=1.2,
            linestyle=":" if is_control(vector[2]) else "-")
    ax.fill_between(np.exp(grid), band[:, 0], band[:, 1], color=color, alpha=0.12, linewidth=0)
    return float(measured.max())


def _draw_prompt(ax, paths: Paths, behavior: str) -> float:
    """The prompting baseline's point (its inflation read with the instruction before each window);
    returns its inflation (1 where there is none)."""
    results = paths.evidence.results
    rows = np.flatnonzero(((results["behavior"] == behavior) & results["method"].map(is_prompt)).to_numpy())
    inflation = np.exp(paths.log_inflation[rows])
    for x, y in zip(inflation, paths.shift[rows]):
        ax.plot([x], [y], "*", markersize=8, color="black", label="prompt (no alpha)")
    return float(inflation.max()) if rows.size else 1.0


def _frontier_axis(ax, layer: int, budgets, top: float) -> None:
    """A layer's panel: the budgets as dotted verticals, log x up to the largest inflation shown."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    for budget in budgets:
        ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlim(0.98, min(X_LIMIT, max(top * 1.1, max(budgets) * 1.2)))
    low, high = ax.get_xlim()
    ticks = (1, 1.25, 1.5, 2, 3) if high < 4 else (1, 2, 5, 10, 20, 50, 100)  # labels that do not collide
    ax.set_xticks([t for t in ticks if low <= t <= high])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_title(f"layer {layer}", fontsize=9)
    ax.set_xlabel("perplexity inflation (steered / base)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)


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
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """The figure as PNG, replaced whole (:func:`~actstore.evaluation.files.replace_file`)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    replace_file(path, png.getvalue())
    return Path(path)

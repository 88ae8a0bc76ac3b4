"""Sweeps over layer, k and alpha: on-target shift against perplexity inflation.

:func:`run_sweep` builds each vector from the store's cached statistics, steers
the model with it, and measures

* ``on_target_shift``: mean A/B score (see :func:`actstore.evaluate.ab_scores`)
  steered minus unsteered, or a user scorer's mean score on generations;
* ``ppl_inflation``: perplexity steered / unsteered on a text sample.

Each finished configuration is appended to ``results.csv`` at once, so an
interrupted sweep resumes from what it has. Then ``results.md`` (tables and the
summary) and two plots are written.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .covariance import layer_covariance
from .errors import ActstoreError
from .evaluate import ABItem, ab_scores, generate, perplexity
from .models import LoadedModel
from .stats import compute_stats
from .steering import steer
from .vectors import vector_from_stats, whitened_vector

METHODS = ("enr", "whitened")
COLUMNS = ["behavior", "model", "layer", "k", "alpha", "method", "on_target", "on_target_base",
           "on_target_shift", "ppl", "ppl_base", "ppl_inflation", "n_items", "ppl_tokens", "vector_norm",
           "added_norm"]


def parse_ks(spec: str | Sequence) -> list[int | None]:
    """``"8,16,dense"`` -> ``[8, 16, None]`` (None: the dense vector)."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    ks: list[int | None] = []
    for part in parts:
        text = str(part).strip().lower()
        if text in ("dense", "none"):
            ks.append(None)
            continue
        try:
            ks.append(int(text))
        except ValueError:
            raise ActstoreError(f"--k {spec!r}: expected integers and 'dense', e.g. '8,16,64,dense'") from None
    return ks


def parse_floats(spec: str | Sequence, name: str) -> list[float]:
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        values = [float(p) for p in parts if str(p).strip()]
    except ValueError:
        raise ActstoreError(f"{name} {spec!r}: expected comma-separated numbers") from None
    if not values or not all(np.isfinite(values)):
        raise ActstoreError(f"{name} {spec!r}: expected finite numbers")
    return values


@dataclass
class Measurement:
    on_target: float
    ppl: float


def _measure(loaded: LoadedModel, items, ppl_ids, scorer, prompts, batch_size) -> Measurement:
    if scorer is not None:
        texts = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=40)
        on_target = float(np.mean(scorer(texts)))
    else:
        on_target = float(np.mean(ab_scores(loaded.model, loaded.tokenizer, items, batch_size)))
    return Measurement(on_target, perplexity(loaded.model, loaded.tokenizer, ppl_ids))


def _k_label(k: int | None) -> str:
    return "dense" if k is None else str(int(k))


def run_sweep(
    loaded: LoadedModel,
    store: str | Path,
    out_dir: str | Path,
    *,
    items: Sequence[ABItem] = (),
    ppl_ids: Sequence[int],
    layers: Sequence[int],
    ks: Sequence[int | None],
    alphas: Sequence[float],
    methods: Sequence[str] = ("enr",),
    behavior: str = "behavior",
    normalize: bool = False,
    scorer: Callable[[list[str]], Sequence[float]] | None = None,
    prompts: Sequence[str] = (),
    model_group: str | None = None,
    batch_size: int = 8,
    scheduler: str | None = None,
    progress: bool = True,
):
    """Measure every (layer, method, k, alpha) and write results into ``out_dir``.

    ``methods``: ``"enr"`` (top-k by ENR) and/or ``"whitened"`` (top-k by ENR
    in the whitened basis, :func:`actstore.vectors.whitened_vector`).
    ``normalize=True`` makes ``alpha`` the norm of what is added (each vector
    scaled to unit norm first), so sparse and dense vectors are compared at
    equal intervention size rather than at equal scale. ``scheduler`` runs any
    statistics or covariance still to compute (:func:`actstore.stats.scheduler_context`).

    Returns the results as a :class:`pandas.DataFrame` (one row per
    configuration; columns :data:`COLUMNS`).
    """
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scorer is None and not items:
        raise ActstoreError("no A/B items to evaluate (and no scorer)")
    stats = compute_stats(store, model_group, scheduler=scheduler)
    results_csv = out_dir / "results.csv"
    done = pd.read_csv(results_csv, dtype={"k": str}) if results_csv.exists() else pd.DataFrame(columns=COLUMNS)
    done_keys = {(int(r.layer), str(r.k), float(r.alpha), str(r.method)) for r in done.itertuples()}

    settings = {"n_items": len(items) if scorer is None else len(prompts), "ppl_tokens": len(ppl_ids),
                "scorer": getattr(scorer, "__name__", None) if scorer else "ab", "normalize": normalize}
    baseline_file = out_dir / "baseline.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.exists() else None
    if baseline is not None:
        baseline["settings"].setdefault("normalize", False)  # folders written before --normalize existed
    if baseline is None or baseline.get("settings") != settings:
        if len(done):
            raise ActstoreError(
                f"{str(out_dir)!r} holds results of another setting ({baseline and baseline.get('settings')}); "
                "use a new --out folder"
            )
        base = _measure(loaded, items, ppl_ids, scorer, prompts, batch_size)
        baseline = {"on_target": base.on_target, "ppl": base.ppl, "settings": settings}
        baseline_file.write_text(json.dumps(baseline, indent=2))

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ActstoreError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    todo = [(layer, method, k, alpha) for layer in layers for method in methods for k in ks for alpha in alphas
            if (layer, _k_label(k), float(alpha), method) not in done_keys]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {behavior}", unit="config")
    vectors, covariances = {}, {}
    try:
        for layer, method, k, alpha in todo:
            if (layer, method, k) not in vectors:
                if method == "whitened":
                    if layer not in covariances:
                        covariances[layer] = layer_covariance(store, layer, model_group, scheduler=scheduler)
                    vectors[layer, method, k] = whitened_vector(stats, covariances[layer], k)
                else:
                    vectors[layer, method, k] = vector_from_stats(stats, layer, k)
            vector = vectors[layer, method, k]
            norm = float(np.linalg.norm(vector.vector))
            scale = alpha / norm if normalize and norm > 0 else alpha
            with steer(loaded, vector, scale):
                measured = _measure(loaded, items, ppl_ids, scorer, prompts, batch_size)
            row = {
                "behavior": behavior, "model": loaded.model_id, "layer": layer, "k": _k_label(k),
                "alpha": float(alpha), "method": method, "on_target": measured.on_target,
                "on_target_base": baseline["on_target"], "on_target_shift": measured.on_target - baseline["on_target"],
                "ppl": measured.ppl, "ppl_base": baseline["ppl"], "ppl_inflation": measured.ppl / baseline["ppl"],
                "n_items": settings["n_items"], "ppl_tokens": len(ppl_ids),
                "vector_norm": norm, "added_norm": abs(scale) * norm,
            }
            # Appended at once: an interrupted sweep keeps every finished row.
            pd.DataFrame([row], columns=COLUMNS).to_csv(
                results_csv, mode="a", header=not results_csv.exists(), index=False)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    results = pd.read_csv(results_csv, dtype={"k": str})
    write_report(results, out_dir)
    return results


def with_fraction_of_dense(results):
    """Add ``fraction_of_dense``: shift / the dense vector's shift at the same
    (behavior, layer, alpha, method)."""
    results = results.copy()
    dense = results[results["k"] == "dense"].set_index(["behavior", "layer", "alpha", "method"])["on_target_shift"]
    keys = list(zip(results["behavior"], results["layer"], results["alpha"], results["method"]))
    dense_shift = np.array([dense.get(key, np.nan) for key in keys], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        results["fraction_of_dense"] = results["on_target_shift"].to_numpy(dtype=float) / dense_shift
    return results


def summarize(results) -> dict:
    """Paper-style summary of one or several behaviors' results.

    * mean fraction of the dense on-target shift retained at each k (over
      configurations whose dense shift is positive: a fraction of a shift that
      went the wrong way means nothing);
    * mean perplexity inflation of dense vs each sparse k, with a paired t-test
      of log(inflation) across matched (behavior, layer, alpha) configurations
      (on the log: inflation is a ratio, and a broken model's 1000x would
      otherwise outweigh every other pair);
    * per behavior, the best layer (largest mean shift over alphas) for the dense
      vector and for each sparse k, and their difference.
    """
    from scipy import stats as scipy_stats

    results = with_fraction_of_dense(results)
    summary: dict = {"retained": {}, "inflation": {}, "best_layer": {}}
    sparse_ks = sorted({k for k in results["k"] if k != "dense"}, key=int)
    methods = sorted(set(results["method"]))
    dense_rows = results[results["k"] == "dense"].set_index(["behavior", "layer", "alpha", "method"])
    for method, k in [(m, k) for m in methods for k in sparse_ks]:
        rows = results[(results["k"] == k) & (results["method"] == method)]
        if not len(rows):
            continue
        label = k if len(methods) == 1 else f"{method} k={k}"
        keys = list(zip(rows["behavior"], rows["layer"], rows["alpha"], rows["method"]))
        dense_shift = np.array([dense_rows["on_target_shift"].get(key, np.nan) for key in keys])
        ok = dense_shift > 0
        summary["retained"][label] = {
            "mean_fraction": float(np.nanmean(rows["fraction_of_dense"].to_numpy()[ok])) if ok.any() else None,
            "configs": int(ok.sum()),
        }
        sparse_infl = rows["ppl_inflation"].to_numpy()
        dense_infl = np.array([dense_rows["ppl_inflation"].get(key, np.nan) for key in keys])
        paired = ~np.isnan(dense_infl)
        entry = {"mean_sparse": float(np.mean(sparse_infl[paired])) if paired.any() else None,
                 "mean_dense": float(np.mean(dense_infl[paired])) if paired.any() else None,
                 "geomean_sparse": float(np.exp(np.mean(np.log(sparse_infl[paired])))) if paired.any() else None,
                 "geomean_dense": float(np.exp(np.mean(np.log(dense_infl[paired])))) if paired.any() else None,
                 "pairs": int(paired.sum()), "t": None, "p": None}
        if paired.sum() >= 2 and np.any(sparse_infl[paired] != dense_infl[paired]):
            with warnings.catch_warnings():
                # Near-identical pairs (tiny effects) make scipy warn about precision; the
                # statistic is still what it is.
                warnings.simplefilter("ignore", RuntimeWarning)
                test = scipy_stats.ttest_rel(np.log(dense_infl[paired]), np.log(sparse_infl[paired]))
            entry["t"], entry["p"] = float(test.statistic), float(test.pvalue)
        summary["inflation"][label] = entry
    for (behavior, method), rows in results.groupby(["behavior", "method"]):
        by_layer = rows.groupby(["k", "layer"])["on_target_shift"].mean()
        best = {}
        for k in by_layer.index.get_level_values(0).unique():
            shifts = by_layer.loc[k]
            best[k] = int(shifts.idxmax())
        entry = {"best_layer": best}
        if "dense" in best:
            entry["sparse_minus_dense"] = {k: best[k] - best["dense"] for k in best if k != "dense"}
        summary["best_layer"][behavior if len(methods) == 1 else f"{behavior} ({method})"] = entry
    return summary


def _markdown_table(frame, float_format: str = "{:.4g}") -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [float_format.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results, out_dir: Path) -> list[Path]:
    """fraction of dense retained vs k, and perplexity inflation vs k (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = with_fraction_of_dense(results)
    sparse = results[results["k"] != "dense"].copy()
    sparse["k_int"] = sparse["k"].astype(int)
    paths = []
    for column, ylabel, name in (
        ("fraction_of_dense", "fraction of dense on-target shift retained", "retained_vs_k.png"),
        ("ppl_inflation", "perplexity inflation (steered / base, log scale)", "inflation_vs_k.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (behavior, method, layer, alpha), rows in sparse.groupby(["behavior", "method", "layer", "alpha"]):
            rows = rows.sort_values("k_int")
            label = (f"L{layer} a={alpha:g}" + (f" {behavior}" if sparse["behavior"].nunique() > 1 else "")
                     + (f" {method}" if sparse["method"].nunique() > 1 else ""))
            line, = ax.plot(rows["k_int"], rows[column], marker="o", label=label)
            if column == "ppl_inflation":
                dense = results[(results["k"] == "dense") & (results["layer"] == layer) & (results["method"] == method)
                                & (results["alpha"] == alpha) & (results["behavior"] == behavior)]
                if len(dense):
                    ax.axhline(float(dense[column].iloc[0]), color=line.get_color(), linestyle=":", linewidth=1)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        if column == "ppl_inflation":
            ax.set_yscale("log")  # a broken model inflates 1000x; keep 1.01x readable beside it
        ax.set_xscale("log", base=2)
        ticks = sorted(sparse["k_int"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("k (kept coordinates)")
        ax.set_ylabel(ylabel)
        title = "dotted: dense vector at the same layer and alpha" if column == "ppl_inflation" else \
            "1.0 = the dense vector's shift"
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(results, out_dir: Path) -> Path:
    """results.md (table + summary), summary.json and the plots."""
    out_dir = Path(out_dir)
    summary = summarize(results)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_results(results, out_dir)
    table = with_fraction_of_dense(results)[
        ["behavior", "method", "layer", "k", "alpha", "on_target_shift", "fraction_of_dense", "ppl_inflation"]]
    lines = ["# Steering sweep", "", _markdown_table(table), "",
             "## Fraction of the dense on-target shift retained", "",
             "| k | mean fraction | configs (dense shift > 0) |", "|---|---|---|"]
    for k, entry in summary["retained"].items():
        value = "n/a" if entry["mean_fraction"] is None else f"{entry['mean_fraction']:.3f}"
        lines.append(f"| {k} | {value} | {entry['configs']} |")
    lines += ["", "## Perplexity inflation, dense vs sparse (paired t-test of log inflation over matched "
              "configurations; t > 0: dense inflates more)", "",
              "| k | mean sparse | mean dense | geo-mean sparse | geo-mean dense | pairs | t | p |",
              "|---|---|---|---|---|---|---|---|"]
    for k, entry in summary["inflation"].items():
        fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"| {k} | {fmt(entry['mean_sparse'])} | {fmt(entry['mean_dense'])} | "
                     f"{fmt(entry['geomean_sparse'])} | {fmt(entry['geomean_dense'])} | {entry['pairs']} | "
                     f"{fmt(entry['t'])} | {fmt(entry['p'])} |")
    lines += ["", "## Best layer (largest mean shift over alphas)", ""]
    for behavior, entry in summary["best_layer"].items():
        lines.append(f"- {behavior}: " + ", ".join(f"k={k}: layer {v}" for k, v in entry["best_layer"].items())
                     + (f"; sparse minus dense: {entry['sparse_minus_dense']}"
                        if "sparse_minus_dense" in entry else ""))
    lines += ["", "![retained](retained_vs_k.png)", "", "![inflation](inflation_vs_k.png)", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path

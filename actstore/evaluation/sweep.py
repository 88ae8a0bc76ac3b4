"""Sweeps over layer, method, k and alpha: on-target shift against off-target damage, with intervals.

:func:`run_sweep` builds each vector from the store's cached statistics, steers
the model with it, and measures per test item and per perplexity window:

* the on-target score of an :class:`actstore.protocols.OnTarget` protocol (A/B
  letters, free-text preference, or generations scored by a scorer); the shift
  is the mean of per-item differences steered minus unsteered, with a paired t
  interval (:func:`actstore.intervals.paired_mean_interval`);
* perplexity inflation on a text sample, steered / unsteered, with a paired
  bootstrap interval over windows (:func:`actstore.intervals.inflation_interval`).

Alphas: explicit scales (``alphas``), norms of the added vector
(``alphas`` with ``normalize=True``), or by default fractions of the layer's
residual norm (the root-mean-square norm of the captured activations at that
layer, from the store's statistics): ``added_norm = fraction * residual_norm``,
a grid that means the same at every layer and for every vector.

Cost: the output of block L on the test batches and the perplexity windows is
the same for every configuration at layer L, so it is computed once per layer
and replayed (:class:`actstore.replay.PrefixReplay`): each configuration runs
only the blocks after L and the head. ``seconds`` in results.csv is the time of
each configuration; the report gives configurations per hour.

The folder (:class:`actstore.ledger.Ledger`) resumes: an interrupted sweep keeps
every finished configuration. Then :func:`actstore.report.write_report` writes
results.md, frontier.csv, matched_effect.csv and the plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from .scoring import ABItem, PerplexityWindows
from .intervals import inflation_interval, paired_mean_interval, stratified_mean_interval
from .ledger import Ledger
from ..methods import METHODS, LayerMethods
from ..models import LoadedModel
from .protocols import ABLetters, GeneratedText, OnTarget
from .replay import Forward, PrefixReplay, cache_nbytes, plain_forward
from ..steering import Positions, steer
from ..stores import check_store_model

DEFAULT_BUDGETS = (1.05, 1.25, 2.0)
DEFAULT_FRACTIONS = (0.005, 0.01, 0.02, 0.04, 0.08)
DEFAULT_PPL_TOKENS = 8192
ALPHA_MODES = ("scale", "norm", "fraction")
DEGENERATION = ("distinct_2", "repeated_3gram")
COLUMNS = (["behavior", "model", "protocol", "layer", "method", "k", "alpha", "alpha_mode", "scale", "added_norm",
            "norm_fraction", "vector_norm", "residual_norm", "on_target", "on_target_base", "on_target_shift",
            "on_target_ci_low", "on_target_ci_high", "detectable", "ppl", "ppl_base", "ppl_inflation",
            "ppl_inflation_ci_low", "ppl_inflation_ci_high", "n_items", "ppl_tokens", "seconds"]
           + [f"{m}_{s}" for m in DEGENERATION for s in ("shift", "ci_low", "ci_high")]
           + ["balanced_shift", "balanced_ci_low", "balanced_ci_high", "balanced_detectable"])


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


def _k_label(k: int | None) -> str:
    return "dense" if k is None else str(int(k))


@dataclass(frozen=True)
class Grid:
    """What a sweep measures, validated on construction (before any model work).

    ``alphas``: scales (``alpha_mode="scale"``), added norms (``"norm"``) or
    fractions of the layer's residual norm (``"fraction"``).
    """

    layers: tuple[int, ...]
    ks: tuple[int | None, ...]
    alphas: tuple[float, ...]
    alpha_mode: str = "fraction"
    methods: tuple[str, ...] = ("enr",)
    budgets: tuple[float, ...] = DEFAULT_BUDGETS

    def __post_init__(self):
        if not self.layers:
            raise ActstoreError("layers: at least one layer is needed")
        if not self.ks:
            raise ActstoreError("ks: at least one k (or 'dense') is needed")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ActstoreError(f"methods: unknown {unknown}; expected some of {list(METHODS)}", param="methods")
        if self.alpha_mode not in ALPHA_MODES:
            raise ActstoreError(f"alpha_mode {self.alpha_mode!r}: expected one of {list(ALPHA_MODES)}")
        if not self.alphas or not all(math.isfinite(a) for a in self.alphas):
            raise ActstoreError(f"alphas {list(self.alphas)}: expected finite numbers")
        if self.alpha_mode != "scale" and any(a <= 0 for a in self.alphas):
            raise ActstoreError(f"alphas {list(self.alphas)}: norms and fractions must be > 0")
        if not self.budgets or not all(math.isfinite(b) and b > 1 for b in self.budgets):
            raise ActstoreError(f"budgets {list(self.budgets)}: expected perplexity ratios > 1, e.g. 1.05,1.25,2",
                                param="budgets")
        for k in self.ks:
            if k is not None and (isinstance(k, bool) or int(k) < 1):
                raise ActstoreError(f"k={k}: expected a positive integer or dense")

    def check_store(self, store_layers: Sequence[int], hidden: int, store: str | Path = "store") -> None:
        """Layers and k against what the store holds (its layers, its hidden size)."""
        missing = [layer for layer in self.layers if layer not in store_layers]
        if missing:
            raise ActstoreError(f"layers {missing} are not in {str(store)!r}; it has layers {list(store_layers)}",
                                param="layers")
        too_big = [k for k in self.ks if k is not None and k > hidden]
        if too_big:
            raise ActstoreError(f"k {too_big}: larger than the hidden size of {str(store)!r} ({hidden})")

    def configurations(self) -> list[tuple[int, str, int | None, float]]:
        """Every (layer, method, k, alpha). The whitened dense vector is the plain dense
        one (Sigma^1/2 Sigma^-1/2 v = v), so it is measured once, as ``enr``, when both run."""
        return [(layer, method, k, alpha) for layer in self.layers for method in self.methods
                for k in self.ks for alpha in self.alphas
                if not (method == "whitened" and k is None and "enr" in self.methods)]


def _open_heldout(heldout, grid: Grid, loaded: LoadedModel, force: bool):
    """The held-out store as a dataset, checked against the grid and the model."""
    from ..stores.reader import open_store

    ds = open_store(heldout, coords=("class", "pair_id"))
    missing = [layer for layer in grid.layers if layer not in [int(x) for x in ds["layer"].values]]
    if missing:
        raise ActstoreError(f"heldout: layers {missing} are not in {str(heldout)!r}; capture the held-out texts "
                            "at the sweep's layers", param="heldout")
    check_store_model(ds.attrs, loaded, force, heldout)
    return ds


def _record_separation(ledger: Ledger, heldout_ds, vector, behavior: str, layer: int, method: str, k) -> None:
    from ..monitor import project, separation

    sep = separation(project(heldout_ds.attrs.get("store", "heldout"), vector, dataset=heldout_ds))
    ledger.record_separation(sep.row(behavior=behavior, layer=layer, method=method, k=_k_label(k)))


def residual_norm(stats, layer: int) -> float:
    """Root-mean-square norm of the captured activations at ``layer``, over all
    classes: sqrt(sum_i E[h_i^2]), from the per-class count, mean and variance."""
    sel = stats.sel(layer=layer)
    count = sel["count"].values.astype(np.float64)
    mean = sel["mean"].values.astype(np.float64)
    var = np.nan_to_num(sel["var"].values.astype(np.float64))
    second = var * ((count - 1) / count)[:, None] + mean ** 2  # E[h^2] per class
    return float(math.sqrt(float((second * count[:, None]).sum(0).sum() / count.sum())))


def _paired_columns(prefix: str, steered, base) -> dict:
    ok = np.isfinite(steered) & np.isfinite(base)
    interval = paired_mean_interval(steered[ok], base[ok])
    return {f"{prefix}_shift": interval.estimate, f"{prefix}_ci_low": interval.low, f"{prefix}_ci_high": interval.high}


@dataclass
class Measurement:
    """Per-item metrics ``{metric: (items,)}`` and per-window ``nll``/``tokens`` of one steering state."""

    measures: dict[str, np.ndarray]
    nll: np.ndarray
    tokens: np.ndarray
    texts: list[str] | None = None

    @property
    def on_target(self) -> float:
        return float(np.mean(self.measures["score"]))

    @property
    def ppl(self) -> float:
        return float(math.exp(self.nll.sum() / self.tokens.sum()))


def _measure(loaded: LoadedModel, on_target: OnTarget, windows: PerplexityWindows, on_forward: Forward,
             ppl_forward: Forward) -> Measurement:
    measures = on_target.measure(loaded, on_forward)
    nll, tokens = windows.nll(ppl_forward)
    return Measurement(measures, nll, tokens, getattr(on_target, "last_texts", None))


def _scale_for(alpha: float, alpha_mode: str, vector_norm: float, layer_norm: float) -> float:
    """The scale that multiplies the vector for ``alpha`` in ``alpha_mode``."""
    if alpha_mode == "scale":
        return alpha
    added_norm = alpha if alpha_mode == "norm" else alpha * layer_norm
    return added_norm / vector_norm if vector_norm > 0 else 0.0


def _effects(steered: Measurement, base: Measurement, strata: Sequence[str] | None = None) -> dict:
    """The results.csv columns of one configuration against the unsteered baseline (with
    ``strata``, also the shift with each stratum weighted equally: A/B items by their letter)."""
    shift = paired_mean_interval(steered.measures["score"], base.measures["score"])
    inflation = inflation_interval(steered.nll, base.nll, steered.tokens)
    row = {"on_target": steered.on_target, "on_target_base": base.on_target, "on_target_shift": shift.estimate,
           "on_target_ci_low": shift.low, "on_target_ci_high": shift.high, "detectable": shift.excludes(0.0),
           "ppl": steered.ppl, "ppl_base": base.ppl, "ppl_inflation": inflation.estimate,
           "ppl_inflation_ci_low": inflation.low, "ppl_inflation_ci_high": inflation.high}
    for metric in DEGENERATION:
        if metric in steered.measures:
            row.update(_paired_columns(metric, steered.measures[metric], base.measures[metric]))
    if strata is not None:
        balanced, _ = stratified_mean_interval(steered.measures["score"], base.measures["score"], strata)
        row.update({"balanced_shift": balanced.estimate, "balanced_ci_low": balanced.low,
                    "balanced_ci_high": balanced.high, "balanced_detectable": balanced.excludes(0.0)})
    return row


@contextmanager
def _layer_forwards(loaded: LoadedModel, layer: int, on_target: OnTarget, windows: PerplexityWindows,
                    replay: bool, cache_budget_mb: float, site: str = "resid"
                    ) -> Iterator[Callable[[], AbstractContextManager]]:
    """Yields ``active()``, a context inside which ``(on_forward, ppl_forward)`` measure at ``layer``:
    replayed from the layer's cached block output where the protocol allows and it fits the budget.
    A vector added inside block L (site attn or mlp) replays only blocks before L."""
    on_batches = on_target.batches()
    batches = {**{("on", i): b for i, b in enumerate(on_batches)},
               **{("ppl", i): b for i, b in enumerate(windows.batches)}}
    prefix = layer if site == "resid" else layer - 1
    if replay and prefix >= 0 and on_batches and cache_nbytes(loaded, batches) <= cache_budget_mb * 2**20:
        cached = PrefixReplay(loaded, prefix, batches)

        @contextmanager
        def active():
            with cached.active():
                yield (lambda i, b: cached(("on", i), b)), (lambda i, b: cached(("ppl", i), b))

        yield active
        return
    forward = plain_forward(loaded.model)
    yield lambda: nullcontext((forward, forward))


def run_sweep(
    loaded: LoadedModel,
    store: str | Path,
    out_dir: str | Path,
    *,
    items: Sequence[ABItem] = (),
    ppl_ids: Sequence[int],
    layers: Sequence[int],
    ks: Sequence[int | None],
    alphas: Sequence[float] | None = None,
    methods: Sequence[str] = ("enr",),
    behavior: str = "behavior",
    normalize: bool = False,
    scorer: Callable[[list[str]], Sequence[float]] | None = None,
    prompts: Sequence[str] = (),
    on_target: OnTarget | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ppl_window: int = 256,
    positions: str = "all",
    model_group: str | None = None,
    batch_size: int = 8,
    scheduler: str | None = None,
    replay: bool = True,
    cache_budget_mb: float = 4096,
    force: bool = False,
    heldout: str | Path | None = None,
    progress: bool = True,
):
    """Measure every (layer, method, k, alpha) and write results into ``out_dir``.

    The on-target measure is ``on_target`` (any :class:`~actstore.protocols.OnTarget`),
    or A/B ``items``, or generations from ``prompts`` scored by ``scorer``
    (``texts -> scores``). ``methods``: any of :data:`actstore.methods.METHODS`
    (enr, whitened, pca, probe, lda); ``k=None`` is each method's dense vector.
    ``alphas=None`` sweeps ``fractions`` of each layer's residual norm as the added
    norm; explicit ``alphas`` are scales, or added norms with
    ``normalize=True``. ``budgets``: perplexity-inflation budgets of the
    frontier; ``ppl_window``: tokens per perplexity window (the unit of its
    interval). ``positions``: which tokens are steered
    (:class:`actstore.steering.Positions`: all, prompt, generated, from:N).
    ``replay=False`` runs the whole model per configuration (same
    numbers, slower); a layer whose cached outputs would exceed
    ``cache_budget_mb`` runs that way too. ``scheduler`` runs any statistics or
    covariance still to compute (:func:`actstore.stats.scheduler_context`).
    ``force`` evaluates a store captured from other weights. ``heldout``: a store
    of held-out pos/neg texts (e.g. the test split) captured at the same layers;
    each vector's AUROC and Cohen's d separating them go to separation.csv
    (:func:`actstore.monitor.separation`).

    Returns results.csv as a :class:`pandas.DataFrame` (columns :data:`COLUMNS`).
    """
    from .report import write_report
    from ..stats import group_statistics
    from ..stores.roots import open_root, select_group

    if on_target is None:
        if scorer is not None:
            on_target = GeneratedText(prompts, scorer, batch_size=batch_size)
        elif items:
            on_target = ABLetters(loaded.tokenizer, items, batch_size)
        else:
            raise ActstoreError("no A/B items to evaluate (and no scorer or on-target protocol)")
    alpha_mode = "fraction" if alphas is None else ("norm" if normalize else "scale")
    grid = Grid(tuple(int(x) for x in layers), tuple(ks), tuple(float(a) for a in (alphas or fractions)),
                alpha_mode, tuple(methods), tuple(float(b) for b in budgets))
    group = select_group(open_root(store, mode="r"), model_group, store)
    stats = group_statistics(group, store, scheduler=scheduler)
    grid.check_store([int(x) for x in stats["layer"].values], int(stats.sizes["hidden"]), store)
    check_store_model(stats.attrs, loaded, force, store)
    heldout_ds = _open_heldout(heldout, grid, loaded, force) if heldout is not None else None

    settings = {"protocol": on_target.name, "items": len(on_target.item_ids), "ppl_tokens": len(ppl_ids),
                "ppl_window": int(ppl_window), "alpha_mode": alpha_mode,
                "store_group": str(stats.attrs.get("group", ""))}
    if stats.attrs.get("site", "resid") != "resid":  # folders of residual sweeps keep their settings
        settings["site"] = str(stats.attrs["site"])
    chosen = Positions.parse(positions)
    if chosen.kind == "mask":
        raise ActstoreError("positions: a per-example mask does not fit a sweep over test batches; "
                            "use all, prompt, generated or from:N")
    if chosen.kind != "all":  # folders of every-token sweeps keep their settings
        settings["positions"] = str(chosen)
    ledger = Ledger(out_dir, settings, COLUMNS)
    windows = PerplexityWindows(loaded.tokenizer, ppl_ids, ppl_window)
    if ledger.baseline is None:
        forward = plain_forward(loaded.model)
        base = _measure(loaded, on_target, windows, forward, forward)
        strata = getattr(on_target, "strata", None)
        ledger.record_baseline(on_target.item_ids, base.measures, base.nll, base.tokens, base.texts,
                               **({"strata": list(strata)} if strata is not None else {}),
                               on_target=base.on_target, ppl=base.ppl)
    base = Measurement(*ledger.baseline_measures())

    todo = [c for c in grid.configurations() if not ledger.is_done(c[0], c[1], _k_label(c[2]), c[3])]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {behavior}", unit="config")
    try:
        for layer in sorted({c[0] for c in todo}):
            layer_norm = residual_norm(stats, layer)
            layer_methods = LayerMethods(group, store, stats, layer, scheduler=scheduler)
            # The layer's one-off cost (its cached block outputs) counts in its first configuration.
            started = time.perf_counter()
            with _layer_forwards(loaded, layer, on_target, windows, replay, cache_budget_mb,
                                 str(stats.attrs.get("site", "resid"))) as active:
                for _, method, k, alpha in [c for c in todo if c[0] == layer]:
                    vector = layer_methods.vector(method, k)
                    if heldout_ds is not None and not ledger.is_separated(layer, method, _k_label(k)):
                        _record_separation(ledger, heldout_ds, vector, behavior, layer, method, k)
                    norm = float(np.linalg.norm(vector.vector))
                    scale = _scale_for(alpha, alpha_mode, norm, layer_norm)
                    with active() as (on_forward, ppl_forward), steer(loaded, vector, scale, positions=chosen):
                        steered = _measure(loaded, on_target, windows, on_forward, ppl_forward)
                    row = {"behavior": behavior, "model": loaded.model_id, "protocol": on_target.name,
                           "layer": layer, "method": method, "k": _k_label(k), "alpha": float(alpha),
                           "alpha_mode": alpha_mode, "scale": scale, "added_norm": abs(scale) * norm,
                           "norm_fraction": abs(scale) * norm / layer_norm, "vector_norm": norm,
                           "residual_norm": layer_norm,
                           **_effects(steered, base, getattr(on_target, "strata", None)),
                           "n_items": len(on_target.item_ids), "ppl_tokens": len(ppl_ids),
                           "seconds": time.perf_counter() - started}
                    ledger.record(row, on_target.item_ids, steered.measures, steered.nll, steered.tokens,
                                  steered.texts)
                    started = time.perf_counter()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    results = ledger.results()
    write_report(results, ledger, grid.budgets)
    return results

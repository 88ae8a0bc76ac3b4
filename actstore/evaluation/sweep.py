"""Sweeps over layer, method, k and alpha: on-target shift against off-target damage, with intervals.

:func:`run_sweep` builds each vector of a :class:`~actstore.evaluation.grid.Grid`
from the store's cached statistics, steers the model with it, and measures per
held-out item and per perplexity window:

* the on-target measure of an :class:`~actstore.evaluation.protocols.OnTarget`
  protocol; for A/B questions both answer orders, on log-odds and on the
  probability scale; the shift is per question (the mean over its orders) with a
  paired t interval over questions (:mod:`actstore.evaluation.effects`);
* perplexity inflation, steered / unsteered, with a paired bootstrap interval
  over the documents the windows come from.

Alphas: explicit scales, norms of the added vector, or by default fractions of
the layer's residual norm (the root-mean-square norm of the captured
activations at that layer): ``added_norm = fraction * residual_norm``, a grid
that means the same at every layer and for every vector.

Cost: the output of block L on the test batches and the perplexity windows is
the same for every configuration at layer L, so it is computed once per layer
and replayed (:class:`actstore.evaluation.replay.PrefixReplay`): each
configuration runs only the blocks after L and the head. ``seconds`` in
results.csv is the time of each configuration; the report gives configurations
per hour.

The folder (:class:`~actstore.evaluation.ledger.Ledger`) resumes: an
interrupted sweep keeps every finished configuration. Then
:func:`~actstore.evaluation.report.write_report` writes results.md,
frontier.csv, contrasts.csv, steerability.csv and the plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from ..models.load import LoadedModel
from ..steering import Positions, steer
from ..stores.group import StoreGroup
from ..vectors.info import parse_k
from .effects import Measurement, Units, effects
from .frontier import Contrast
from .grid import (
    DEFAULT_BUDGETS,
    DEFAULT_FRACTIONS,
    DEFAULT_PPL_TOKENS,
    Grid,
    LayerVectors,
    residual_norm,
    scale_for,
)
from .ledger import Ledger
from .protocols import OnTarget
from .replay import Forward, PrefixReplay, cache_nbytes, plain_forward
from .rows import BASELINE, ConfigKey, ItemRows, ResultRow, WindowRows, columns
from .scoring import PerplexityWindows

COLUMNS = columns(ResultRow)

__all__ = ["COLUMNS", "DEFAULT_BUDGETS", "DEFAULT_FRACTIONS", "DEFAULT_PPL_TOKENS", "Grid", "SweepOptions",
           "residual_norm", "run_sweep"]


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (not what it measures: that is the :class:`Grid`).

    ``positions``: which tokens are steered (:class:`actstore.steering.Positions`:
    all, prompt, generated, from:N). ``replay=False`` runs the whole model per
    configuration (same numbers, slower); a layer whose cached outputs would
    exceed ``cache_budget_mb`` runs that way too. ``scheduler`` runs statistics or
    covariances still to compute. ``force`` evaluates a store captured from other
    weights. ``heldout``: a store of held-out pos/neg texts at the sweep's layers;
    each vector's AUROC and Cohen's d go to separation.csv. ``letter_data``: for
    the ``letter`` control, the A/B file captured into the store with its twins
    (default: the store's latest capture with twins). ``contrasts``: the
    pre-specified primary contrasts (:meth:`actstore.evaluation.frontier.Contrast.parse`
    specs), Holm-corrected as a family; none: the default family.
    """

    behavior: str = "behavior"
    positions: str = "all"
    model_group: str | None = None
    scheduler: str | None = None
    replay: bool = True
    cache_budget_mb: float = 4096
    force: bool = False
    heldout: str | Path | None = None
    letter_data: str | Path | None = None
    contrasts: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self):
        for spec in self.contrasts:
            Contrast.parse(spec)
        chosen = Positions.parse(self.positions)
        if chosen.kind == "mask":
            raise ActstoreError("positions: a per-example mask does not fit a sweep over test batches; "
                                "use all, prompt, generated or from:N", param="positions")


def run_sweep(loaded: LoadedModel, store: str | Path | StoreGroup, out_dir: str | Path, *, grid: Grid,
              on_target: OnTarget, perplexity: PerplexityWindows, options: SweepOptions = SweepOptions()):
    """Measure every configuration of ``grid`` and write the folder ``out_dir``; returns
    results.csv as a :class:`pandas.DataFrame` (columns :data:`COLUMNS`).

    ``store``: the training store's group, opened once by the caller (a
    :class:`~actstore.stores.StoreGroup`, whose model check is not repeated here), or a path
    (its group ``options.model_group``)."""
    from ..stats.streaming import group_statistics
    from .report import write_report

    source = StoreGroup.open(store, options.model_group)
    grid.check_store(source)
    source.check_model(loaded, options.force)
    stats = group_statistics(source, scheduler=options.scheduler)
    heldout = _open_heldout(options.heldout, grid, loaded, options.force) if options.heldout is not None else None
    with folder_lock(out_dir):  # one writer per folder: two runs would each append every row
        ledger = Ledger(out_dir, _settings(grid, on_target, perplexity, source, options))
        units = Units.of(on_target, perplexity)
        base = _baseline(ledger, loaded, on_target, perplexity, units)
        todo = [c for c in grid.configurations() if not ledger.is_done(*c.as_tuple())]
        with _progress(options, len(todo)) as tick:
            for layer in sorted({c.layer for c in todo}):
                _measure_layer(loaded, source, stats, layer, [c for c in todo if c.layer == layer], grid,
                               on_target, perplexity, units, base, ledger, heldout, options, tick)
        results = ledger.finish()
        write_report(ledger, grid.budgets, [Contrast.parse(c) for c in options.contrasts] or None)
    return results


def folder_lock(out_dir: str | Path):
    """The sweep folder's writer lock (the store's mechanism: a lock file beside the folder, held
    while the run writes, released by the OS if the process dies); a second run is refused."""
    from ..stores.lock import WriterLock

    out = Path(out_dir)
    return WriterLock(out, "sweep", busy=f"{str(out)!r} is being written by {{holder}} (another `actstore eval` "
                                        "of this folder); wait for it to finish, or use another --out").acquire()


def _settings(grid: Grid, on_target: OnTarget, perplexity: PerplexityWindows, store: StoreGroup, options) -> dict:
    """What a folder was measured with: a rerun with other settings is refused. The grid is not
    among them: runs of other layers, methods, k or seeds extend the same folder."""
    settings = {"protocol": on_target.name, "items": len(on_target.item_ids),
                "questions": int(np.unique(on_target.questions).size), "ppl_tokens": int(perplexity.n_tokens),
                "ppl_documents": perplexity.n_documents, "ppl_window": int(perplexity.window),
                "alpha_mode": grid.alpha_mode, "store_group": store.name}
    if store.spec.site != "resid":  # folders of residual sweeps keep their settings
        settings["site"] = store.spec.site
    if str(Positions.parse(options.positions)) != "all":
        settings["positions"] = str(Positions.parse(options.positions))
    return settings


def _open_heldout(heldout, grid: Grid, loaded: LoadedModel, force: bool):
    """The held-out store as a dataset, checked against the grid and the model."""
    group = StoreGroup.open(heldout)
    missing = [layer for layer in grid.layers if layer not in group.spec.layers]
    if missing:
        raise ActstoreError(f"heldout: layers {missing} are not in {group.where}; capture the held-out texts "
                            "at the sweep's layers", param="heldout")
    group.check_model(loaded, force)
    return group.dataset(coords=("class", "pair_id"))


def _measure(loaded: LoadedModel, on_target: OnTarget, windows: PerplexityWindows, on_forward: Forward,
             ppl_forward: Forward) -> Measurement:
    measures = on_target.measure(loaded, on_forward)
    nll, tokens = windows.nll(ppl_forward)
    return Measurement(measures, nll, tokens, getattr(on_target, "last_texts", None))


def _rows(key: ConfigKey, on_target: OnTarget, windows: PerplexityWindows, measured: Measurement):
    return (ItemRows(key, list(on_target.item_ids), on_target.questions, on_target.orders, measured.measures),
            WindowRows(key, windows.documents, measured.nll, measured.tokens))


def _baseline(ledger: Ledger, loaded, on_target: OnTarget, windows: PerplexityWindows, units: Units) -> Measurement:
    """The unsteered measurement: measured once per folder, read back on resume."""
    if ledger.baseline is None:
        forward = plain_forward(loaded.model)
        base = _measure(loaded, on_target, windows, forward, forward)
        ledger.record_baseline(*_rows(BASELINE, on_target, windows, base), base.texts,
                               on_target=base.on_target, ppl=base.ppl)
    return Measurement(*ledger.baseline_measures())


@contextmanager
def _progress(options: SweepOptions, total: int) -> Iterator[Callable[[], None]]:
    if not options.progress or not total:
        yield lambda: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sweep {options.behavior}", unit="config")
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()


def _measure_layer(loaded, source: StoreGroup, stats, layer: int, configs: list[ConfigKey], grid: Grid,
                   on_target: OnTarget, windows: PerplexityWindows, units: Units, base: Measurement,
                   ledger: Ledger, heldout, options: SweepOptions, tick: Callable[[], None]) -> None:
    """Every configuration of one layer, from its cached block outputs where they fit."""
    layer_norm = residual_norm(stats, layer)
    vectors = LayerVectors(source, stats, layer, options.scheduler, options.letter_data)
    positions = Positions.parse(options.positions)
    # The layer's one-off cost (its cached block outputs) counts in its first configuration.
    started = time.perf_counter()
    with _layer_forwards(loaded, layer, on_target, windows, options.replay, options.cache_budget_mb,
                         source.spec.site) as active:
        for key in configs:
            vector = vectors.vector(key.method, parse_k(key.k))
            if heldout is not None and not ledger.is_separated(layer, key.method, key.k):
                _record_separation(ledger, heldout, vector, options.behavior, layer, key.method, key.k)
            norm = float(np.linalg.norm(vector.vector))
            scale = scale_for(key.alpha, grid.alpha_mode, norm, layer_norm)
            with (active() as (on_forward, ppl_forward), steer(loaded, vector, scale, positions=positions),
                  on_target.steered(vector, scale, positions)):  # a served protocol steers its engine too
                steered = _measure(loaded, on_target, windows, on_forward, ppl_forward)
            row = ResultRow(behavior=options.behavior, model=loaded.model_id, protocol=on_target.name, layer=layer,
                            method=key.method, k=key.k, alpha=key.alpha, alpha_mode=grid.alpha_mode, scale=scale,
                            added_norm=abs(scale) * norm, norm_fraction=abs(scale) * norm / layer_norm,
                            vector_norm=norm, residual_norm=layer_norm,
                            **effects(steered, base, units, on_target.primary),
                            n_items=len(on_target.item_ids), n_questions=units.n_questions,
                            ppl_tokens=int(windows.n_tokens), ppl_documents=windows.n_documents,
                            seconds=time.perf_counter() - started)
            ledger.record(row, *_rows(key, on_target, windows, steered), steered.texts)
            started = time.perf_counter()
            tick()


def _record_separation(ledger: Ledger, heldout_ds, vector, behavior: str, layer: int, method: str, k: str) -> None:
    from .monitor import project, separation

    sep = separation(project(heldout_ds.attrs.get("store", "heldout"), vector, dataset=heldout_ds))
    ledger.record_separation(sep.row(behavior=behavior, layer=layer, method=method, k=k))


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

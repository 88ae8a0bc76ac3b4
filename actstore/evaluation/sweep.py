"""Sweeps over layer, method, k and alpha: on-target shift against off-target damage, with intervals.

:func:`run_sweep` carries out a :class:`~actstore.evaluation.request.SweepRequest`
(every setting, and the rules that make a sweep of them; ``actstore eval`` is this
one call): it builds each vector of the request's :class:`~actstore.evaluation.grid.Grid`
from the store's cached statistics, steers the model with it, and measures per
held-out item and per perplexity window:

* the on-target measure of an :class:`~actstore.evaluation.protocols.OnTarget`
  protocol; for A/B questions both answer orders, on log-odds and on the
  probability scale; the shift is per question (the mean over its orders) with a
  paired t interval over questions (:mod:`actstore.evaluation.effects`);
* perplexity inflation, steered / unsteered, with a paired bootstrap interval
  over the documents the windows come from;
* with ``damage`` kl, the KL divergence from the unsteered model on its own greedy
  continuations of the KL prompts (:mod:`actstore.evaluation.damage`), at the first
  generated token and the mean over each continuation, t intervals over prompts. The
  continuations are generated once per run; each configuration measures its KL with the
  whole model under the same ``steer(...)`` as its perplexity (never through the replay
  below, whose cached block outputs are those of the fixed batches only). Steered positions
  apply as to the perplexity windows: prompt and continuation are read in one pass without
  a cache, so ``prompt`` steers every token as ``all`` does, and ``generated`` none (KL 0).

Generation with a judge: the primary score is the judge's harmonic mean of its three
ratings; with ``select_split`` each vector's alpha is chosen on one half of the prompts
and its figures read on the other (:mod:`actstore.evaluation.selection`). The prompting
baseline (``methods`` with ``prompt``) is one configuration: the unsteered model, each
prompt formatted with the steering instruction, the whole model (no replay); its
perplexity windows are read after the instruction (only the documents' tokens counted;
the windows are plain text for every method, whatever ``chat_template``); it has no KL
damage (kl.csv has no rows of it, results.csv NaN).

Alphas: explicit scales, norms of the added vector, or by default fractions of
the layer's residual norm (the root-mean-square norm of the captured
activations at that layer): ``added_norm = fraction * residual_norm``, a grid
that means the same at every layer and for every vector.

Cost: the output of block L on the test batches and the perplexity windows is
the same for every configuration at layer L, so it is computed once per layer
and replayed (:class:`actstore.evaluation.replay.PrefixReplay`): each
configuration runs only the blocks after L and the head. Up to ``pack`` configurations
of a layer share each batch (:mod:`actstore.evaluation.packing`; generation: ``pack`` x
``batch_size`` rows per ``generate``), the KL damage is measured per configuration; ``pack``
1 runs one at a time, as before. ``seconds`` in results.csv is the time of each configuration:
a pack's time (measurement, KL, separation) split evenly; the report gives configurations per hour.

The folder (:class:`~actstore.evaluation.ledger.Ledger`) resumes: an
interrupted sweep keeps every finished configuration (a pack is recorded configuration by
configuration; the packs are cut from the grid, so a resumed one runs the same batches with
its finished configurations' slots unsteered and dropped); given held-out texts, each
vector's separation goes to separation.csv. Then
:func:`~actstore.evaluation.report.write_report` writes results.md,
frontier.csv, contrasts.csv, steerability.csv and the plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from ..models.load import LoadedModel, ModelSpec
from ..steering import Positions, steer
from ..stores.group import StoreGroup
from ..vectors.info import parse_k
from .damage import Continuations, KLDamage, continuations, format_prompts, kl_damage
from .effects import Measurement, Units, effects
from .files import replace_file
from .frontier import Contrast
from .grid import (
    DEFAULT_BUDGETS,
    DEFAULT_FRACTIONS,
    DEFAULT_PPL_TOKENS,
    Grid,
    LayerVectors,
    is_prompt,
    residual_norm,
    scale_for,
)
from .ledger import Ledger
from .overlap import question_texts
from .packing import Pack, chunks, measure_packed, pack_size, pack_slots
from .protocols import OnTarget
from .replay import Forward, layer_forwards, plain_forward
from .request import SweepRequest
from .rows import BASELINE, JUDGE_NOTE, ConfigKey, ItemRows, KLRows, ResultRow, WindowRows, columns
from .scoring import PerplexityWindows
from .selection import PromptSplit, harmonic_fields

COLUMNS = columns(ResultRow)

__all__ = ["COLUMNS", "DEFAULT_BUDGETS", "DEFAULT_FRACTIONS", "DEFAULT_PPL_TOKENS", "Grid", "residual_norm",
           "run_sweep"]


@dataclass
class _Sweep:
    """What every configuration of a running sweep shares (handed to each layer as one value)."""

    loaded: LoadedModel
    request: SweepRequest
    source: StoreGroup
    stats: object  # the store's statistics (xarray.Dataset: count, mean, var per class and layer)
    grid: Grid
    on_target: OnTarget
    windows: PerplexityWindows
    units: Units
    ledger: Ledger
    heldout: object | None  # the held-out store as a dataset (class, pair_id), or None
    base: Measurement | None = None
    kl_batches: list[Continuations] | None = None  # the unsteered continuations (damage kl), or None
    split: PromptSplit | None = None  # the prompts' ids and select/report halves (generation), or None


def run_sweep(loaded: LoadedModel | ModelSpec, request: SweepRequest):
    """Measure every configuration ``request`` describes and write its folder ``request.out``
    (results.csv, items.csv, windows.csv, baseline.json; kl.csv with ``damage`` kl; separation.csv
    when it has held-out texts; then results.md, frontier.csv, contrasts.csv, steerability.csv and the plots);
    returns results.csv as a :class:`pandas.DataFrame` (columns :data:`COLUMNS`).

    ``loaded``: the model, or a :class:`~actstore.models.load.ModelSpec` loaded once the request
    has been checked against its store and files (:meth:`SweepRequest.check`): a large model
    loads only for a sweep that can run. ``request.store`` may be the training store's group
    opened by the caller (a :class:`~actstore.stores.StoreGroup`, whose model check is not
    repeated here).

    >>> from actstore.evaluation import SweepRequest
    >>> _ = open("doc.txt", "w").write("The quick brown fox jumps over the lazy dog. " * 40)
    >>> request = SweepRequest(store="acts.zarr", data_test="pairs.json", text="doc.txt", layers="2", ks=(4, None),
    ...                        fractions=(0.5, 2.0), ppl_tokens=64, ppl_window=16, out="sweep", progress=False)
    >>> results = run_sweep(load_model(model_dir), request)  # what `actstore eval` runs
    >>> len(results), sorted(results["k"])
    (4, ['4', '4', 'dense', 'dense'])
    >>> sorted(path.name for path in request.out.glob("*.csv"))
    ['contrasts.csv', 'frontier.csv', 'items.csv', 'results.csv', 'separation.csv', 'steerability.csv', 'windows.csv']
    """
    from ..stats.streaming import group_statistics
    from ..stats.subsets import subset_statistics
    from .report import write_report

    checked = request.check()
    source, grid = checked.store, checked.grid
    stats = group_statistics(source, scheduler=request.scheduler) if request.train_resample is None else \
        subset_statistics(source, request.train_resample, scheduler=request.scheduler)  # every vector from a resample
    _check_classes(stats, grid)  # before the model loads: a store without the contrast's classes stops here
    loaded = loaded.load() if isinstance(loaded, ModelSpec) else loaded
    source.check_model(loaded, request.force)  # once: the handle remembers it
    on_target = request.build_on_target(loaded, checked)
    windows = request.build_perplexity(loaded, checked)
    heldout_store = request.heldout_source(loaded, checked)
    heldout = _open_heldout(heldout_store, grid, loaded, request.force) if heldout_store is not None else None
    with folder_lock(request.out):  # one writer per folder: two runs would each append every row
        ledger = Ledger(request.out, _settings(grid, on_target, windows, source, request, checked.kl_prompts,
                                               loaded.tokenizer))
        kl_batches = None if checked.kl_prompts is None else continuations(  # once the folder is accepted
            loaded, format_prompts(loaded.tokenizer, checked.kl_prompts), request.kl_tokens, request.batch_size)
        run = _Sweep(loaded, request, source, stats, grid, on_target, windows, Units.of(on_target, windows), ledger,
                     heldout, kl_batches=kl_batches, split=checked.split)
        run.base = _baseline(run)
        todo = [c for c in grid.configurations() if not ledger.is_done(*c.as_tuple())]
        with _progress(request, len(todo)) as tick:
            for key in [c for c in todo if is_prompt(c.method)]:
                _measure_prompt(run, key, tick)
            vectors = [c for c in grid.configurations() if not is_prompt(c.method)]  # done ones too: see packing
            for layer in sorted({c.layer for c in todo if not is_prompt(c.method)}):
                _measure_layer(run, layer, [c for c in vectors if c.layer == layer], tick)
        results = ledger.finish()
        if checked.judge_note is not None:  # what results.md says of the judge, rewritten by every run
            replace_file(request.out / JUDGE_NOTE, checked.judge_note + "\n")
        write_report(ledger, grid.budgets, [Contrast.parse(c) for c in request.contrasts] or None, checked.analysis)
    return results


def _check_classes(stats, grid: Grid) -> None:
    """The vectors contrast the classes 'pos' and 'neg' (how pairs are captured): refuse a store without
    them, or with fewer than 2 samples of one, before anything is measured."""
    from ..vectors.directions import class_moments

    if any(not is_prompt(method) for method in grid.methods):
        try:
            class_moments(stats, grid.layers[0])
        except ActstoreError as err:
            raise ActstoreError(f"store: {err} (a sweep's vectors are 'pos' minus 'neg', the classes of "
                                "contrast pairs)", param="store") from None


def folder_lock(out_dir: str | Path):
    """The sweep folder's writer lock (the store's mechanism: a lock file beside the folder, held
    while the run writes, released by the OS if the process dies); a second run is refused."""
    from ..stores.lock import WriterLock

    out = Path(out_dir)
    return WriterLock(out, "sweep", busy=f"{str(out)!r} is being written by {{holder}} (another `actstore eval` "
                                        "of this folder); wait for it to finish, or use another --out").acquire()


def _settings(grid: Grid, on_target: OnTarget, perplexity: PerplexityWindows, store: StoreGroup,
              request: SweepRequest, kl_prompts: list[str] | None = None, tokenizer=None) -> dict:
    """What a folder was measured with: a rerun with other settings is refused. The grid is not
    among them: runs of other layers, methods, k or seeds extend the same folder. With ``damage``
    kl, the KL prompts (their count and a digest of their text) and tokens are among them."""
    settings = {"protocol": on_target.name, "items": len(on_target.item_ids),
                "questions": int(np.unique(on_target.questions).size), "ppl_tokens": int(perplexity.n_tokens),
                "ppl_documents": perplexity.n_documents, "ppl_window": int(perplexity.window),
                "alpha_mode": grid.alpha_mode, "store_group": store.name,
                "store_data": store.attrs.get("data_version")}  # the store's content: another store is refused
    if store.spec.site != "resid":  # folders of residual sweeps keep their settings
        settings["site"] = store.spec.site
    if request.train_resample is not None:  # the training rows the vectors come from (folders without keep theirs)
        settings["train_resample"] = request.train_resample
    if str(Positions.parse(request.positions)) != "all":
        settings["positions"] = str(Positions.parse(request.positions))
    settings.update(_generation_settings(request, tokenizer))
    if kl_prompts is not None:  # folders without KL keep their settings
        import hashlib

        digest = hashlib.sha256("\0".join(kl_prompts).encode()).hexdigest()[:16]
        settings.update(damage=",".join(request.damage), kl_prompts=len(kl_prompts), kl_prompts_sha256=digest,
                        kl_tokens=int(request.kl_tokens))
    return settings


def _generation_settings(request: SweepRequest, tokenizer) -> dict:
    """What a judged, split or formatted generation sweep adds to its settings (nothing otherwise, so
    earlier folders keep theirs): the judge and its concept, the prompting baseline's instruction,
    the split's share, the chat format (the template's hash, the system prompt)."""
    settings = {}
    if request.judge is not None:
        settings["judge"] = request.judge_name
        if request.judge_model is not None:
            settings["judge_model"] = str(request.judge_model)
    if request.concept is not None and (request.judge is not None or any(map(is_prompt, request.methods))):
        settings.update(concept=request.concept, prompt_template=request.prompt_template)
    if request.select_split is not None:
        settings["select_split"] = float(request.select_split)
    if request.chat_template or request.system is not None:
        settings.update(request.chat.attrs(tokenizer))
    return settings


def _open_heldout(heldout, grid: Grid, loaded: LoadedModel, force: bool):
    """The held-out store as a dataset, checked against the grid and the model."""
    group = StoreGroup.open(heldout)
    missing = [layer for layer in grid.layers if layer not in group.spec.layers]
    if missing:
        raise ActstoreError(f"heldout_store: layers {missing} are not in {group.where}; capture the held-out texts "
                            "at the sweep's layers", param="heldout_store")
    group.check_model(loaded, force)
    return group.dataset(coords=("class", "pair_id"))


def _measure(run: _Sweep, on_forward: Forward, ppl_forward: Forward) -> Measurement:
    measures = run.on_target.measure(run.loaded, on_forward)
    nll, tokens = run.windows.nll(ppl_forward, run.loaded.model)
    return Measurement(measures, nll, tokens, getattr(run.on_target, "last_texts", None))


def _rows(key: ConfigKey, run: _Sweep, measured: Measurement):
    on_target, split = run.on_target, run.split
    labels = {} if split is None else {"prompt_id": split.prompt_ids, "split": split.labels}
    return (ItemRows(key, list(on_target.item_ids), on_target.questions, on_target.orders, measured.measures,
                     **labels, question_text=question_texts(on_target)),
            WindowRows(key, run.windows.documents, measured.nll, measured.tokens))


def _kl(run: _Sweep, steering: Callable[[], AbstractContextManager]) -> KLDamage | None:
    """The configuration's KL damage, the whole model under ``steering()`` (None without damage kl)."""
    return None if run.kl_batches is None else kl_damage(run.loaded, run.kl_batches, steering)


def _baseline(run: _Sweep) -> Measurement:
    """The unsteered measurement: measured once per folder, read back on resume."""
    if run.ledger.baseline is None:
        forward = plain_forward(run.loaded.model)
        base = _measure(run, forward, forward)
        # KL(P || P) = 0: the unsteered rows of kl.csv are written as 0, not measured
        kl_rows = None if run.kl_batches is None else KLRows.unsteered(sum(len(b.ids) for b in run.kl_batches))
        run.ledger.record_baseline(*_rows(BASELINE, run, base), base.texts, kl_rows, on_target=base.on_target,
                                   ppl=base.ppl)
    return Measurement(*run.ledger.baseline_measures())


@contextmanager
def _progress(request: SweepRequest, total: int) -> Iterator[Callable[[], None]]:
    if not request.progress or not total:
        yield lambda: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sweep {request.behavior_name}", unit="config")
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()


def _measure_layer(run: _Sweep, layer: int, configs: list[ConfigKey], tick: Callable[[], None]) -> None:
    """Every configuration of one layer not yet done (``configs``: the layer's, done ones included), from
    its cached block outputs where they fit, up to the pack size at a time (:mod:`.packing`)."""
    request = run.request
    layer_norm = residual_norm(run.stats, layer)
    vectors = LayerVectors(run.source, run.stats, layer, request.scheduler, request.letter_data)
    positions = Positions.parse(request.positions)
    size = pack_size(request.pack, run.loaded, run.on_target, run.windows.batches, request.cache_budget_mb)
    # The layer's one-off cost (its cached block outputs) counts in its first pack.
    started = time.perf_counter()
    with layer_forwards(run.loaded, layer, run.on_target.batches(), run.windows.batches, request.replay,
                        request.cache_budget_mb, run.source.spec.site) as active:
        for chunk in chunks(configs, size):
            todo = [key for key in chunk if not run.ledger.is_done(*key.as_tuple())]
            if not todo:
                continue
            added = {}  # key -> (vector, scale, its norm)
            for key in todo:
                vector = vectors.vector(key.method, parse_k(key.k))
                if run.heldout is not None and not run.ledger.is_separated(layer, key.method, key.k):
                    _record_separation(run, vector, key)
                norm = float(np.linalg.norm(vector.vector))
                added[key] = (vector, scale_for(key.alpha, run.grid.alpha_mode, norm, layer_norm), norm)
            measured = _measure_chunk(run, active, chunk, added, positions)
            kls = {key: _kl(run, partial(steer, run.loaded, *added[key][:2], positions=positions)) for key in todo}
            seconds = (time.perf_counter() - started) / len(todo)  # a pack's time, split evenly
            for key in todo:
                kl, (_, scale, norm) = kls[key], added[key]
                row = _result_row(run, key, measured[key], kl, scale=scale, vector_norm=norm, layer_norm=layer_norm,
                                  seconds=seconds)
                kl_rows = None if kl is None else KLRows(key, kl.kl_first, kl.kl)
                run.ledger.record(row, *_rows(key, run, measured[key]), measured[key].texts, kl_rows)
                tick()
            started = time.perf_counter()


def _measure_chunk(run: _Sweep, active, chunk: list[ConfigKey], added: dict, positions: Positions
                   ) -> dict[ConfigKey, Measurement]:
    """The measurements of ``added``'s configurations (``chunk``'s not done): one alone under :func:`steer`
    and the protocol's own steering (a served engine's); several in a :class:`~.packing.Pack`."""
    if len(chunk) == 1:
        (key,) = chunk
        vector, scale, _ = added[key]
        with (active() as (on_forward, ppl_forward), steer(run.loaded, vector, scale, positions=positions),
              run.on_target.steered(vector, scale, positions)):  # a served protocol steers its engine too
            return {key: _measure(run, on_forward, ppl_forward)}
    pack = Pack(run.loaded, pack_slots(chunk, {key: (v, scale) for key, (v, scale, _) in added.items()}), positions)
    with active() as forwards:
        measured = measure_packed(run.loaded, run.on_target, run.windows, forwards, pack)
    return {key: one for key, one in zip(chunk, measured) if key in added}


def _measure_prompt(run: _Sweep, key: ConfigKey, tick: Callable[[], None]) -> None:
    """The prompting baseline: the unsteered model continues each prompt formatted with the steering
    instruction; its perplexity is read on the same windows after the instruction (the whole
    model: the windows differ from those a layer's cache holds). No KL damage: results.csv NaN."""
    started = time.perf_counter()
    instruction = run.request.steering_instruction
    forward = plain_forward(run.loaded.model)
    instructed = run.on_target.instructed(instruction)
    measures = instructed.measure(run.loaded, forward)
    nll, tokens = run.windows.prefixed(instruction + "\n\n").nll(forward, run.loaded.model)
    measured = Measurement(measures, nll, tokens, instructed.last_texts)
    nan = float("nan")
    row = _result_row(run, key, measured, None, scale=nan, vector_norm=nan, layer_norm=nan,
                      seconds=time.perf_counter() - started)
    run.ledger.record(row, *_rows(key, run, measured), measured.texts, None)
    tick()


def _result_row(run: _Sweep, key: ConfigKey, steered: Measurement, kl: KLDamage | None, *, scale: float,
                vector_norm: float, layer_norm: float, seconds: float) -> ResultRow:
    """results.csv's row of one configuration: what was added, and its effects against the baseline
    (the KL damage's columns NaN without ``kl``)."""
    on_target, units, added_norm = run.on_target, run.units, abs(scale) * vector_norm
    kl_fields = {}
    if kl is not None:
        first, mean = kl.intervals()
        kl_fields = {"kl_first": first.estimate, "kl_first_ci_low": first.low, "kl_first_ci_high": first.high,
                     "kl_mean": mean.estimate, "kl_mean_ci_low": mean.low, "kl_mean_ci_high": mean.high}
    return ResultRow(behavior=run.request.behavior_name, model=run.loaded.model_id, protocol=on_target.name,
                     layer=key.layer, method=key.method, k=key.k, alpha=key.alpha, alpha_mode=run.grid.alpha_mode,
                     scale=scale, added_norm=added_norm, norm_fraction=added_norm / layer_norm,
                     vector_norm=vector_norm, residual_norm=layer_norm,
                     **effects(steered, run.base, units, on_target.primary),
                     n_items=len(on_target.item_ids), n_questions=units.n_questions,
                     ppl_tokens=int(run.windows.n_tokens), ppl_documents=run.windows.n_documents, seconds=seconds,
                     **kl_fields, **harmonic_fields(steered.measures, run.split))


def _record_separation(run: _Sweep, vector, key: ConfigKey) -> None:
    from .monitor import project, separation

    heldout = run.heldout
    sep = separation(project(heldout.attrs.get("store", "heldout"), vector, dataset=heldout))
    run.ledger.record_separation(sep.row(behavior=run.request.behavior_name, layer=key.layer, method=key.method,
                                         k=key.k))


"""Vectors as monitors: projections of a store's samples onto a vector, and how
well they separate the classes (AUROC and Cohen's d, each with its interval).

The projection of a sample h onto a vector v is ``h . v / |v|`` (repeng's
``project_onto_direction``), at the vector's layer. It is lazy: a dask-backed
:class:`xarray.DataArray` aligned with the store's samples, read out of core
chunk by chunk like the statistics.

Separation is measured on held-out samples (a store of the test split): AUROC
is P(projection of a pos sample > that of a neg sample), ties counting half;
Cohen's d is the difference of class means over their pooled standard
deviation. Their 95% intervals are percentile bootstraps over pairs (a pos and
a neg text of one ``pair_id`` resampled together) when every sample has its
pair, else over each class independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError, NoActivationsError, StoreError, VectorError
from ..stores.group import require_layers
from ..stores.location import StoreLocation
from ..stores.reader import open_store
from ..vectors.info import k_label
from ..vectors.vector import SteeringVector
from .intervals import Interval, separation_intervals

SEPARATION_COLUMNS = ["vector", "layer", "method", "k", "pos", "neg", "n_pos", "n_neg", "paired", "auroc",
                      "auroc_ci_low", "auroc_ci_high", "cohens_d", "d_ci_low", "d_ci_high"]


def project(store, vector: SteeringVector, model: str | None = None, *, dataset=None):
    """Lazy projections ``(sample,)`` of ``store``'s samples onto ``vector`` at its layer,
    with the store's per-sample coordinates (class, pair_id, ...). ``dataset``: an
    already opened :func:`actstore.open_store` dataset instead of ``store``.

    >>> projections = project("acts.zarr", load_vector("v.safetensors"))
    >>> projections.dims, projections.shape
    (('sample',), (14,))
    """
    ds = dataset if dataset is not None else open_store(store, model)
    if ds.attrs.get("stats_only"):  # moments, no rows: an empty projection would say "class has no samples"
        raise NoActivationsError(f"projecting onto a vector needs the activations, and {str(store)!r} group "
                                 f"{ds.attrs.get('group')!r} was captured stats-only (moments, no rows); capture "
                                 "it again without stats-only")
    if not ds.sizes["sample"]:  # a capture interrupted before its first window's commit
        raise StoreError(f"{str(store)!r} group {ds.attrs.get('group')!r} holds no samples yet")
    _check_same_weights(store, ds, vector)
    require_layers(ds["layer"].values, vector.layer, repr(str(store)), param="vector")
    if ds.sizes["hidden"] != vector.hidden_size:
        raise VectorError(f"the vector has {vector.hidden_size} dims; {str(store)!r} holds {ds.sizes['hidden']}",
                          param="vector")
    direction = vector.vector.astype(np.float64)
    norm = float(np.linalg.norm(direction))
    if not np.isfinite(norm) or norm == 0:
        raise VectorError("the vector is zero or not finite: it projects onto nothing", param="vector")
    acts = ds["acts"].sel(layer=vector.layer)
    projection = acts.dot(_as_dataarray(direction / norm), dim="hidden").drop_vars("layer")
    projection.name = "projection"
    projection.attrs = {"layer": vector.layer, "method": vector.method or "", "k": k_label(vector.k),
                        "definition": "h . v / |v|"}
    return projection


def _check_same_weights(store, ds, vector: SteeringVector) -> None:
    """A vector made from other weights measures nothing about this store (steer and eval refuse it too)."""
    made_for = vector.info.fingerprint
    captured = ds.attrs.get("model_fingerprint")
    if made_for and captured and made_for != captured:
        raise VectorError(f"the vector was made from model weights {made_for}; {str(store)!r} was captured from "
                          f"{ds.attrs.get('model_id', 'another model')!r} (weights {captured}): project a store "
                          "captured from the vector's model", param="vector")



def _as_dataarray(values: np.ndarray):
    import xarray as xr

    return xr.DataArray(values, dims=("hidden",))


@dataclass(frozen=True)
class Separation:
    """How well projections separate ``pos`` from ``neg`` (see the module docstring)."""

    auroc: Interval
    cohens_d: Interval
    n_pos: int
    n_neg: int
    paired: bool

    def row(self, **labels) -> dict:
        return {**labels, "n_pos": self.n_pos, "n_neg": self.n_neg, "paired": self.paired,
                "auroc": self.auroc.estimate, "auroc_ci_low": self.auroc.low, "auroc_ci_high": self.auroc.high,
                "cohens_d": self.cohens_d.estimate, "d_ci_low": self.cohens_d.low, "d_ci_high": self.cohens_d.high}


def class_scores(values, classes, pair_ids, pos: str = "pos", neg: str = "neg"):
    """``(pos_scores, neg_scores, paired)``: aligned by pair when every pos and neg
    sample has exactly one partner of the other class, else the two classes as they come."""
    values = np.asarray(values, dtype=np.float64)
    classes = np.asarray(classes).astype(str)
    pair_ids = np.asarray(pair_ids)
    present = sorted(set(classes.tolist()))
    for label in (pos, neg):
        if label not in present:
            raise ActstoreError(f"class {label!r} has no samples; the samples have classes {present}",
                                param="pos" if label == pos else "neg")
    p_mask, n_mask = classes == pos, classes == neg
    p_ids, n_ids = pair_ids[p_mask], pair_ids[n_mask]
    if (len(np.unique(p_ids)) == len(p_ids) == len(n_ids) == len(np.unique(n_ids))
            and set(p_ids.tolist()) == set(n_ids.tolist())):
        p_order, n_order = np.argsort(p_ids, kind="stable"), np.argsort(n_ids, kind="stable")
        return values[p_mask][p_order], values[n_mask][n_order], True
    return values[p_mask], values[n_mask], False


def separation(projection, pos: str = "pos", neg: str = "neg") -> Separation:
    """AUROC and Cohen's d of a projection (:func:`project`, computed here), with intervals."""
    values = np.asarray(projection.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ActstoreError("non-finite projections: the store or the vector holds NaN/Inf")
    pos_scores, neg_scores, paired = class_scores(values, projection["class"].values,
                                                  projection["pair_id"].values, pos, neg)
    auroc, d = separation_intervals(pos_scores, neg_scores, paired)
    return Separation(auroc, d, int(pos_scores.size), int(neg_scores.size), paired)


def plot_histograms(entries: Sequence[tuple[str, object, Separation]], path: str | Path, pos: str = "pos",
                    neg: str = "neg") -> Path:
    """One panel per ``(name, projection, separation)``: the projections of each class
    as overlaid histograms, AUROC and d with intervals in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(entries), 3)
    lines = -(-len(entries) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * lines + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, (name, projection, sep) in zip(axes, entries):
        values = np.asarray(projection.values, dtype=np.float64)
        classes = np.asarray(projection["class"].values).astype(str)
        bins = np.histogram_bin_edges(values[(classes == pos) | (classes == neg)], bins=30)
        for label, color in ((pos, "C0"), (neg, "C3")):
            count = int((classes == label).sum())
            ax.hist(values[classes == label], bins=bins, alpha=0.55, color=color, label=f"{label} (n={count})")
        ax.set_title(f"{name}\nAUROC {sep.auroc:.2f}   d {sep.cohens_d:.2f}", fontsize=8)
        ax.set_xlabel("projection h.v/|v|", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(entries):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def monitor(store, vectors: Sequence[tuple[str, SteeringVector]], out_dir: str | Path | None = None, *,
            model: str | None = None, pos: str = "pos", neg: str = "neg", scheduler: str | None = None,
            plot: bool = True):
    """Project ``store`` onto each named vector; return the separation table
    (:data:`SEPARATION_COLUMNS`) as a :class:`pandas.DataFrame`. With ``out_dir``, also write
    there ``projections.zarr`` (one variable per vector, sample coordinates kept),
    ``separation.csv`` and (``plot``) ``projections.png``."""
    import pandas as pd
    import xarray as xr

    from ..stats.streaming import scheduler_context

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_output_apart(store, out)
        for written in (out / "projections.zarr", out / "projections.zarr.partial"):  # both are replaced
            _check_output_is_ours(written)
        out.mkdir(parents=True, exist_ok=True)
    ds = open_store(store, model)
    names = [name for name, _ in vectors]
    if len(set(names)) != len(names):
        raise ActstoreError(f"two vectors share a name: {names}; rename one file", param="vector")
    lazy = {name: project(store, vector, dataset=ds) for name, vector in vectors}
    with scheduler_context(scheduler):
        computed = xr.Dataset(lazy).compute()
    keep = [c for c in ("class", "pair_id", "text_index", "token_index") if c in computed.coords]
    computed = computed.reset_coords([c for c in computed.coords if c not in keep], drop=True)
    for name in computed.coords:
        if computed[name].dtype.kind in "UO":
            computed[name] = computed[name].astype(str)
    computed.attrs["actstore"] = PROJECTIONS_FORMAT
    if out is not None:
        _write_zarr(computed, out / "projections.zarr")
    rows, entries = [], []
    for name, vector in vectors:
        sep = separation(computed[name], pos, neg)
        rows.append(sep.row(vector=name, layer=vector.layer, method=vector.method or "", k=k_label(vector.k),
                            pos=pos, neg=neg))
        entries.append((name, computed[name], sep))
    table = pd.DataFrame(rows, columns=SEPARATION_COLUMNS)
    if out is None:
        return table
    table.to_csv(out / "separation.csv", index=False)
    if plot:
        plot_histograms(entries, out / "projections.png", pos, neg)
    return table


PROJECTIONS_FORMAT = "actstore.projections/1"


def _check_output_apart(store, out: Path) -> None:
    """Refuse an output folder that is the input store or inside it (its files would be written
    into the store the projections are read from)."""
    if not isinstance(store, (str, Path)) or "://" in str(store):
        return
    source, target = Path(store).resolve(), out.resolve()
    if target == source or source in target.parents:
        raise ActstoreError(f"--out {str(out)!r} is inside the input store {str(store)!r}; write the projections "
                            "to a folder outside it", param="out_dir")


def _check_output_is_ours(path: Path) -> None:
    """An output replaces only what an earlier run of the same command wrote: ``path`` may be
    missing or a projections store (its root attrs say so), never anything else (e.g. the input
    store itself, when ``out_dir`` is the store's folder)."""
    import json

    if not path.exists() and not path.is_symlink():
        return
    try:
        ours = json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("actstore") \
            == PROJECTIONS_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if path.is_symlink() or not ours:
        raise ActstoreError(f"{str(path)!r} exists and is not a projections store that `actstore project` wrote; "
                            "it would be replaced: choose another --out or move it away", param="out_dir")


def _write_zarr(dataset, path: Path) -> None:
    """A small, self-describing store of the projections (replaced whole, never half-written
    where a reader would find it: written beside, then renamed)."""
    import shutil
    import warnings

    _check_output_is_ours(path)

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3's note that strings have no stable spec yet
        dataset.to_zarr(tmp, mode="w", consolidated=False)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


__all__ = ["SEPARATION_COLUMNS", "Separation", "class_scores", "monitor", "plot_histograms", "project",
           "separation"]


def capture_heldout(loaded, data, layers, position: str = "last") -> str:
    """Capture a held-out contrast file (``data``) at ``layers`` into an in-memory store
    and return its URL. ``position`` is a training store's recorded position (``last``,
    ``last-1``, ``mean``, ``all``), so the held-out rows are read where the vectors were."""
    from ..capture import CaptureOptions, capture_to_store

    options = CaptureOptions.at_position(position)
    url = str(StoreLocation.in_memory("actstore-heldout"))
    capture_to_store(loaded, data, url, options=options.replace(layers=sorted(set(int(x) for x in layers)),
                                                               progress=False))
    return url

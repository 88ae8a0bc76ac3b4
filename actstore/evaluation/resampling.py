"""The vectors' own sampling noise in the sweep's intervals: replicate sweeps on resampled training sets.

A sweep's intervals (:mod:`actstore.evaluation.frontier`) resample the test questions and the
perplexity documents and hold each vector fixed; but a vector is estimated from a few hundred
training pairs, and another draw of them would give another vector. ``train_resample``
(``actstore eval --train-resample``; :class:`~actstore.stats.subsets.Resample`) builds every
vector of a sweep from the statistics of a resample of the training rows: ``bootstrap:SEED``
(pairs, or questions with their option-swapped twins, drawn with replacement) or ``half:I/N``
(the I-th of N disjoint parts). R such sweeps of the same test items and windows are the
**replicates**; :func:`combine` turns them into intervals that include the vectors' variation.
The resample reaches the vectors built from the statistics: ``enr`` and the ``random`` controls
(which carry enr's norm or values), and ``whitened`` and ``lda``, whose covariance is computed
over the same resampled rows (:func:`actstore.stats.covariance.group_covariance` weighs each row
by its frequency weight); methods that read the store's rows otherwise (pca and probe: the
pairs' differences and a probe fit; the letter control: option-swapped twins) are refused with
``train_resample`` (:func:`check_train_resample`).

The estimator (a two-stage bootstrap, on the paths). For replicate r, configuration c:
``S_rc`` the measured shift and ``L_rc`` the log perplexity inflation; ``S̄_c``, ``L̄_c`` their
means over replicates and ``D_rc = (S_rc - S̄_c, L_rc - L̄_c)`` replicate r's departure, the
vectors' noise (a whole path moves together: same vectors at every alpha). In each of B
resamples b, one replicate ``r_b`` is drawn uniformly (``default_rng(seed + 2)``) and the
questions and documents are drawn as every sweep draws them (:meth:`Evidence.draws`: the same
``seed``, so every replicate sees the same test resample b). The resample's path is

    T_b + c * D_{r_b},

``T_b`` the test-noise draw: the ``fixed`` folder's draw b where one is given (the sweep of the
vectors from every training pair; its path is then the point estimate), else replicate
``r_b``'s own draw b recentred on the replicates' mean path (which is the point estimate). The
frontier and the contrasts are read off these paths as a sweep reads its own (interpolation
redone in each resample, Holm over each behavior's family): percentile intervals whose
variance is about Var_test + c² Var_replicates (the law of total variance). With c = 1 and no
``fixed`` folder, resample b's path is replicate r_b's own draw b: the figure recomputed in a drawn
replicate on a drawn test set, the two-stage bootstrap as it is usually written.

``c`` puts the replicates' spread on the scale of the vectors the point estimate speaks of:
1 for bootstrap replicates (a bootstrap draw has as many pairs as the training set), and
``1/sqrt(N)`` for the parts of ``half:I/N`` (a part has 1/N of the pairs). Assumptions: the
replicates are exchangeable draws of the vector's sampling distribution; the vector's variance
shrinks as 1/(pairs), as a mean difference's does (for top-k selection it is an approximation);
a part's vectors may also differ from the full set's on average (a top-k chosen on fewer pairs
is chosen worse): that bias is not in the interval, and with ``fixed`` the point estimate is
the full vectors' own. With few replicates (2 halves), the spread's own estimate is rough.

The **fixed-vector interval** beside it is the same computation with ``c = 0`` (the fixed
folder's own interval where one is given; else that of the replicates' mean path on the same
test draws); ``width_ratio`` = widened width / fixed width says how much wider the vectors'
noise makes each interval. Replicates that are identical give the fixed interval exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from ..stats.subsets import Resample
from ..vectors.methods import METHODS
from .files import replace_file
from .frontier import Contrast
from .frontier import contrasts as contrast_rows
from .frontier import frontier as frontier_rows
from .grid import DEFAULT_BUDGETS
from .intervals import N_RESAMPLES, SEED
from .paths import Evidence, Paths
from .rows import KEY

__all__ = ["Combined", "Replicate", "check_train_resample", "combine", "combine_tables", "mixed_paths",
           "replicate_scale"]

SETTING = "train_resample"  # the folder's setting that names its resample


def check_train_resample(spec: str | None, methods) -> str | None:
    """``spec`` written the one way (None stays None); refused where a method's vector reads the
    store's rows rather than its statistics (the resample reaches the statistics only)."""
    if spec is None:
        return None
    resample = Resample.parse(spec)
    reading = [m for m in methods if m in METHODS and METHODS[m].reads_rows]
    if reading:
        reached = ", ".join(m for m, entry in METHODS.items() if entry.kind == "extraction" and not entry.reads_rows)
        raise ActstoreError(f"train_resample {spec!r}: methods {reading} read the store's rows (the pairs' "
                            "differences, a probe fit, option-swapped twins), which the resample does not reach; "
                            f"resample a sweep of {reached} (and random controls, which carry enr's vector)",
                            param=("train_resample", "methods"))
    return str(resample)


@dataclass(frozen=True)
class Replicate:
    """One sweep folder's tables (results.csv, items.csv, windows.csv) and settings."""

    folder: str
    settings: dict
    results: object  # pandas.DataFrame
    items: object
    windows: object

    @classmethod
    def read(cls, folder: str | Path) -> Replicate:
        from .ledger import Ledger

        ledger = Ledger.open_existing(folder)
        results = ledger.results()
        if not len(results):
            raise ActstoreError(f"{str(folder)!r} holds no measured configuration", param="folders")
        return cls(str(folder), dict(ledger.settings), results, ledger.items(), ledger.windows())


def replicate_scale(specs: list[str]) -> float:
    """``c`` of the module's estimator for replicates resampled by ``specs``: 1 for bootstraps,
    1/sqrt(N) for parts of N; refused for a mixture, a repeat, or fewer than two."""
    if len(specs) < 2:
        raise ActstoreError(f"combine needs at least two replicate folders, got {len(specs)}", param="folders")
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise ActstoreError(f"replicates {repeated} given twice: the same resample gives the same vectors",
                            param="folders")
    kinds = {(r.kind, r.parts) for r in map(Resample.parse, specs)}
    if len(kinds) > 1:
        raise ActstoreError(f"replicates of different resamples ({', '.join(specs)}): combine bootstraps with "
                            "bootstraps, or parts of one N", param="folders")
    return math.sqrt(Resample.parse(specs[0]).size_ratio)


def mixed_paths(replicates: list[Paths], scale: float, fixed: Paths | None = None, seed: int = SEED) -> Paths:
    """The two-stage bootstrap's paths (module docstring): ``replicates`` measured on the same
    configurations in the same order with the same test draws; ``scale`` is ``c``."""
    S = np.stack([p.shift for p in replicates])  # (R, configs)
    L = np.stack([p.log_inflation for p in replicates])
    dS, dL = S - S.mean(0), L - L.mean(0)
    n = replicates[0].shift_draws.shape[1]
    pick = np.random.default_rng(seed + 2).integers(0, len(replicates), n)
    columns = np.arange(n)
    if fixed is None:
        shift_test = np.stack([p.shift_draws for p in replicates])[pick, :, columns].T - dS[pick].T
        inflation_test = np.stack([p.log_inflation_draws for p in replicates])[pick, :, columns].T - dL[pick].T
        point_shift, point_inflation, base = S.mean(0), L.mean(0), replicates[0]
    else:
        shift_test, inflation_test = fixed.shift_draws, fixed.log_inflation_draws
        point_shift, point_inflation, base = fixed.shift, fixed.log_inflation, fixed
    return Paths(base.evidence, point_shift, point_inflation, shift_test + scale * dS[pick].T,
                 inflation_test + scale * dL[pick].T, base.index)


def _aligned(tables: list[Replicate]) -> list[object]:
    """Each folder's results on the configurations every folder measured, in one order;
    refused where the test items or perplexity windows differ."""
    first = tables[0]
    for other in tables[1:]:
        for name, columns in (("items", ["item", "question"]), ("windows", ["window", "document", "tokens"])):
            mine, theirs = (getattr(t, name) for t in (first, other))
            mine, theirs = (f[f["method"] == "none"].reindex(columns=columns) for f in (mine, theirs))
            if not mine.reset_index(drop=True).equals(theirs.reset_index(drop=True)):
                raise ActstoreError(f"{other.folder!r} and {first.folder!r} measured other test {name}; replicates "
                                    "share the held-out items and the perplexity windows", param="folders")
    keys = ["behavior", *KEY]
    common = set.intersection(*(set(map(tuple, t.results[keys].astype(str).to_numpy())) for t in tables))
    if not common:
        raise ActstoreError("the replicate folders have no configuration in common", param="folders")
    out = []
    for t in tables:
        results = t.results[t.results[keys].astype(str).apply(tuple, axis=1).isin(common)]
        out.append(results.sort_values(keys, kind="stable").reset_index(drop=True))
    return out


@dataclass(frozen=True)
class Combined:
    """What :func:`combine` finds: ``contrasts`` and ``frontier`` (pandas.DataFrame) with the
    widened figures and the fixed-vector ones (``fixed_*``) side by side, ``width_ratio`` their
    widths' ratio; ``replicates`` folders, ``scale`` the ``c`` applied to their spread."""

    contrasts: object
    frontier: object
    replicates: tuple[str, ...]
    fixed: str | None
    scale: float

    def write(self, out_dir: str | Path) -> Path:
        """resampled_contrasts.csv, resampled_frontier.csv and resampled.md in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        replace_file(out / "resampled_contrasts.csv", self.contrasts.to_csv(index=False))
        replace_file(out / "resampled_frontier.csv", self.frontier.to_csv(index=False))
        replace_file(out / "resampled.md", "\n".join(self.summary_lines()) + "\n")
        return out / "resampled.md"

    def summary_lines(self) -> list[str]:
        centre = f"the vectors of {self.fixed!r}" if self.fixed else "the replicates' mean path"
        lines = [f"Contrasts with the vectors' sampling noise: {len(self.replicates)} replicate sweeps "
                 f"({', '.join(self.replicates)}), spread scaled by c = {self.scale:.3g}, centred on {centre} "
                 "(actstore.evaluation.resampling).", "",
                 "| behavior | contrast | layer | budget | method k | estimate | fixed vectors | with their noise "
                 "| width ratio | p (Holm) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.contrasts.itertuples(index=False):
            lines.append(f"| {r.behavior} | {r.contrast} | {r.layer} | {r.budget:g} | {r.method} {r.k} | "
                         f"{r.estimate:+.3f} | [{r.fixed_ci_low:+.3f}, {r.fixed_ci_high:+.3f}] | "
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] | {r.width_ratio:.2f} | {r.p_holm:.3g} |")
        return lines


def _side_by_side(widened: list, fixed: list, keys: list[str], figures: list[tuple[str, str, str]]):
    """Rows of ``widened`` with ``fixed``'s bounds as ``fixed_*`` and each figure's width ratio."""
    import pandas as pd

    wide = pd.DataFrame([asdict(r) for r in widened])
    if not len(wide):
        return wide
    narrow = pd.DataFrame([asdict(r) for r in fixed])[keys + [b for _, lo, hi in figures for b in (lo, hi)]]
    frame = wide.merge(narrow, on=keys, how="left", suffixes=("", "_fixed"))
    for ratio, low, high in figures:
        frame = frame.rename(columns={f"{low}_fixed": f"fixed_{low}", f"{high}_fixed": f"fixed_{high}"})
        with np.errstate(all="ignore"):
            frame[ratio] = (frame[high] - frame[low]) / (frame[f"fixed_{high}"] - frame[f"fixed_{low}"])
    return frame


def combine_tables(replicates: list[Replicate], scale: float, fixed: Replicate | None = None, budgets=None,
                   family: list[Contrast] | None = None, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                   margin: float | None = None) -> Combined:
    """:func:`combine` of tables already read (``scale``: ``c``)."""
    budgets = tuple(budgets or DEFAULT_BUDGETS)
    tested = {} if margin is None else {"margin": float(margin)}  # non-inferiority and equivalence, as a sweep's
    tables = replicates + ([fixed] if fixed is not None else [])
    aligned = _aligned(tables)
    paths = [Paths.of(Evidence.from_tables(results, t.items, t.windows), n_resamples, seed)
             for results, t in zip(aligned, tables)]
    reps, base = paths[:len(replicates)], (paths[-1] if fixed is not None else None)
    widened, narrow = mixed_paths(reps, scale, base, seed), mixed_paths(reps, 0.0, base, seed)
    per_replicate = [[row.estimate for row in contrast_rows(p, budgets, family, **tested)] for p in reps]
    keys = ["behavior", "contrast", "layer", "budget", "method", "k", "reference"]
    table = _side_by_side(contrast_rows(widened, budgets, family, **tested),
                          contrast_rows(narrow, budgets, family, **tested), keys,
                          [("width_ratio", "ci_low", "ci_high")])
    if len(table):
        spread = np.array(per_replicate, dtype=np.float64)
        with np.errstate(all="ignore"):
            table["replicates_min"], table["replicates_max"] = np.nanmin(spread, 0), np.nanmax(spread, 0)
    rows = _side_by_side(frontier_rows(widened, budgets), frontier_rows(narrow, budgets),
                         ["behavior", "layer", "method", "k", "budget"],
                         [("width_ratio", "ci_low", "ci_high"), ("diff_width_ratio", "diff_ci_low", "diff_ci_high")])
    return Combined(table, rows, tuple(t.folder for t in replicates), None if fixed is None else fixed.folder,
                    float(scale))


def _check_settings(replicates: list[Replicate], fixed: Replicate | None) -> list[str]:
    """The replicates' resample specs, refused where a folder is not a replicate or where any
    other setting differs between the folders."""
    specs = []
    for r in replicates:
        if r.settings.get(SETTING) is None:
            raise ActstoreError(f"{r.folder!r} was not measured with train_resample; a replicate is a sweep with "
                                "--train-resample (give the full training set's sweep as fixed)", param="folders")
        specs.append(str(r.settings[SETTING]))
    if fixed is not None and fixed.settings.get(SETTING) is not None:
        raise ActstoreError(f"fixed folder {fixed.folder!r} was measured on a resample ({fixed.settings[SETTING]}); "
                            "fixed is the sweep of every training pair", param="fixed")
    folders = replicates + ([fixed] if fixed else [])
    # a folder older than "store_data" (its store's identity) cannot say which store it read: not compared
    ignored = {SETTING} | ({"store_data"} if any("store_data" not in t.settings for t in folders) else set())
    rest = [{k: v for k, v in t.settings.items() if k not in ignored} for t in folders]
    for t, settings in zip(folders, rest):
        if settings != rest[0]:
            raise ActstoreError(f"{t.folder!r} was measured with other settings than {replicates[0].folder!r} "
                                f"({settings} against {rest[0]})", param="folders")
    return specs


def combine(folders, fixed: str | Path | None = None, budgets=None, contrasts: list[str] | None = None,
            n_resamples: int = N_RESAMPLES, seed: int = SEED, margin: float | None = None) -> Combined:
    """Intervals that include the vectors' sampling noise, from replicate sweep folders
    (``actstore eval --train-resample``, each its own resample of the training set, the same
    test items and windows): the frontier and the contrasts (``contrasts``: pre-specified specs
    as ``--contrasts`` writes them; default the sweep's default family) at ``budgets``, each
    widened interval beside the fixed-vector one (module docstring). ``fixed``: the folder of
    the sweep on every training pair, whose vectors the intervals are then centred on. ``margin``:
    the contrasts' non-inferiority and equivalence tests, on the widened draws too.

    >>> combined = combine(["half1", "half2"])  # two sweeps with --train-resample half:1/2, half:2/2
    >>> list(combined.contrasts[["contrast", "estimate", "fixed_ci_low", "ci_low", "width_ratio"]].columns)
    ['contrast', 'estimate', 'fixed_ci_low', 'ci_low', 'width_ratio']
    """
    replicates = [Replicate.read(f) for f in folders]
    base = Replicate.read(fixed) if fixed is not None else None
    scale = replicate_scale(_check_settings(replicates, base))
    family = [Contrast.parse(c) for c in contrasts] if contrasts else None
    return combine_tables(replicates, scale, base, budgets, family, n_resamples, seed, margin)

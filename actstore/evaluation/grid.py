"""What a sweep measures: the grid of (layer, method, k, alpha), its vectors, and the store they come from.

* :class:`Grid`: layers, ks, alphas (and what an alpha means), methods and
  controls, perplexity budgets; validated when made, before any model work.
* Controls go through the grid like methods, at the same alphas, so they meet
  the vectors on the same frontier (:data:`CONTROLS`): ``random`` is, per seed
  of ``control_seeds``, a random direction at the ENR vector's norm (dense) or a
  random support of size k carrying the ENR vector's values (sparse), labelled
  ``random:<seed>``; ``letter`` is the answer-letter direction of an
  option-swapped A/B capture (:mod:`actstore.vectors.controls`).
* ``prompt`` (:data:`PROMPT_METHOD`) is no vector: the prompting baseline, the unsteered model
  told the concept by an instruction (:mod:`actstore.evaluation.selection`). It has no layer,
  k or alpha: its one configuration is :data:`PROMPT_KEY` (layer -1, k "none", alpha 0), kept
  off the alpha paths of the frontier (a point, not a path).
* The training store is one :class:`~actstore.stores.StoreGroup`, opened once:
  the grid is checked against what it captured (:meth:`Grid.check_store`, from
  its attributes, before the model loads), the model once by the handle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError
from ..stores.group import StoreGroup
from ..vectors.info import k_label
from ..vectors.methods import METHODS
from .rows import ConfigKey

DEFAULT_BUDGETS = (1.05, 1.25, 2.0)
DEFAULT_FRACTIONS = (0.005, 0.01, 0.02, 0.04, 0.08)
DEFAULT_PPL_TOKENS = 4096
ALPHA_MODES = ("scale", "norm", "fraction")
CONTROLS = ("random", "letter")
RANDOM_BASE = "enr"  # the vector whose norm (dense) or values (sparse) a random control carries
PROMPT_METHOD = "prompt"  # the prompting baseline: an instruction, no vector
# Its one configuration: no layer (-1: the prompt acts on the input), no k, no factor (alpha 0, which
# keeps it off every alpha path: paths start from alpha 0 and read the positive alphas).
PROMPT_KEY = ConfigKey(-1, PROMPT_METHOD, "none", 0.0)


def is_control(method: str) -> bool:
    """Whether a results row's ``method`` is a control (``random:<seed>``, ``letter``)."""
    return str(method).split(":")[0] in CONTROLS


def is_prompt(method: str) -> bool:
    """Whether a results row is the prompting baseline's (:data:`PROMPT_METHOD`)."""
    return str(method) == PROMPT_METHOD


def family_of(method: str) -> str:
    """The family a row's q-value is computed in: "control", "prompt" or "vector"."""
    return "control" if is_control(method) else ("prompt" if is_prompt(method) else "vector")


_GRID_PARAMS = {"alphas": ("alphas", "fractions")}  # an alpha is an alpha or a fraction of the residual norm


@dataclass(frozen=True)
class Grid:
    """What a sweep measures, validated on construction (before any model work).

    ``alphas``: scales (``alpha_mode="scale"``), added norms (``"norm"``) or
    fractions of the layer's residual norm (``"fraction"``). ``methods``: the
    extraction methods and controls (:data:`CONTROLS`) of :data:`actstore.vectors.methods.METHODS`,
    not its imported kinds; ``control_seeds``: the seeds of a seeded control (one
    vector each).
    """

    layers: tuple[int, ...]
    ks: tuple[int | None, ...]
    alphas: tuple[float, ...]
    alpha_mode: str = "fraction"
    methods: tuple[str, ...] = ("enr",)
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    control_seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        if not self.layers:
            raise ActstoreError("layers: at least one layer is needed")
        if not self.ks:
            raise ActstoreError("ks: at least one k (or 'dense') is needed")
        known = [name for name, entry in METHODS.items() if entry.kind != "imported"]  # what a sweep can build
        known.append(PROMPT_METHOD)
        unknown = sorted(set(self.methods) - set(known))
        if unknown or not self.methods:
            raise ActstoreError(f"methods: unknown {unknown}; expected some of {known}", param="methods")
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
        if not self.control_seeds or any(isinstance(s, bool) or int(s) < 0 for s in self.control_seeds):
            raise ActstoreError(f"control seeds {list(self.control_seeds)}: expected non-negative integers",
                                param="control_seeds")
        for name in ("layers", "ks", "methods", "alphas", "budgets", "control_seeds"):  # each value measured once
            values = list(getattr(self, name))
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ActstoreError(f"{name}: {', '.join(repeated)} given twice; give each value once",
                                    param=_GRID_PARAMS.get(name, name))

    def check_store(self, store: StoreGroup) -> None:
        """Layers and k against what the store group captured (its layers, its hidden size; nothing
        read but its attributes)."""
        spec = store.spec
        missing = [layer for layer in self.layers if layer not in spec.layers]
        if missing:
            raise ActstoreError(f"layers {missing} are not in {store.where}; it has layers {spec.layers}",
                                param="layers")
        too_big = [k for k in self.ks if k is not None and k > spec.hidden_size]
        if too_big:
            raise ActstoreError(f"k {too_big}: larger than the hidden size of {store.where} ({spec.hidden_size})")

    def vector_methods(self) -> list[str]:
        """The ``method`` labels of the results: each method, ``random:<seed>`` per control seed."""
        labels = []
        for method in self.methods:
            if is_prompt(method):
                continue
            labels += [f"{method}:{int(s)}" for s in self.control_seeds] if METHODS[method].seeded else [method]
        return labels

    def configurations(self) -> list[ConfigKey]:
        """Every (layer, method, k, alpha). The dense vector of a method that ranks another's
        vector (``refines``: the whitened dense vector is the plain one, Sigma^1/2 Sigma^-1/2 v
        = v) is measured once, as the other's, when both run. The prompting baseline is one
        configuration, :data:`PROMPT_KEY`, first."""
        prompt = [PROMPT_KEY] if PROMPT_METHOD in self.methods else []
        return prompt + [ConfigKey(layer, method, k_label(k), float(alpha)) for layer in self.layers
                         for method in self.vector_methods() for k in self.ks for alpha in self.alphas
                         if not (k is None and METHODS[method.partition(":")[0]].refines in self.methods)]


class LayerVectors:
    """The vectors of one layer of ``store``, methods and controls alike (each built once)."""

    def __init__(self, store: StoreGroup, stats, layer: int, scheduler: str | None = None,
                 letter_data: str | Path | None = None):
        from ..vectors.build import LayerMethods

        self.store, self.layer, self.letter_data = store, int(layer), letter_data
        self.methods = LayerMethods(store, stats, layer, scheduler=scheduler)

    def vector(self, method: str, k: int | None):
        """The vector of a results row's ``method`` (``random:<seed>`` for a seeded control)."""
        name, _, seed = method.partition(":")
        control = {"random": self._random, "letter": self._letter}.get(name)
        return control(k, seed) if control is not None else self.methods.vector(method, k)

    def _random(self, k: int | None, seed: str):
        from ..vectors.controls import random_control

        return random_control(self.methods.vector(RANDOM_BASE, k), int(seed))

    def _letter(self, k: int | None, seed: str = ""):
        from ..vectors.controls import letter_control, twin_source

        data = self.letter_data if self.letter_data is not None else twin_source(self.store)
        return letter_control(self.store, self.layer, data, k)


def residual_norm(stats, layer: int) -> float:
    """Root-mean-square norm of the captured activations at ``layer``, over all
    classes: sqrt(sum_i E[h_i^2]), from the per-class count, mean and variance."""
    sel = stats.sel(layer=layer)
    count = sel["count"].values.astype(np.float64)
    mean = sel["mean"].values.astype(np.float64)
    var = np.nan_to_num(sel["var"].values.astype(np.float64))
    second = var * ((count - 1) / count)[:, None] + mean ** 2  # E[h^2] per class
    return float(math.sqrt(float((second * count[:, None]).sum(0).sum() / count.sum())))


def scale_for(alpha: float, alpha_mode: str, vector_norm: float, layer_norm: float) -> float:
    """The scale that multiplies the vector for ``alpha`` in ``alpha_mode``."""
    if alpha_mode == "scale":
        return alpha
    added_norm = alpha if alpha_mode == "norm" else alpha * layer_norm
    return added_norm / vector_norm if vector_norm > 0 else 0.0


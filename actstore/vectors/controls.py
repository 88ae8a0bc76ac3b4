"""Control vectors: what any push of the same size does, and what the answer letter alone does.

A shift or a perplexity cost means little without a control beside it, measured at the
same alphas on the same items:

* :func:`random_control`: a random direction with the vector's norm (dense), or a random
  support of the same size ``k`` carrying the vector's kept values (sparse). Seeded; the
  seed is in the metadata, and several seeds are several calls.
* :func:`letter_control`: the answer-letter direction of an A/B set captured with its
  option-swapped twins (:func:`actstore.inputs.datasets.with_twins`): per question, h at answer
  (A) minus h at answer (B) with the behavior held fixed, averaged over questions. A
  vector that moves A/B scores the way this one does may be moving the letter.

Both return today's :class:`~actstore.vectors.vector.SteeringVector` (metadata ``method``
``random`` or ``letter``), so they steer, save and sweep like any other vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import VectorError
from ..inputs.datasets import answer_letter, read_contrast_set
from ..stores.group import StoreGroup, require_layers
from .directions import ENR_FLOOR, keep_top_k
from .info import VectorInfo
from .vector import SteeringVector

LETTERS = ("A", "B")


def random_control(vector: SteeringVector, seed: int) -> SteeringVector:
    """A random control for ``vector`` (``(hidden,)`` float32 values).

    Dense (``vector.k`` is None): a direction drawn uniformly on the sphere (a normalised
    standard Gaussian), scaled to ``vector``'s norm. Sparse: ``k`` coordinates drawn
    without replacement carry the vector's kept values (``vector.vector[vector.indices]``,
    in that order), so its norm and its values' distribution are the vector's; only the
    support is random. The metadata is the vector's with ``method`` ``random``, ``seed``
    and ``control_of`` (the vector's own method); ``enr`` is NaN (a random vector has none).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VectorError(f"seed={seed!r}: expected an integer >= 0", param="seed")
    rng = np.random.default_rng(int(seed))
    values = np.asarray(vector.vector, dtype=np.float64)
    hidden = values.shape[0]
    k = vector.k
    control = np.zeros(hidden, dtype=np.float64)
    if k is None:
        direction = rng.standard_normal(hidden)
        control = direction / np.linalg.norm(direction) * np.linalg.norm(values)
        indices = np.argsort(-np.abs(control), kind="stable").astype(np.int64)
    else:
        kept = values[np.asarray(vector.indices[:k], dtype=np.int64)]
        indices = rng.choice(hidden, size=k, replace=False).astype(np.int64)
        control[indices] = kept
    info = vector.info.replace(method="random", seed=int(seed), details={"control_of": vector.info.method or ""})
    return SteeringVector(control.astype(np.float32), indices, np.full(hidden, np.nan, np.float32), info)


def letter_direction(acts, classes, questions, orders, letters: Mapping[int, Mapping[str, str]], *,
                     pos: str = "pos", neg: str = "neg") -> tuple[np.ndarray, np.ndarray]:
    """Per-question letter differences ``(n_questions, hidden)`` float64 and the questions used.

    ``acts: (sample, hidden)`` one layer of a twin capture with its ``class``, ``question``
    and ``order`` per sample; ``letters[q]`` gives, for question ``q`` as written, the answer
    letter of its ``pos`` and of its ``neg`` text. The twin (order 1) of a class answers the
    other class's letter as written. For each class, h at (A) minus h at (B) holds the
    behavior fixed; a question's difference is the mean of its two classes'. Questions whose
    two answers are not (A) and (B), or that lack one of the four rows, are left out.
    """
    acts = np.asarray(acts, dtype=np.float64)
    classes, questions, orders = (np.asarray(x) for x in (classes, questions, orders))
    rows: dict[tuple[int, str, int], int] = {}
    for i, (c, q, o) in enumerate(zip(classes.tolist(), questions.tolist(), orders.tolist())):
        if (int(q), str(c), int(o)) in rows:
            raise VectorError(f"question {q} has several {c!r} rows of order {o} (a capture with --position all?); "
                              "the letter direction needs one row per text", param="position")
        rows[(int(q), str(c), int(o))] = i
    used, differences = [], []
    for q in sorted(letters):
        answered = letters[q]
        if sorted((answered[pos], answered[neg])) != list(LETTERS):
            continue
        if not all((q, c, o) in rows for c in (pos, neg) for o in (0, 1)):
            continue
        per_class = []
        for c, other in ((pos, neg), (neg, pos)):
            # Order 0 answers this class's letter; its twin (order 1) the other class's letter.
            at = {answered[c]: acts[rows[(q, c, 0)]], answered[other]: acts[rows[(q, c, 1)]]}
            per_class.append(at["A"] - at["B"])
        used.append(q)
        differences.append((per_class[0] + per_class[1]) / 2)
    return np.asarray(differences).reshape(len(used), acts.shape[1]), np.asarray(used, dtype=np.int64)


def letter_control(store: str | Path | StoreGroup, layer: int, data: str | Path, k: int | None = None, *,
                   model: str | None = None, pos: str = "pos", neg: str = "neg") -> SteeringVector:
    """The letter direction of an A/B set captured with its twins: the mean over questions of
    h at (A) minus h at (B), behavior held fixed (:func:`letter_direction`), at ``layer``.

    ``data`` is the contrast-set file that was captured (its answer letters; its run in the
    store is found by the file's contents, and its questions by their ``question`` ids). ``k``
    keeps the ``k`` coordinates whose mean difference is largest against its spread over
    questions (``|mean| / (sd / sqrt(n))``, the ENR of the letter), None keeps all. Metadata:
    method ``letter``, ``questions`` (how many went in). ``store``: a path (its group ``model``)
    or an opened :class:`~actstore.stores.StoreGroup`.
    """
    from ..stores.runs import read_runs

    contrast = read_contrast_set(data)
    group = StoreGroup.open(store, model)
    runs = [r for r in read_runs(group.group) if r.source_sha256 == contrast.sha256
            and r.settings.get("swap_options")]
    if not runs:
        raise VectorError(f"{group.where} holds no capture of {str(data)!r} with its option-swapped twins; "
                          "capture it without --no-swap-options first", param="data")
    run = runs[-1]
    letters: dict[int, dict[str, str]] = {}
    for e in contrast.examples:
        letter = answer_letter(e.text)
        if letter is not None:
            letters.setdefault(run.pair_id_offset + e.pair_id, {})[e.label] = letter
    letters = {q: v for q, v in letters.items() if pos in v and neg in v}
    require_layers(group.spec.layers, layer, param="layer")
    ds = group.dataset(coords=("class", "question", "order"))
    mine = np.isin(ds["question"].values, list(letters))
    acts = ds.acts.sel(layer=layer).values[mine]
    differences, used = letter_direction(acts, ds["class"].values[mine], ds["question"].values[mine],
                                         ds["order"].values[mine], letters, pos=pos, neg=neg)
    if len(used) < 2:
        raise VectorError(f"{str(data)!r}: {len(used)} question(s) answer (A) against (B) in both orders in "
                          f"{group.where}; the letter direction needs at least 2", param="data")
    mean = differences.mean(axis=0)
    spread = differences.std(axis=0, ddof=1) / np.sqrt(len(used))
    scores = np.abs(mean) / np.maximum(spread, ENR_FLOOR)
    indices, kept = keep_top_k(mean, scores, k)
    spec = group.spec
    info = VectorInfo(layer=layer, method="letter", k=k, site=spec.site, position=spec.position,
                      model=spec.model_id, fingerprint=spec.model_fingerprint,
                      classes=((pos, 2 * len(used)), (neg, 2 * len(used))), pos=pos, neg=neg,
                      hidden_size=int(mean.shape[0]), details={"questions": str(len(used))})
    return SteeringVector(kept.astype(np.float32), indices, scores.astype(np.float32), info)


def twin_source(store: str | Path | StoreGroup, model: str | None = None) -> str:
    """The file of the store's latest capture with option-swapped twins: what
    :func:`letter_control` reads when no A/B file is named."""
    from ..stores.runs import read_runs

    group = StoreGroup.open(store, model)
    runs = [r for r in read_runs(group.group) if r.settings.get("swap_options")]
    if not runs:
        raise VectorError(f"{group.where} holds no A/B capture with option-swapped twins: the letter control needs "
                          "one (capture the A/B set without --no-swap-options)", param="letter_data")
    return runs[-1].source

"""Tiny sweep folders in the layout of studies/results/generation/<model>/concept<c>/ (what the study scripts
read), written from scratch: four prompts (two select, two report), the unsteered rows, the prompting baseline
and enr vectors at chosen factors, each with its perplexity inflation, harmonic scores and texts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STUDIES = Path(__file__).resolve().parents[2] / "studies"

PROMPTS = (("aaa", "select"), ("bbb", "select"), ("ccc", "report"), ("ddd", "report"))
READABLE = "The cat sat on the mat and looked out of the window at the rain."


@dataclass
class Config:
    """One configuration: ``method`` enr/prompt/none, ``k`` 64/dense/none, ``fraction`` (the alpha), its
    perplexity inflation, per prompt its harmonic (also the concept rating) and text."""

    method: str
    k: str
    fraction: float
    inflation: float = 1.0
    harmonic: tuple = (1.0, 1.0, 1.0, 1.0)
    texts: tuple = field(default_factory=lambda: (READABLE,) * 4)
    fluency: tuple = (1.5, 1.5, 1.5, 1.5)


def config(k: str, fraction: float, inflation: float = 1.0, harmonic=(1.0,) * 4, **kw) -> Config:
    return Config("enr", k, fraction, inflation, tuple(harmonic), **kw)


def prompt_config(inflation: float = 1.0, harmonic=(1.0,) * 4, **kw) -> Config:
    return Config("prompt", "none", 0.0, inflation, tuple(harmonic), **kw)


def _layer(c: Config):
    return {"none": None, "prompt": -1}.get(c.method, 12)


def write_sweep(folder: Path, configs: list[Config], report: bool = True, noise: float = 0.0) -> Path:
    """A sweep folder holding ``configs`` and the unsteered rows; results.md only where ``report``;
    ``noise`` is added to every norm_fraction (the float noise the real folders carry)."""
    folder.mkdir(parents=True, exist_ok=True)
    baseline = Config("none", "none", 0.0, harmonic=(0.5,) * 4)
    (folder / "baseline.json").write_text(json.dumps({"settings": {"select_split": 0.5, "alpha_mode": "fraction"}}))
    (folder / ".actstore-sweep").write_text("actstore eval writes this folder\n")
    results, items, texts = [], [], []
    for c in [baseline, *configs]:
        layer = _layer(c)
        for i, (prompt_id, split) in enumerate(PROMPTS):
            items.append({"layer": layer, "k": c.k, "alpha": c.fraction, "method": c.method, "item": f"prompt {i + 1}",
                          "question": i, "order": 0, "prompt_id": prompt_id, "split": split,
                          "score": c.harmonic[i], "concept_rating": c.harmonic[i], "instruction_rating": 1.0,
                          "fluency_rating": c.fluency[i], "harmonic": c.harmonic[i]})
            texts.append({"layer": layer, "method": c.method, "k": c.k, "alpha": c.fraction,
                          "item": f"prompt {i + 1}", "text": c.texts[i]})
        if c.method != "none":
            results.append({"behavior": "b", "model": "m", "protocol": "generation", "layer": layer,
                            "method": c.method, "k": c.k, "alpha": c.fraction, "alpha_mode": "fraction",
                            "norm_fraction": c.fraction + noise if c.method == "enr" else None,
                            "on_target_shift": 0.1, "p_value": 0.5, "measure": "score",
                            "ppl_inflation": c.inflation, "harmonic": 1.0, "selected": False})
    pd.DataFrame(results).to_csv(folder / "results.csv", index=False)
    pd.DataFrame(items).to_csv(folder / "items.csv", index=False)
    (folder / "generations.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    if report:
        (folder / "results.md").write_text("# report\n")
    return folder


def planned(harmonic_dense=(1.0,) * 4, inflation=2.0) -> list[Config]:
    """The planned grid: the prompting baseline and both vectors at 0.5, 1, 2."""
    return [prompt_config(), *[config(k, f, inflation, harmonic_dense if k == "dense" else (1.0,) * 4)
                               for k in ("64", "dense") for f in (0.5, 1.0, 2.0)]]

"""Bake a direction into the weights: the weight-orthogonalised model ("abliteration").

A vector whose operator is ``project`` at ``all`` layers (:mod:`actstore.vectors.operators`) keeps
its unit direction ``u`` out of the residual stream: removed from the embeddings and from every
block's attention and MLP output. The same model without hooks has ``u`` projected out of every
matrix that writes to the residual stream: ``W <- W - u u^T W`` for a linear output projection
(``W`` (hidden, in); GPT-2's Conv1D ``W`` (in, hidden): ``W <- W - W u u^T``), ``b <- b - u (u . b)``
for its bias, and ``E <- E - (E u) u^T`` for the token (and position) embeddings. A model whose input
and output embeddings are tied is untied first: the unembedding keeps its weights, as in the hooked
form. :func:`bake_vector` checks the result against the hooked form on a few prompts before writing,
and the folder records which vector was baked (``actstore-baked.json``: the vector's fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import VectorError
from ..models.blocks import residual_writes
from ..models.hooks import ablate_direction
from ..models.load import LoadedModel
from .vector import SteeringVector

BAKED_FILE = "actstore-baked.json"
CHECK_PROMPTS = ("The capital of France is", "Write a short poem about the sea.",
                 "How do I bake bread at home?")
TOLERANCE = 1e-4  # largest logit difference, relative to the largest logit, that a bake may show


@dataclass(frozen=True)
class BakeReport:
    """What :func:`bake_vector` wrote and how close it came to the hooked form."""

    folder: Path
    vector_fingerprint: str
    max_logit_difference: float
    relative_difference: float


def vector_fingerprint(vector: SteeringVector) -> str:
    """sha256 of the vector's values, kept coordinates and metadata (what a bake or store records)."""
    digest = hashlib.sha256(np.ascontiguousarray(vector.vector, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(vector.indices, dtype=np.int64).tobytes())
    meta = {k: v for k, v in vector.info.to_metadata().items() if k != "actstore_version"}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def unit_direction(vector: SteeringVector) -> torch.Tensor:
    """``u = v / |v|`` (float64), zero outside a sparse vector's kept coordinates."""
    values = torch.as_tensor(np.asarray(vector.vector, dtype=np.float64))
    norm = float(values.norm())
    if norm == 0 or not np.isfinite(norm):
        raise VectorError(f"the vector for layer {vector.layer} has norm {norm}: no direction to bake")
    return values / norm


def check_bakeable(vector: SteeringVector) -> None:
    """Refuse, before any model loads, a vector whose operator is not project at all layers."""
    operator = vector.info.operator
    if operator.kind != "project" or operator.layers != "all":
        raise VectorError(f"bake writes the weight-orthogonalised model, the form of operator 'project' at all "
                          f"layers; this vector is {operator.describe()} (write one with actstore enr ... "
                          "--operator project --apply-layers all)", param="vector")


def _check_bakeable(loaded: LoadedModel, vector: SteeringVector) -> None:
    check_bakeable(vector)
    if vector.hidden_size != loaded.hidden_size:
        raise VectorError(f"the vector has {vector.hidden_size} dims, the model {loaded.hidden_size}", param="vector")
    if not residual_writes(loaded.model, loaded.blocks).bakeable:
        raise VectorError(f"model type {loaded.model.config.model_type!r} normalises each block's attention and MLP "
                          "output before adding it to the residual stream (post-norms): no change of the weights "
                          "removes a direction from the residual; steer with the hooks instead "
                          "(actstore steer applies the same ablation)", param="model")


def _untie(loaded: LoadedModel) -> None:
    """Give the unembedding its own copy of tied input embeddings (the bake changes the input side only)."""
    model = loaded.model
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


@torch.no_grad()
def orthogonalise(loaded: LoadedModel, unit: torch.Tensor) -> None:
    """Project ``unit`` out of every weight that writes to the residual stream, in place."""
    writes = residual_writes(loaded.model, loaded.blocks)
    _untie(loaded)
    for embedding in writes.embeddings:
        weight = embedding.weight.double()
        u = unit.to(weight.device)
        embedding.weight.copy_(weight - torch.outer(weight @ u, u))
    for module in writes.writers:
        weight = module.weight.double()
        u = unit.to(weight.device)
        if writes.kind == "conv1d":  # (in, hidden)
            module.weight.copy_(weight - torch.outer(weight @ u, u))
        else:  # (hidden, in)
            module.weight.copy_(weight - torch.outer(u, u @ weight))
        if getattr(module, "bias", None) is not None:
            bias = module.bias.double()
            module.bias.copy_(bias - (bias @ u) * u)


def _logits(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    return loaded.model(input_ids=ids.to(loaded.model.device)).logits.double().cpu()


def bake_vector(loaded: LoadedModel, vector: SteeringVector, out_dir: str | Path, *,
                prompts: tuple[str, ...] = CHECK_PROMPTS) -> BakeReport:
    """Write ``loaded`` with ``vector``'s direction projected out of its weights to ``out_dir`` (a
    ``save_pretrained`` folder), after checking on ``prompts`` that its logits equal the hooked
    form's (:func:`actstore.models.hooks.ablate_direction`) within :data:`TOLERANCE` of the largest
    logit. ``loaded`` is changed in place: load it again to use the original weights.

    >>> loaded = load_model(model_dir)
    >>> vector = with_operator(load_vector("v.safetensors"), "project", layers="all")
    >>> report = bake_vector(loaded, vector, "baked")
    >>> report.relative_difference < 1e-5, (report.folder / "actstore-baked.json").is_file()
    (True, True)
    """
    _check_bakeable(loaded, vector)
    unit = unit_direction(vector)
    with torch.no_grad():
        batches = [loaded.tokenizer(prompt, return_tensors="pt").input_ids for prompt in prompts]
        with ablate_direction(loaded.model, loaded.blocks, unit):
            hooked = [_logits(loaded, ids) for ids in batches]
        orthogonalise(loaded, unit)
        baked = [_logits(loaded, ids) for ids in batches]
    difference = max(float((a - b).abs().max()) for a, b in zip(hooked, baked))
    scale = max(float(a.abs().max()) for a in hooked)
    relative = difference / scale if scale > 0 else difference
    if not relative <= TOLERANCE:
        raise VectorError(f"the baked model's logits differ from the hooked form's by {difference:.3g} "
                          f"({relative:.3g} of the largest logit, more than {TOLERANCE:g}): not written")
    out = Path(out_dir)
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    fingerprint = vector_fingerprint(vector)
    record = {"vector_fingerprint": fingerprint, "vector": vector.info.to_metadata(), "base_model": loaded.model_id,
              "base_fingerprint": loaded.fingerprint, "max_logit_difference": difference,
              "relative_difference": relative, "prompts": list(prompts)}
    (out / BAKED_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return BakeReport(out, fingerprint, difference, relative)

"""Where a model's decoder blocks are, and its sites: one table per architecture, no ``if`` chains.

Layer ``L`` always means the output of decoder block ``L`` (0-based): what a
forward hook on the L-th block sees. That is steering-vectors'
``layer_type="decoder_block"`` and Hugging Face's ``hidden_states[L + 1]``
(except for the last block, whose ``hidden_states`` entry is after the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelError

# model_type -> dotted attribute path of the ModuleList of decoder blocks.
DECODER_BLOCKS: dict[str, str] = {
    "gpt_neox": "gpt_neox.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen2_moe": "model.layers",
    "qwen3": "model.layers",
    "qwen3_moe": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "falcon": "transformer.h",
    "bloom": "transformer.h",
    "opt": "model.decoder.layers",
}


def text_config(config: Any) -> Any:
    """The language model's config (multimodal configs nest it as ``text_config``)."""
    return getattr(config, "text_config", None) or config


def _get_attr_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _block_list_candidates(model: torch.nn.Module, num_layers: int | None) -> list[str]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (
            num_layers is None or len(module) == num_layers
        ):
            found.append(name)
    return found


def find_decoder_blocks(model: torch.nn.Module, blocks: str | None = None) -> torch.nn.ModuleList:
    """The ModuleList of decoder blocks.

    ``blocks`` is a dotted attribute path (e.g. ``"model.layers"``) that
    overrides the per-architecture table :data:`DECODER_BLOCKS`.
    """
    model_type = getattr(model.config, "model_type", None)
    path = blocks or DECODER_BLOCKS.get(model_type or "")
    if path is None:
        candidates = _block_list_candidates(model, getattr(text_config(model.config), "num_hidden_layers", None))
        hint = f" Candidates in this model: {', '.join(candidates)}." if candidates else ""
        raise ModelError(
            f"don't know where the decoder blocks of model type {model_type!r} are; "
            f"pass blocks= with the dotted path of their ModuleList, "
            f"e.g. blocks=model.layers.{hint}", param="blocks"
        )
    try:
        found = _get_attr_path(model, path)
    except AttributeError:
        raise ModelError(
            f"model of type {model_type!r} has no attribute path {path!r}; "
            "pass --blocks with the dotted path of the decoder-block ModuleList"
        ) from None
    if not isinstance(found, torch.nn.ModuleList):
        raise ModelError(f"{path!r} in model type {model_type!r} is a {type(found).__name__}, not a ModuleList")
    return found


SITES = ("resid", "attn", "mlp")
# Where a block keeps its attention and MLP modules, by the name transformers gives them.
SITE_MODULES = {"attn": ("self_attn", "attn", "attention", "self_attention"), "mlp": ("mlp", "feed_forward", "ffn")}


def site_module(blocks: torch.nn.ModuleList, layer: int, site: str = "resid") -> torch.nn.Module:
    """The module whose output is read and steered at ``site`` of block ``layer``:
    the block itself (``resid``: the residual stream after the block), its attention
    module (``attn``: what attention adds, before the block's residual sum) or its
    MLP (``mlp``)."""
    if site not in SITES:
        raise ModelError(f"site={site!r}: expected one of {', '.join(SITES)}", param="site")
    block = blocks[layer]
    if site == "resid":
        return block
    for name in SITE_MODULES[site]:
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    children = ", ".join(name for name, _ in block.named_children()) or "none"
    raise ModelError(
        f"site={site!r}: block {layer} ({type(block).__name__}) has no {site} module named "
        f"{' or '.join(SITE_MODULES[site])} (its parts: {children}); use site resid", param="site"
    )


def parse_layers(spec: str | list[int] | tuple[int, ...], num_layers: int) -> list[int]:
    """``"6"``, ``"2,6,10"``, ``"all"`` or a list -> sorted unique block indices.

    Negative indices are refused (they are easy to mistake for "from the end").
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(num_layers))
        try:
            layers = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ModelError(
                f"layers={spec!r}: expected 'all' or comma-separated integers such as '2,6,10'", param="layers"
            ) from None
    else:
        layers = [int(layer) for layer in spec]
    if not layers:
        raise ModelError(f"layers={spec!r}: no layer given", param="layers")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ModelError(
            f"layers={spec!r}: layer(s) {bad} out of range; this model has decoder blocks "
            f"0..{num_layers - 1}", param="layers"
        )
    return sorted(set(layers))



@dataclass(frozen=True)
class ResidualWrites:
    """The modules whose outputs are added to the residual stream: ``embeddings`` (token, and
    position where the model adds them) and each block's attention and MLP writes (``writers``).
    ``kind``: "linear" (output projections, weight (hidden, in)), "conv1d" (GPT-2's, weight
    (in, hidden)) or "post-norm" (gemma2/3 normalise each output before adding it: the writes are
    those norms, and no weight change removes a direction from them)."""

    embeddings: tuple[torch.nn.Module, ...]
    writers: tuple[torch.nn.Module, ...]
    kind: str

    @property
    def bakeable(self) -> bool:
        return self.kind != "post-norm"


_GEMMA_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
# model_type -> (embedding paths, per-block writer paths, kind)
RESIDUAL_WRITERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    **{name: (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj"), "linear")
       for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "olmo2")},
    "gpt2": (("transformer.wte", "transformer.wpe"), ("attn.c_proj", "mlp.c_proj"), "conv1d"),
    "gpt_neox": (("gpt_neox.embed_in",), ("attention.dense", "mlp.dense_4h_to_h"), "linear"),
    "gemma2": (("model.embed_tokens",), _GEMMA_POST_NORMS, "post-norm"),
    "gemma3_text": (("model.embed_tokens",), _GEMMA_POST_NORMS, "post-norm"),
    "gemma3": (("model.language_model.embed_tokens",), _GEMMA_POST_NORMS, "post-norm"),
}


def residual_writes(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> ResidualWrites:
    """Where ``model`` writes its residual stream (:data:`RESIDUAL_WRITERS`); ModelError for a
    model not in the table."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in RESIDUAL_WRITERS:
        raise ModelError(f"don't know which modules of model type {model_type!r} write to the residual stream "
                         f"(known: {', '.join(sorted(RESIDUAL_WRITERS))})", param="model")
    embeddings, writers, kind = RESIDUAL_WRITERS[model_type]
    return ResidualWrites(tuple(_get_attr_path(model, path) for path in embeddings),
                          tuple(_get_attr_path(block, path) for block in blocks for path in writers), kind)

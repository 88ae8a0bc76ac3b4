"""Load a causal LM and its tokenizer; find its decoder blocks.

Layer ``L`` always means the output of decoder block ``L`` (0-based): what a
forward hook on the L-th block sees. That is steering-vectors'
``layer_type="decoder_block"`` and Hugging Face's ``hidden_states[L + 1]``
(except for the last block, whose ``hidden_states`` entry is after the final norm).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

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

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for capture or steering.

    ``model_id`` is what the user passed (hub id or path); ``fingerprint``
    identifies the weights (hub commit, or a hash of a local folder's config and
    weight file names and sizes, or of a GGUF file).
    """

    model: Any
    tokenizer: Any
    model_id: str
    fingerprint: str
    blocks: torch.nn.ModuleList
    source_id: str | None = None  # the hub id a converted local folder stands for (see actstore.demo)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self) -> str:
        """The dtype the weights are in now (``float32``, ``bfloat16``, ...), whoever loaded them."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def hidden_size(self) -> int:
        return int(text_config(self.model.config).hidden_size)


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


def _fingerprint_local(folder: Path) -> str:
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weight in sorted(folder.glob("*")):
        if weight.suffix in {".safetensors", ".bin", ".gguf", ".pt"}:
            digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return "sha256-local:" + digest.hexdigest()[:16]


def _fingerprint_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def safe_group_name(model_id: str) -> str:
    """A store group name for a model id: no slashes, no dots in front, no traversal."""
    stem = model_id.rstrip("/\\")
    if Path(stem).exists():
        stem = Path(stem).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", stem).strip(".-")
    if not name:
        raise ModelError(f"cannot make a store group name from model id {model_id!r}; pass name=", param="name")
    return name


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a model, validated on construction: what travels
    from the command line to :func:`load_model`, and to each worker of a cluster capture."""

    model: str
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    blocks: str | None = None
    trust_remote_code: bool = False
    device_map: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ModelError(f"model={self.model!r}: expected a hub id or a local folder", param="model")
        if self.dtype not in DTYPES:
            raise ModelError(f"dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}", param="dtype")
        _check_device_map(self.device_map, self.device)

    def load(self) -> LoadedModel:
        return load_model(self.model, revision=self.revision, gguf_file=self.gguf_file, dtype=self.dtype,
                          device=self.device, blocks=self.blocks, trust_remote_code=self.trust_remote_code,
                          device_map=self.device_map)


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map, device: str) -> None:
    if device_map is None:
        return
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ModelError(f"device_map={device_map!r}: expected one of {', '.join(DEVICE_MAPS)} or a dict of "
                         "module name -> device", param="device_map")
    if device != "cpu":
        raise ModelError(f"device={device!r} and device_map={device_map!r}: a device map places the model "
                         "itself; leave --device out", param=("device", "device_map"))


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its embedding's device (with a device map, accelerate's hooks move
    everything else; an embedding offloaded to disk sits on 'meta' and runs on the CPU)."""
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


SOURCE_FILE = "actstore-source.json"


def read_source_id(folder: str | Path) -> str | None:
    """The hub id a converted local folder stands for (its ``actstore-source.json``), if it says."""
    path = Path(folder) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("hub_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def load_model(
    model: str,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    blocks: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer from a hub id or a local folder.

    ``gguf_file`` names a GGUF checkpoint inside that folder (or repository);
    transformers dequantises it while loading (slow: convert once with
    ``actstore models convert``). ``device_map`` (``"auto"``, or a dict of module
    name -> device, ``"disk"`` included, with ``offload_folder``) spreads a model
    larger than one device over several with accelerate; ``device`` is then not used.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}", param="dtype")
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    _check_device_map(device_map, device)
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": device_map, "offload_folder": offload_folder}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype], **kwargs, **placement)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: weights cut short or damaged
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"could not load model {model!r}"
            + (f" (gguf file {gguf_file!r})" if gguf_file else "")
            + f": {first_line}. A model is a Hugging Face hub id or a local folder "
            "saved with save_pretrained"
        ) from None
    lm.eval()
    if device_map is None:
        try:
            lm.to(device)
        except (RuntimeError, AssertionError, ValueError) as err:  # torch: mistyped, or not on this machine
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"device={device!r} cannot be used: {first_line}; check device (cpu, cuda, cuda:0, "
                             "mps) and that this machine has it", param="device") from None
    if tokenizer.pad_token is None:
        # Causal LMs such as GPT-2 ship without a pad token; padded positions are
        # masked out, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    local = Path(model)
    source_id = read_source_id(local) if local.is_dir() else None
    if gguf_file is not None and (local / gguf_file).is_file():
        fingerprint = _fingerprint_file(local / gguf_file)
    elif local.is_dir():
        fingerprint = _fingerprint_local(local)
    else:
        fingerprint = f"hub:{getattr(lm.config, '_commit_hash', None) or revision or 'unknown'}"
    return LoadedModel(lm, tokenizer, model, fingerprint, find_decoder_blocks(lm, blocks), source_id)

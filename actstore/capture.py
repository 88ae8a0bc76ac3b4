"""Forward hooks -> activations of decoder blocks, in windows of examples.

No storage knowledge here: :func:`iter_windows` yields numpy arrays that a
store writer (or anything else) consumes.

Positions:
  ``last``  the last real (non-pad) token of each text, whatever the padding side;
  ``mean``  the mean over the real tokens of each text;
  ``all``   every real token, one row each, with its token index.

The forward pass stops after the deepest requested block: later blocks and the
LM head never run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .errors import ActstoreError, InputFormatError
from .models import SITES, input_device, site_module

POSITIONS = ("last", "mean", "all")


class CaptureError(ActstoreError, RuntimeError):
    """The model produced activations that cannot be stored (NaN/Inf)."""


@dataclass(frozen=True)
class CaptureOptions:
    """How texts become rows, validated on construction (one record from the command
    line to :func:`iter_windows`; a new capture option is a field here and a click option).

    ``offset`` (with ``last``) counts back from the last token; ``None`` lets
    :func:`actstore.capture_to_store` choose (1, the answer letter, for A/B sets;
    else 0). ``window`` is texts per commit (None: chosen from the store's chunks).
    ``separator`` joins an A/B question and its answer; ``chat_template`` formats
    texts with the tokenizer's template; texts longer than ``max_length`` tokens
    keep their last ones (a plain-text corpus is cut into windows of that many);
    ``stop_early`` ends the forward pass after the deepest block; ``site`` is what is
    read in each block (``resid``, ``attn``, ``mlp``: :func:`actstore.models.site_module`).
    ``text_column`` and ``label_column`` name the columns of a dataset input
    (:mod:`actstore.sources`). ``swap_options`` captures an A/B set with each pair's
    option-swapped twin (:func:`actstore.datasets.with_twins`), so the answer letter cancels
    question by question; False keeps the texts as written.
    """

    position: str = "last"
    offset: int | None = None
    batch_size: int = 8
    max_length: int | None = None
    stop_early: bool = True
    window: int | None = None
    separator: str = "\n"
    chat_template: bool = False
    site: str = "resid"
    text_column: str | None = None
    label_column: str | None = None
    swap_options: bool = True

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise InputFormatError(f"position={self.position!r}: expected one of {', '.join(POSITIONS)}",
                                   param="position")
        if self.offset is not None and (self.offset < 0 or (self.offset and self.position != "last")):
            raise InputFormatError(f"offset={self.offset}: must be >= 0 and is only for position last",
                                   param=("offset", "position"))
        if self.site not in SITES:
            raise InputFormatError(f"site={self.site!r}: expected one of {', '.join(SITES)}", param="site")
        for name in ("batch_size", "max_length", "window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputFormatError(f"{name}={value!r}: expected an integer >= 1", param=name)

    @property
    def last_offset(self) -> int:
        return self.offset or 0

    @property
    def position_name(self) -> str:
        """The position as a store records it: ``last``, ``last-1``, ``mean``, ``all``."""
        return f"last-{self.offset}" if self.offset else self.position

    @classmethod
    def at_position(cls, name: str, **values) -> CaptureOptions:
        """Options that read where a store's recorded :attr:`position_name` says (its
        inverse: ``last-1`` -> position last, offset 1; ``last`` -> offset 0)."""
        position, _, offset = str(name).partition("-")
        if position not in POSITIONS or (offset and (position != "last" or not offset.isdigit())):
            raise InputFormatError(f"position {name!r} is not one a store records (last, last-N, mean, all)")
        return cls(position=position, offset=int(offset) if offset else (0 if position == "last" else None),
                   **values)

    def replace(self, **changes) -> CaptureOptions:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


class _StopForward(Exception):
    """Raised by the hook on the deepest block to end the forward pass early."""


def block_output(output):
    """The hidden-state tensor of a decoder block's output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_blocks(blocks: torch.nn.ModuleList, layers: Sequence[int], stop_after_last: bool = True,
                  site: str = "resid"):
    """Register hooks that store each requested block's output (or its ``site``) in a dict.

    Yields the dict ``{layer: (batch, seq, hidden) tensor}``, filled by each
    forward pass. With ``stop_after_last`` the hook on the deepest block raises
    :class:`_StopForward` (caught by :func:`forward_blocks`). Hooks are removed
    on exit, also on errors.
    """
    outputs: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(module, args, output):
            outputs[layer] = block_output(output).detach()
            if stop_after_last and layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            handles.append(site_module(blocks, layer, site).register_forward_hook(make_hook(layer)))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so a left-padded text gets the same
    positions (and activations) as the same text unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_blocks(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    stop_early: bool = True,
    site: str = "resid",
) -> dict[int, torch.Tensor]:
    """Run the model on one padded batch; return ``{layer: (batch, seq, hidden)}``
    of each block's ``site`` (positions from :func:`position_ids`)."""
    with record_blocks(blocks, layers, stop_after_last=stop_early, site=site) as outputs, torch.no_grad():
        try:
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids(attention_mask),
                use_cache=False,
            )
        except _StopForward:
            pass
    return dict(outputs)


def reduce_positions(
    hidden: torch.Tensor, attention_mask: torch.Tensor, position: str, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick rows out of ``hidden: (batch, seq, hidden)``.

    With ``last``, ``offset`` counts back from the last real token (1: the one
    before it, e.g. the answer letter of a text ending in ``(A)``).

    Returns ``(rows, row_example, row_token)``: ``rows (n_rows, hidden)`` float32,
    the batch index of each row and its token index among the real tokens
    (``-1`` for ``mean``).
    """
    mask = attention_mask.bool()
    real_index = attention_mask.long().cumsum(-1) - 1  # token index among real tokens
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if position == "last":
        seq_positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = torch.where(mask, seq_positions, -1).max(dim=-1).values - offset
        return hidden[batch, last].float(), batch, real_index[batch, last]
    if position == "mean":
        weights = mask.to(torch.float32).unsqueeze(-1)
        rows = (hidden.float() * weights).sum(1) / weights.sum(1)
        return rows, batch, torch.full_like(batch, -1)
    if position == "all":
        row_example = batch.unsqueeze(1).expand_as(mask)[mask]
        return hidden[mask].float(), row_example, real_index[mask]
    raise ValueError(f"position {position!r}: expected one of {POSITIONS}")


@dataclass
class Window:
    """Activations of the examples ``start .. stop-1``, in example order.

    ``acts: (rows, layer, hidden) float32`` (numpy, or a torch tensor on the
    model's device with ``as_tensors``); ``row_example: (rows,)`` index of
    each row's example (absolute, into the full list); ``row_token: (rows,)``
    token index among the real tokens (``-1`` for ``mean``).
    """

    start: int
    stop: int
    acts: np.ndarray | torch.Tensor
    row_example: np.ndarray
    row_token: np.ndarray
    n_tokens: int


def tokenize(
    tokenizer, texts: Sequence[str], where: Sequence[str], max_length: int | None, add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of each text (no padding). Empty results are refused; texts
    longer than ``max_length`` keep their last ``max_length`` tokens (warning)."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    truncated = 0
    for i, ids in enumerate(encoded):
        if not ids:
            raise InputFormatError(f"{where[i]}: text tokenizes to nothing: {texts[i]!r}")
        if max_length is not None and len(ids) > max_length:
            # Keep the end: the last token is what 'last' captures.
            encoded[i] = ids[-max_length:]
            truncated += 1
    if truncated:
        warnings.warn(
            f"{truncated} text(s) longer than {max_length} tokens were truncated to their last "
            f"{max_length} tokens (--max-length)",
            stacklevel=2,
        )
    return encoded


def answer_letter_reason(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> str | None:
    """Why offset 1 would NOT be the answer letter of these A/B texts (``... (A)``), or None if it is:
    every text must tokenize with ``)`` as its last token and the letter ending the one before."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    for text, ids in zip(texts, encoded):
        letter = text.rstrip()[-2:-1]
        last = tokenizer.decode(ids[-1:]).strip() if ids else ""
        before = tokenizer.decode(ids[-2:-1]).strip() if len(ids) > 1 else ""
        if last != ")" or not before.endswith(letter):
            return (f"text {text[-40:]!r} ends in tokens {before!r}, {last!r}, not the letter {letter!r} and ')' "
                    "(a chat template or this tokenizer); pass offset= to choose the token")
    return None


def iter_windows(
    model: torch.nn.Module,
    tokenizer,
    blocks: torch.nn.ModuleList,
    texts: Sequence[str],
    layers: Sequence[int],
    options: CaptureOptions | None = None,
    *,
    where: Sequence[str] | None = None,
    start: int = 0,
    add_special_tokens: bool = True,
    on_batch=None,
    as_tensors: bool = False,
    **option_values,
) -> Iterator[Window]:
    """Capture ``texts[start:]`` window by window, as ``options`` say.

    Options may also be given by name (``position="all", batch_size=4``;
    ``last_offset`` is ``offset``); ``window`` defaults to 256 texts here.
    Within a window texts are batched by length (less padding); rows come out
    in example order. ``on_batch(n_texts, n_tokens)`` is called after every
    batch (progress bars). With ``as_tensors`` the windows' ``acts`` stay torch
    tensors on the model's device (statistics computed there, nothing copied).
    """
    if "last_offset" in option_values:
        option_values["offset"] = option_values.pop("last_offset")
    unknown = sorted(set(option_values) - CaptureOptions.field_names())
    if unknown:
        raise TypeError(f"iter_windows() got unexpected keyword argument(s) {unknown}")
    options = (options or CaptureOptions()).replace(**option_values)
    position, batch_size, last_offset, window = options.position, options.batch_size, options.last_offset, \
        options.window or 256
    layers = sorted(layers)
    # Not copied: texts and where may be lazy columns of a large source (actstore.sources).
    where = where if where is not None else [f"text {i + 1}" for i in range(len(texts))]
    device = input_device(model)
    for w_start in range(start, len(texts), window):
        w_stop = min(w_start + window, len(texts))
        window_where = list(where[w_start:w_stop])
        ids = tokenize(tokenizer, list(texts[w_start:w_stop]), window_where, options.max_length,
                       add_special_tokens)
        for i, token_ids in enumerate(ids):
            if position == "last" and len(token_ids) <= last_offset:
                raise InputFormatError(
                    f"{window_where[i]}: text has {len(token_ids)} token(s); offset={last_offset} "
                    "needs more", param="offset"
                )
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        # Rows go straight to their place in example order: one scatter per batch into a buffer of
        # the window (its size is known from the token counts), one copy off the device per window.
        counts = np.array([len(t) if position == "all" else 1 for t in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        acts_rows = None
        token_rows = torch.empty(int(offsets[-1]), dtype=torch.int64, device=device)
        n_tokens = 0
        for b in range(0, len(order), batch_size):
            members = order[b : b + batch_size]
            acts, row_batch, row_token, batch_tokens = _batch_rows(
                model, tokenizer, blocks, [ids[i] for i in members], layers, options, device,
                [window_where[i] for i in members],
            )
            # Rows of a batch come in batch order, each example's in token order.
            dest = torch.from_numpy(np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in members]))
            dest = dest.to(device)
            if acts_rows is None:
                acts_rows = acts.new_empty((int(offsets[-1]), *acts.shape[1:]))
            acts_rows[dest] = acts
            token_rows[dest] = row_token
            n_tokens += batch_tokens
            if on_batch is not None:
                on_batch(len(members), batch_tokens)
        example_rows = np.repeat(np.arange(w_start, w_stop, dtype=np.int64), counts)
        acts_out = acts_rows if as_tensors else acts_rows.cpu().numpy()
        yield Window(w_start, w_stop, acts_out, example_rows, token_rows.cpu().numpy(), n_tokens)


def _batch_rows(model, tokenizer, blocks, batch_ids: list[list[int]], layers: Sequence[int], options: CaptureOptions,
                device, where: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One padded forward pass: ``(acts (rows, layer, hidden), row_batch, row_token, real tokens)``,
    every row finite (else :class:`CaptureError` naming the text)."""
    padded = tokenizer.pad({"input_ids": batch_ids}, return_tensors="pt")
    input_ids = padded["input_ids"].to(device)
    attention_mask = padded["attention_mask"].to(device)
    outputs = forward_blocks(model, blocks, input_ids, attention_mask, layers, options.stop_early, options.site)
    stacked = []
    for layer in layers:
        # With a device map, blocks sit on several devices: rows are gathered where the inputs are.
        rows, row_batch, row_token = reduce_positions(outputs[layer].to(device), attention_mask, options.position,
                                                      options.last_offset)
        stacked.append(rows)
    acts = torch.stack(stacked, dim=1)  # (rows, layer, hidden)
    finite = torch.isfinite(acts).all(dim=(1, 2))
    if not bool(finite.all()):
        bad = int(row_batch[~finite][0])
        raise CaptureError(
            f"{where[bad]}: non-finite activation (NaN/Inf) at a captured layer; "
            "with dtype float16 this is usually overflow: use bfloat16 or float32", param="dtype"
        )
    return acts, row_batch, row_token, int(attention_mask.sum())

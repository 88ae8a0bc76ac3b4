"""The vocabulary pass without the full logits: per-token NLL and KL from the final hidden states.

Perplexity and KL need a log-softmax over the vocabulary at every token (gemma-3-270m: 262,144
words; the float32 logits of 4096 tokens are 4 GB). :class:`VocabHead` takes the hidden states
the model's LM head would read (:meth:`VocabHead.hidden`: any forward run with the head fed only
one position per row, so the model computes no logits to speak of) and applies the head, with
the logit transform the model applies after it (gemma's ``final_logit_softcapping``, granite's
``logits_scaling``, cohere's ``logit_scale``), one slice at a time: :func:`token_nll` and
:func:`token_kl` never hold more than :data:`CHUNK_BYTES` of logits (one slice).

A plain ``Linear`` head is sliced along the vocabulary: up to :meth:`VocabHead.rows` token rows
meet one slice of the head's rows after another, each slice's logsumexp kept (so that the head's
weight, 671 MB for gemma, is read once per chunk of tokens, not once per few tokens: slicing
the tokens alone made the pass slower than the full logits). Any other head (a device-mapped or
quantized one) is run on a few token rows at a time, over the whole vocabulary.

The first pass of each :class:`VocabHead` checks the head and transform against the logits the
model itself returned for the last position of each row (an architecture whose logits are
changed after the head in a way this module does not know is refused, not mismeasured).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from ..errors import ModelError

CHUNK_BYTES = 2**27  # bytes of one slice of logits (128 MiB)
MIN_WORDS = 4096  # the narrowest vocabulary slice (it caps the token rows of a chunk)


def _softcap(model) -> float | None:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for source in (text, config):
        cap = getattr(source, "final_logit_softcapping", None)
        if cap is not None:
            return float(cap)
    return None


def _scale(model) -> float:
    """The factor the logits are multiplied by after the head (1.0 for most models)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    for source in (text, config):
        divide = getattr(source, "logits_scaling", None)  # granite: logits / logits_scaling
        if divide is not None:
            return 1.0 / float(divide)
    logit_scale = getattr(model, "logit_scale", None)  # cohere: logits * logit_scale
    if isinstance(logit_scale, (int, float)):
        scale = float(logit_scale)
    return scale


@dataclass
class VocabHead:
    """A model's LM head and its post-head transform, applied to slices of token rows.

    >>> head = VocabHead(torch.nn.Linear(4, 10, bias=False), softcap=None)
    >>> head.logits(torch.zeros(3, 4)).shape
    torch.Size([3, 10])
    """

    head: torch.nn.Module
    softcap: float | None = None
    scale: float = 1.0
    chunk_bytes: int = CHUNK_BYTES
    checked: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, model) -> VocabHead:
        """The head of ``model`` (``get_output_embeddings()``) with its transform from the config."""
        return cls(model.get_output_embeddings(), _softcap(model), _scale(model), CHUNK_BYTES)

    @property
    def vocab_size(self) -> int:
        return int(self.head.weight.shape[0])

    @property
    def sliceable(self) -> bool:
        """A plain ``Linear`` (not device-mapped): sliced along the vocabulary."""
        return type(self.head) is torch.nn.Linear and not hasattr(self.head, "_hf_hook")

    def rows(self, itemsize: int = 4) -> int:
        """Token rows per chunk: a slice of at least :data:`MIN_WORDS` words (the whole vocabulary
        for a head that is not :attr:`sliceable`) of ``itemsize``-byte logits fits :attr:`chunk_bytes`."""
        words = min(MIN_WORDS, self.vocab_size) if self.sliceable else self.vocab_size
        return max(1, self.chunk_bytes // (words * itemsize))

    def slices(self, hidden: torch.Tensor, itemsize: int = 4):
        """``(start, logits)`` of ``hidden`` ``(rows, hidden)``, one slice of words at a time."""
        words = self.vocab_size
        if self.sliceable:
            words = max(1, min(words, self.chunk_bytes // (max(1, hidden.shape[0]) * itemsize)))
        for start in range(0, self.vocab_size, words):
            yield start, self.logits(hidden, start, start + words)

    def logits(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 logits of ``hidden`` (``(..., hidden)``), as the model returns them (of the words
        ``start:stop`` only, from those rows of a :attr:`sliceable` head's weight)."""
        if start == 0 and (stop is None or stop >= self.vocab_size):
            logits = self.head(hidden)
        else:
            bias = None if self.head.bias is None else self.head.bias[start:stop]
            logits = torch.nn.functional.linear(hidden, self.head.weight[start:stop], bias)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    @torch.no_grad()
    def hidden(self, forward: Callable[[Hashable, object], torch.Tensor], key: Hashable, batch) -> torch.Tensor:
        """The final hidden states ``forward(key, batch)`` feeds the head, ``(batch, kept positions,
        hidden)``; the head itself computes no logits, but on the first call those of the last
        position, checked against :meth:`logits`."""
        taken: list[torch.Tensor] = []
        keep = 0 if self.checked else 1

        def take(module, args):
            taken.append(args[0])
            return (args[0][..., args[0].shape[-2] - keep:, :], *args[1:])

        hook = self.head.register_forward_pre_hook(take)
        try:
            returned = forward(key, batch)
        finally:
            hook.remove()
        if len(taken) != 1:
            raise RuntimeError(f"the LM head ran {len(taken)} times in one forward (expected once)")
        if not self.checked:
            self._check(taken[0][..., -1:, :], returned)
        return taken[0]

    def _check(self, last: torch.Tensor, returned: torch.Tensor) -> None:
        mine = self.logits(last).to(returned.device)
        if mine.shape != returned.shape or not torch.allclose(mine, returned.float(), rtol=1e-4, atol=1e-4):
            raise ModelError("the model's logits are not its LM head's output with the transforms this pass knows "
                             "(final_logit_softcapping, logits_scaling, logit_scale): its perplexity and KL cannot "
                             "be computed in slices of tokens; this architecture is not supported here")
        self.checked = True


def _chunk_nll(head: VocabHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` NLL of ``targets`` (no -100) after ``hidden`` ``(rows, hidden)``: the logsumexp of
    the slices' logsumexps (each one fused op; combined in float64) minus the target's logit."""
    parts = []
    picked = torch.empty(targets.shape, device=targets.device)
    for start, logits in head.slices(hidden, 4):
        logits = logits.to(targets.device)
        parts.append(torch.logsumexp(logits, -1))
        inside = ((targets >= start) & (targets < start + logits.shape[1])).nonzero().squeeze(-1)
        picked[inside] = logits[inside, targets[inside] - start]
    return (torch.logsumexp(torch.stack(parts, -1).double(), -1) - picked.double()).float()


def token_nll(hidden: torch.Tensor, targets: torch.Tensor, head: VocabHead) -> torch.Tensor:
    """``(batch, seq-1)`` next-token NLL from ``hidden`` ``(batch, seq, hidden)``; 0 where ``targets``
    is -100. Only the rows with a target meet the head, :meth:`VocabHead.rows` at a time."""
    batch, seq = targets.shape
    flat_targets = targets.reshape(-1)
    flat_hidden = hidden[:, :seq].reshape(-1, hidden.shape[-1])
    picked = (flat_targets != -100).nonzero().squeeze(-1)
    out = torch.zeros(batch * seq, dtype=torch.float32, device=hidden.device)
    step = head.rows(4)
    with torch.no_grad():
        for start in range(0, len(picked), step):
            rows = picked[start:start + step]
            out[rows] = _chunk_nll(head, flat_hidden[rows], flat_targets[rows].to(hidden.device)).to(out.device)
    return out.view(batch, seq)


def _chunk_kl(head: VocabHead, base: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """KL per row over the slices, logits ``a`` (base), ``b`` (steered) in float64:
    ``sum_w p_w (a_w - b_w) - lse(a) + lse(b)``, the first sum gathered per slice against the
    slice's own logsumexp and reweighted by ``exp(lse_slice(a) - lse(a))``."""
    lse_a, lse_b, within = [], [], []
    for (_, a), (_, b) in zip(head.slices(base, 16), head.slices(steered, 16)):
        a, b = a.double().to(base.device), b.double().to(base.device)
        lse_a.append(torch.logsumexp(a, -1))
        lse_b.append(torch.logsumexp(b, -1))
        within.append((torch.softmax(a, -1) * (a - b)).sum(-1))
    lse_a, lse_b, within = torch.stack(lse_a, -1), torch.stack(lse_b, -1), torch.stack(within, -1)
    total_a, total_b = torch.logsumexp(lse_a, -1), torch.logsumexp(lse_b, -1)
    return (torch.exp(lse_a - total_a[:, None]) * within).sum(-1) - total_a + total_b


def token_kl(base: torch.Tensor, steered: torch.Tensor, head: VocabHead) -> torch.Tensor:
    """Per row, ``KL(P_base || P_steered)`` of the next-token distributions the hidden states
    ``base`` and ``steered`` (``(rows, hidden)``) give, float64 (logits in float64), clamped at 0;
    :meth:`VocabHead.rows` rows at a time."""
    out = torch.zeros(base.shape[0], dtype=torch.float64, device=base.device)
    step = head.rows(16)
    with torch.no_grad():
        for start in range(0, base.shape[0], step):
            out[start:start + step] = _chunk_kl(head, base[start:start + step], steered[start:start + step])
    return out.clamp(min=0.0)


__all__ = ["CHUNK_BYTES", "MIN_WORDS", "VocabHead", "token_kl", "token_nll"]

"""Damage as KL divergence where the model speaks: on the unsteered model's own continuations.

Perplexity of reference text says how a steered model reads other documents; what a user meets is
what it writes. For each prompt (held-out, harmless), the unsteered model writes ``n_tokens``
greedily; both models then read prompt + continuation, and at each continuation token ``t``

    KL_t = sum_w P_unsteered(w | prefix_t) (log P_unsteered(w | prefix_t) - log P_steered(w | prefix_t))

is the divergence of the steered model's next-token distribution from the unsteered one's. Reported
per prompt: ``kl_first`` (the first generated token: Heretic's measure) and ``kl`` (the mean over
the continuation up to and including its end-of-sequence token, since damage that one token misses
shows up over a continuation), each with an interval over prompts. Log-softmax runs over the
vocabulary one slice of rows at a time, so the full float64 logits of a batch never exist at once.

The prompts (:func:`read_kl_prompts`): a file of the user's, by default the first
:data:`DEFAULT_KL_PROMPTS` instructions of ``shared/data/refusal-direction/harmless_val.json``
beside the package's repository (found as the perplexity corpus is:
:func:`actstore.inputs.corpus.beside_repository`); each is formatted as a user turn of the model's
chat template where its tokenizer has one (:func:`format_prompts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ActstoreError
from ..models.hooks import position_ids
from ..models.load import LoadedModel
from .intervals import Interval, paired_mean_interval
from .replay import padding_side

ROWS_PER_SLICE = 256  # token rows whose float64 log-softmax is held at once
DEFAULT_KL_TOKENS = 32  # continuation tokens per prompt
DEFAULT_KL_PROMPTS = 100  # prompts of the default set
# Relative to the folder that holds the package's repository, as the perplexity corpus.
_SHARED_KL_PROMPTS = Path("shared") / "data" / "refusal-direction" / "harmless_val.json"
_PROMPT_FIELDS = ("instruction", "prompt")


def default_kl_prompts() -> Path:
    """The default KL prompts' file: ``shared/data/refusal-direction/harmless_val.json`` in the
    folder that holds the package's repository (held-out harmless instructions, Arditi et al. 2024);
    an error naming ``kl_prompts`` (``--kl-prompts``) where it is absent."""
    from ..inputs.corpus import beside_repository

    path = beside_repository(_SHARED_KL_PROMPTS)
    if not path.is_file():
        raise ActstoreError(f"no KL prompts given and none found (no {str(path)!r}); pass kl_prompts: a JSON list "
                            "of strings or of objects with an 'instruction' or 'prompt' field, or a text file of "
                            "one prompt a line", param="kl_prompts")
    return path


def read_kl_prompts(path: str | Path | None = None) -> list[str]:
    """The prompts of ``path`` (:func:`~actstore.evaluation.protocols.read_prompts`, objects with an
    ``instruction`` or ``prompt`` field). None: the first :data:`DEFAULT_KL_PROMPTS` of
    :func:`default_kl_prompts`. A file that does not read is named, with the item at fault."""
    from .protocols import read_prompts

    prompts = read_prompts(default_kl_prompts() if path is None else path, param="kl_prompts",
                           fields=_PROMPT_FIELDS)
    return prompts[:DEFAULT_KL_PROMPTS] if path is None else prompts


def format_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Each prompt as a user turn of the tokenizer's chat template (with the generation prompt) where
    it has one; raw otherwise, with the BOS the tokenizer would add itself (:func:`continuations`
    tokenizes without special tokens: a chat template brings its own)."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    return [bos + p if adds_bos else p for p in prompts]


@dataclass(frozen=True)
class Continuations:
    """The unsteered model's greedy continuations: ``ids`` (rows, prompt + n) left-padded,
    ``mask`` (rows, prompt + n) real tokens, ``scored`` (rows, n) continuation tokens counted
    (up to and including the first end-of-sequence token)."""

    ids: torch.Tensor
    mask: torch.Tensor
    scored: torch.Tensor
    n_tokens: int


@dataclass(frozen=True)
class KLDamage:
    """Per prompt: ``kl_first`` and ``kl`` (mean over the scored continuation), float64 arrays."""

    kl_first: np.ndarray
    kl: np.ndarray

    def intervals(self) -> tuple[Interval, Interval]:
        """Mean KL at the first token and over the continuation, each with a t interval over prompts."""
        zeros = np.zeros_like(self.kl)
        return paired_mean_interval(self.kl_first, zeros), paired_mean_interval(self.kl, zeros)


def continuations(loaded: LoadedModel, prompts: Sequence[str], n_tokens: int = 32,
                  batch_size: int = 8) -> list[Continuations]:
    """The unsteered model's greedy continuations of ``prompts`` (formatted text, tokenized without
    special tokens added: a chat template brings its own), batch by batch."""
    tokenizer, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        with padding_side(tokenizer, "left"), torch.no_grad():
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            ids = model.generate(**batch, do_sample=False, max_new_tokens=n_tokens, min_new_tokens=1,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = ids[:, batch["input_ids"].shape[1]:]
        new = torch.nn.functional.pad(new, (0, n_tokens - new.shape[1]), value=tokenizer.pad_token_id)
        ended = torch.cumsum((new == tokenizer.eos_token_id).long(), dim=1)
        scored = (ended - (new == tokenizer.eos_token_id).long()) == 0  # up to and including the first EOS
        mask = torch.cat([batch["attention_mask"], scored.long()], dim=1)
        out.append(Continuations(torch.cat([batch["input_ids"], new], dim=1), mask, scored, n_tokens))
    return out


def _continuation_log_probs(loaded: LoadedModel, batch: Continuations) -> torch.Tensor:
    """(rows, n, vocab) float32 log-probabilities at each continuation token, under the steering active now."""
    with torch.no_grad():
        logits = loaded.model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=position_ids(batch.mask),
                              use_cache=False).logits[:, -batch.n_tokens - 1:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    for start in range(0, flat.shape[0], ROWS_PER_SLICE):
        out[start:start + ROWS_PER_SLICE] = torch.log_softmax(flat[start:start + ROWS_PER_SLICE].double(), -1).float()
    return out.reshape(logits.shape)


def kl_damage(loaded: LoadedModel, batches: Sequence[Continuations],
              steering: Callable[[], AbstractContextManager] = nullcontext) -> KLDamage:
    """KL(unsteered || steered) per prompt on the continuations, the steered model being ``loaded``
    inside ``steering()`` (a context manager factory, e.g. ``lambda: steer(loaded, vector, 4.0)``).
    The unsteered distributions are recomputed batch by batch (a vocabulary of 262,144 words makes
    them too large to keep for a whole sweep)."""
    firsts, means = [], []
    for batch in batches:
        base = _continuation_log_probs(loaded, batch)
        with steering():
            steered = _continuation_log_probs(loaded, batch)
        per_token = (base.double().exp() * (base.double() - steered.double())).sum(-1)  # (rows, n)
        per_token = per_token.clamp(min=0.0)  # float rounding below zero
        scored = batch.scored.to(per_token.device)
        firsts.append(per_token[:, 0])
        means.append((per_token * scored).sum(1) / scored.sum(1).clamp(min=1))
    return KLDamage(torch.cat(firsts).cpu().numpy(), torch.cat(means).cpu().numpy())

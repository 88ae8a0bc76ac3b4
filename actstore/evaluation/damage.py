"""Damage as KL divergence where the model speaks: on the unsteered model's own continuations.

Perplexity of reference text says how a steered model reads other documents; what a user meets is
what it writes. For each prompt (held-out, harmless), the unsteered model writes ``n_tokens``
greedily; both models then read prompt + continuation, and at each continuation token ``t``

    KL_t = sum_w P_unsteered(w | prefix_t) (log P_unsteered(w | prefix_t) - log P_steered(w | prefix_t))

is the divergence of the steered model's next-token distribution from the unsteered one's. Reported
per prompt: ``kl_first`` (the first generated token: Heretic's measure) and ``kl`` (the mean over
the continuation up to and including its end-of-sequence token, since damage that one token misses
shows up over a continuation), each with an interval over prompts. The model returns the final
hidden states of the continuation's tokens only, and the LM head and log-softmax run over the
vocabulary one slice of token rows at a time (:mod:`.vocab`): the logits of a batch never exist at once.

The prompts (:func:`read_kl_prompts`): a file of the user's, by default the first
:data:`DEFAULT_KL_PROMPTS` instructions of ``shared/data/refusal-direction/harmless_val.json``
beside the package's repository (found as the perplexity corpus is:
:func:`actstore.inputs.corpus.beside_repository`); each is formatted as a user turn of the model's
chat template where its tokenizer has one (:func:`format_prompts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ActstoreError
from ..models.load import LoadedModel
from .intervals import Interval, paired_mean_interval
from .replay import Batch, padding_side
from .vocab import VocabHead, token_kl

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
    (up to and including the first end-of-sequence token); ``hidden`` (rows, n, hidden) the
    unsteered final hidden states that predict them (None: recomputed by :func:`kl_damage`)."""

    ids: torch.Tensor
    mask: torch.Tensor
    scored: torch.Tensor
    n_tokens: int
    hidden: torch.Tensor | None = None


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
    special tokens added: a chat template brings its own), batch by batch, with the final hidden
    states that predict them (run outside any steering)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    head, out = VocabHead.of(model), []
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
        done = Continuations(torch.cat([batch["input_ids"], new], dim=1), mask, scored, n_tokens)
        # Kept (a few MB): every configuration's KL then runs the steered model only.
        out.append(replace(done, hidden=_continuation_hidden(loaded, done, head)))
    return out


def _continuation_hidden(loaded: LoadedModel, batch: Continuations, head: VocabHead) -> torch.Tensor:
    """(rows, n, hidden): the final hidden states that predict each continuation token, under the
    steering active now (the model keeps the last n + 1 positions; the head reads them in slices)."""
    model_batch = Batch(batch.ids, batch.mask, logits_to_keep=batch.n_tokens + 1)

    def forward(key, b: Batch) -> torch.Tensor:
        return loaded.model(**b.model_inputs(batch.ids.device)).logits

    return head.hidden(forward, None, model_batch)[:, :-1]


def kl_damage(loaded: LoadedModel, batches: Sequence[Continuations],
              steering: Callable[[], AbstractContextManager] = nullcontext) -> KLDamage:
    """KL(unsteered || steered) per prompt on the continuations, the steered model being ``loaded``
    inside ``steering()`` (a context manager factory, e.g. ``lambda: steer(loaded, vector, 4.0)``).
    The unsteered distributions are recomputed batch by batch from the unsteered hidden states the
    batches keep (a vocabulary of 262,144 words makes the distributions too large to keep for a
    whole sweep)."""
    firsts, means = [], []
    head = VocabHead.of(loaded.model)
    for batch in batches:
        base = _continuation_hidden(loaded, batch, head) if batch.hidden is None else batch.hidden
        with steering():
            steered = _continuation_hidden(loaded, batch, head)
        scored = batch.scored.to(base.device)
        per_token = torch.zeros(scored.shape, dtype=torch.float64, device=base.device)  # (rows, n)
        per_token[scored] = token_kl(base[scored], steered[scored], head)  # clamped at 0 (float rounding)
        firsts.append(per_token[:, 0])
        means.append((per_token * scored).sum(1) / scored.sum(1).clamp(min=1))
    return KLDamage(torch.cat(firsts).cpu().numpy(), torch.cat(means).cpu().numpy())

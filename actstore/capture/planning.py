"""A capture resolved against its model and data, before anything is written: the texts (formatted,
with their labels, pairs, questions and where each came from), the layers, the position (an A/B
set's answer letter by default), the group's name and spec, and the run's recorded settings."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ActstoreError
from ..inputs.datasets import ContrastSet, Example, text_hash
from ..inputs.sources import Column, TextSource
from ..models.blocks import parse_layers, text_config
from ..models.load import LoadedModel, safe_group_name
from ..stores.schema import AUTO_CODEC, CaptureSpec, GroupOptions
from .options import CaptureOptions


def format_texts(examples: list[Example], tokenizer, chat_template: bool) -> tuple[list[str], bool]:
    """The strings to tokenize, and whether the tokenizer should add special tokens.

    Without ``chat_template`` an example's ``text`` is used as is. With it, an
    A/B item becomes a user turn (question) and an assistant turn (answer);
    any other text becomes a single user turn.
    """
    if not chat_template:
        return [e.text for e in examples], True
    if getattr(tokenizer, "chat_template", None) is None:
        raise ActstoreError("chat_template: this tokenizer has no chat template", param="chat_template")
    texts = []
    for e in examples:
        if e.prompt is not None:
            messages = [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.completion}]
        else:
            messages = [{"role": "user", "content": e.text}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    # The template already holds BOS and friends.
    return texts, False


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


@dataclass
class Rows:
    """Everything per text that a capture writes beside the activations."""

    texts: list[str]
    labels: np.ndarray
    pair_ids: np.ndarray
    hashes: np.ndarray
    where: list[str]
    add_special_tokens: bool = True
    questions: np.ndarray | Column | None = None  # None: the pair ids (no twins)
    orders: np.ndarray | Column | None = None  # None: all 0 (as written)

    def max_pair_id(self) -> int:
        if not len(self.texts):
            return -1
        if isinstance(self.pair_ids, Column):  # a source: pair id = row
            return len(self.pair_ids) - 1
        return int(self.pair_ids.max())

    def window(self, start: int, stop: int, local: np.ndarray) -> dict[str, np.ndarray]:
        """``class``, ``pair_id``, ``text_hash``, ``question`` and ``order`` of rows whose texts are
        ``local`` (0-based within texts ``start .. stop-1``): one slice of each column per window, also
        for a lazy source."""
        out = {}
        for name, column in (("class", self.labels), ("pair_id", self.pair_ids), ("text_hash", self.hashes),
                             ("question", self.pair_ids if self.questions is None else self.questions)):
            part = column[start:stop]
            out[name] = (part.to_numpy() if isinstance(part, Column) else np.asarray(part))[local]
        orders = np.zeros(stop - start, np.int64) if self.orders is None else np.asarray(self.orders[start:stop])
        out["order"] = orders[local]
        return out

    @classmethod
    def of_source(cls, source: TextSource) -> Rows:
        """The rows of a lazily read source: every column is read a window at a time."""
        texts = source.texts
        hashes = Column(len(texts), lambda a, b: np.asarray([text_hash(t) for t in texts[a:b]], dtype=str))
        return cls(texts=texts, labels=source.labels, pair_ids=source.pair_ids, hashes=hashes, where=source.where)

    @classmethod
    def of_examples(cls, contrast: ContrastSet, texts: list[str], add_special: bool) -> Rows:
        examples = contrast.examples
        return cls(
            texts=texts,
            labels=np.asarray([e.label for e in examples], dtype=str),
            pair_ids=np.asarray([e.pair_id for e in examples], dtype=np.int64),
            hashes=np.asarray([text_hash(t) for t in texts], dtype=str),
            where=[f"{contrast.path!r} {e.where}" + (" (its option-swapped twin)" if e.order else "")
                   for e in examples],
            add_special_tokens=add_special,
            questions=np.asarray([e.question_id for e in examples], dtype=np.int64),
            orders=np.asarray([e.order for e in examples], dtype=np.int64),
        )


@dataclass(frozen=True)
class Plan:
    """A capture resolved against its model and data: the rows, the group and its spec."""

    options: CaptureOptions
    group_name: str
    spec: CaptureSpec
    settings: dict
    rows: Rows
    stats_only: bool
    offset_note: str | None


def plan_capture(loaded: LoadedModel, contrast: ContrastSet | TextSource, options: CaptureOptions,
                 group: GroupOptions) -> Plan:
    """Resolve ``options`` (layers, max length, offset) against ``loaded`` and ``contrast``."""
    options = options.replace(layers=tuple(parse_layers(options.layers, loaded.num_layers)))
    if options.max_length is None:
        options = options.replace(max_length=context_length(loaded))
    if isinstance(contrast, TextSource):
        if options.chat_template:
            raise ActstoreError(f"{contrast.path!r}: chat_template is for contrast-set files, not datasets or "
                                "corpora", param="chat_template")
        rows = Rows.of_source(contrast)
    else:
        texts, add_special = format_texts(contrast.examples, loaded.tokenizer, options.chat_template)
        rows = Rows.of_examples(contrast, texts, add_special)
    offset_note = None
    if options.offset is None:
        offset, offset_note = default_offset(options, contrast, loaded.tokenizer, rows)
        options = options.replace(offset=offset)
    group_name = group.name if group.name is not None else safe_group_name(loaded.model_id)
    return Plan(options, group_name, group_spec(loaded, options, group), run_settings(options, contrast), rows,
                group.stats_only, offset_note)


def group_spec(loaded: LoadedModel, options: CaptureOptions, group: GroupOptions) -> CaptureSpec:
    """What the group holds (appending must match it)."""
    extra = {"model_dtype": loaded.dtype, "num_model_layers": loaded.num_layers}
    if loaded.source_id is not None:
        extra["model_source"] = loaded.source_id
    return CaptureSpec(model_id=loaded.model_id, model_fingerprint=loaded.fingerprint,
                       model_type=getattr(loaded.model.config, "model_type", None), hidden_size=loaded.hidden_size,
                       layers=list(options.layers), position=options.position_name, dtype=group.store_dtype,
                       stats_only=group.stats_only, codec=options.at.codec if group.codec == AUTO_CODEC else group.codec,
                       site=options.site, extra=extra)


def run_settings(options: CaptureOptions, contrast) -> dict:
    """The settings a run records (a resumed run must match them)."""
    settings = {"separator": options.separator, "chat_template": options.chat_template,
                "max_length": options.max_length}
    # Recorded only when given, so that runs of contrast-set files made before these existed still match.
    settings.update({name: getattr(options, name) for name in ("text_column", "label_column")
                     if getattr(options, name) is not None})
    if isinstance(contrast, ContrastSet) and contrast.swapped:
        settings["swap_options"] = True
    return settings


def default_offset(options: CaptureOptions, contrast, tokenizer, rows: Rows) -> tuple[int, str | None]:
    """Offset 1 (the answer letter) for an A/B set captured at ``last``, if its tokens allow; else 0."""
    if not options.at.takes_offset or not isinstance(contrast, ContrastSet) or not contrast.is_ab:
        return 0, None
    reason = answer_letter_reason(tokenizer, rows.texts, rows.add_special_tokens)
    if reason is None:
        return 1, "A/B set: capturing the answer letter (offset 1), as CAA does; offset=0 captures the final ')'"
    warnings.warn(f"{contrast.path!r} is an A/B set, but it is captured at its last token, not the answer letter: "
                  f"{reason}", stacklevel=5)
    return 0, None


def context_length(loaded: LoadedModel) -> int | None:
    config = text_config(loaded.model.config)
    limits = [getattr(config, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None

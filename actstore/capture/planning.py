"""A capture resolved against its model and data, before anything is written: the texts (formatted,
with their labels, pairs, questions and where each came from), the layers, the position (an A/B
set's answer letter by default), the group's name and spec, and the run's recorded settings.

Every text is formatted through one :class:`~actstore.inputs.chat.ChatFormat` (:func:`format_examples`):
a chat exchange is a user turn and an assistant turn, and where the position needs them (one relative
to the response, or every token of exchanges) each text's token roles travel with it to the reducer
(:class:`Rows` ``roles``) and into the store's ``role`` and ``response_index`` coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ActstoreError
from ..inputs.chat import ChatFormat, layout_spans, token_roles
from ..inputs.datasets import EXCHANGE_FORMATS, ContrastSet, Example, text_hash
from ..inputs.sources import Column, TextSource
from ..models.blocks import parse_layers, text_config
from ..models.load import LoadedModel, safe_group_name
from ..stores.schema import AUTO_CODEC, CaptureSpec, GroupOptions
from .options import CaptureOptions


def format_texts(examples: list[Example], tokenizer, chat_template: bool,
                 system: str | None = None) -> tuple[list[str], bool]:
    """The strings to tokenize, and whether the tokenizer should add special tokens
    (:func:`format_examples` without the roles; without a template every text reads as written)."""
    texts, add_special, _ = format_examples(examples, tokenizer, ChatFormat(chat_template, system), True, roles=False)
    return texts, add_special


def format_examples(examples: list[Example], tokenizer, chat: ChatFormat, ab: bool,
                    roles: bool) -> tuple[list[str], bool, list[np.ndarray] | None]:
    """The strings to tokenize, whether the tokenizer adds special tokens, and (with ``roles``) each
    text's token roles (:class:`actstore.inputs.chat.ChatTokens`), all through ``chat``:

    * a chat exchange (a prompt and a response: records with ``prompt`` and ``response``, or the
      model's own, :mod:`.respond`) is a user turn and an assistant turn, under the example's system
      prompt if it has one (on-policy capture), else ``chat``'s;
    * an A/B item (``ab``, with its question and answer) likewise with a template; without one it
      keeps today's reading, question + separator + answer (after the system paragraph, if any);
    * any other text is one user turn with the generation prompt (with a template), or is read as
      written (after the system paragraph, if any).
    """
    if chat.template:
        chat.check(tokenizer)
    texts, text_roles = [], []
    for e in examples:
        fmt, tokens = (chat if e.system is None else replace(chat, system=e.system)), None
        if ab and e.prompt is not None and not chat.template:  # as written, after the system paragraph
            text = f"{fmt.system}\n\n{e.text}" if fmt.system else e.text
            tokens = _ab_tokens(tokenizer, e, fmt.system) if roles else None
        elif roles:
            tokens = fmt.tokens(tokenizer, e.text if e.prompt is None else e.prompt, e.completion, e.where)
            text = tokens.text
        elif e.prompt is None:
            text = fmt.prompt_text(tokenizer, e.text)
        else:
            text = fmt.exchange_text(tokenizer, e.prompt, e.completion)
        texts.append(text)
        text_roles.append(None if tokens is None else tokens.roles)
    # A template already holds BOS and friends.
    return texts, chat.add_special_tokens, text_roles if roles else None


def _ab_tokens(tokenizer, e: Example, system: str | None):
    """The roles of an A/B text as written: its question (user), separator (template), answer (assistant)."""
    if not (e.text.startswith(e.prompt) and e.text.endswith(e.completion)):
        raise ActstoreError(f"{e.where}: the A/B text {e.text[:60]!r} is not its question, a separator and its "
                            "answer; capture it at a position that reads no roles", param="position")
    pieces = [("system", system), ("template", "\n\n")] if system else []
    pieces += [("user", e.prompt), ("template", e.text[len(e.prompt): len(e.text) - len(e.completion)]),
               ("assistant", e.completion)]
    return token_roles(tokenizer, "".join(piece for _, piece in pieces), layout_spans(pieces), True)


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
    roles: list[np.ndarray] | None = None  # each text's token roles (chat exchanges, positions that read them)
    responses: np.ndarray | None = None  # each text's response (chat exchanges); None: no exchanges

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
        if self.responses is not None:
            out["response"] = self.responses[start:stop][local]
        return out

    @classmethod
    def of_source(cls, source: TextSource) -> Rows:
        """The rows of a lazily read source: every column is read a window at a time."""
        texts = source.texts
        hashes = Column(len(texts), lambda a, b: np.asarray([text_hash(t) for t in texts[a:b]], dtype=str))
        return cls(texts=texts, labels=source.labels, pair_ids=source.pair_ids, hashes=hashes, where=source.where)

    @classmethod
    def of_examples(cls, contrast: ContrastSet, texts: list[str], add_special: bool,
                    roles: list[np.ndarray] | None = None) -> Rows:
        examples = contrast.examples
        exchanges = contrast.format in EXCHANGE_FORMATS
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
            roles=roles,
            responses=np.asarray([e.completion for e in examples], dtype=str) if exchanges else None,
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
        if options.chat_template or options.system is not None or options.at.reads_response:
            raise ActstoreError(f"{contrast.path!r}: chat formatting (chat_template, system, position "
                                f"{options.position}) is for contrast-set files, not datasets or corpora",
                                param="chat_template")
        rows = Rows.of_source(contrast)
    else:
        rows = Rows.of_examples(contrast, *format_examples(contrast.examples, loaded.tokenizer, options.chat,
                                                           contrast.format == "caa", reads_roles(options, contrast)))
    offset_note = None
    if options.offset is None:
        offset, offset_note = default_offset(options, contrast, loaded.tokenizer, rows)
        options = options.replace(offset=offset)
    group_name = group.name if group.name is not None else safe_group_name(loaded.model_id)
    settings, spec = run_settings(options, contrast, loaded.tokenizer), group_spec(loaded, options, group)
    if "made" in settings:  # the first capture's, in the group's attributes too (each run records its own)
        spec.extra.update(settings["made"])
    return Plan(options, group_name, spec, settings, rows, group.stats_only, offset_note)


def reads_roles(options: CaptureOptions, contrast: ContrastSet) -> bool:
    """Whether the capture reads each token's role: at a position relative to the response, or at every
    token of chat exchanges (the store's ``role`` coordinate)."""
    exchanges = any(e.completion is not None for e in contrast.examples)
    if options.at.reads_response and not exchanges:
        raise ActstoreError(f"{contrast.path!r}: position {options.position} reads the assistant's response, and "
                            "these texts have none: give records with 'prompt' and 'response' (or 'prompt', "
                            "'positive', 'negative'), or write them with capture --respond", param="position")
    return options.at.reads_response or (options.at.per_token and (exchanges or options.chat_template))


def group_spec(loaded: LoadedModel, options: CaptureOptions, group: GroupOptions) -> CaptureSpec:
    """What the group holds (appending must match it)."""
    extra = {"model_dtype": loaded.dtype, "num_model_layers": loaded.num_layers}
    if options.chat_template or options.system is not None:  # the first capture's: each run records its own
        extra.update(options.chat.attrs(loaded.tokenizer))
    if loaded.source_id is not None:
        extra["model_source"] = loaded.source_id
    return CaptureSpec(model_id=loaded.model_id, model_fingerprint=loaded.fingerprint,
                       model_type=getattr(loaded.model.config, "model_type", None), hidden_size=loaded.hidden_size,
                       layers=list(options.layers), position=options.position_name, dtype=group.store_dtype,
                       stats_only=group.stats_only, codec=options.at.codec if group.codec == AUTO_CODEC else group.codec,
                       site=options.site, extra=extra)


def run_settings(options: CaptureOptions, contrast, tokenizer=None) -> dict:
    """The settings a run records (a resumed run must match them)."""
    settings = {"separator": options.separator, "chat_template": options.chat_template,
                "max_length": options.max_length}
    if options.chat_template or options.system is not None:  # the template's hash and the system prompt
        settings["chat"] = options.chat.attrs(tokenizer)
    # Recorded only when given, so that runs of contrast-set files made before these existed still match.
    settings.update({name: getattr(options, name) for name in ("text_column", "label_column")
                     if getattr(options, name) is not None})
    if isinstance(contrast, ContrastSet) and contrast.swapped:
        settings["swap_options"] = True
    if isinstance(contrast, ContrastSet) and contrast.settings:  # how the set was made (on-policy responses)
        settings["made"] = contrast.settings
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

"""Chat exchanges: how a prompt (and a response) become the text a chat model reads.

One value, :class:`ChatFormat`, says whether the tokenizer's chat template is used and which
system prompt goes first; every command that formats text for a model (capture, steer, eval,
serve check, the judge) formats through it, so that a vector captured on a chat exchange is
applied and judged on the same layout.

>>> ChatFormat().prompt_text(None, "Name a colour.")  # no template: the prompt as is
'Name a colour.'
>>> ChatFormat(system="Be brief.").exchange_text(None, "Name a colour.", "Red.")
'Be brief.\\n\\nName a colour.\\n\\nRed.'

:meth:`ChatFormat.tokens` says what each token of an exchange is (:class:`ChatTokens`): its role
(:data:`ROLES`: the template's own text, the system prompt, the user's turn, the assistant's) and its
place in the response, read from the template itself (:func:`template_spans`: the conversation
rendered again with marks for the contents) and the tokenizer's offsets. The assistant's tokens are
those a template's ``{% generation %}`` block marks (``return_assistant_tokens_mask``), for templates
that have one and for those that do not. Capture reads them for its positions relative to the
response (``prompt-last``, ``response-mean``, ``response-all``) and its ``role`` coordinate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ActstoreError


@dataclass(frozen=True)
class ChatFormat:
    """``template``: format through the tokenizer's chat template (a user turn, then the assistant's
    response or the generation prompt); ``system``: a system prompt before the user turn (with a
    template, a system turn; without, a paragraph before the prompt)."""

    template: bool = False
    system: str | None = None

    def __post_init__(self):
        if self.system is not None and not isinstance(self.system, str):
            raise ActstoreError(f"system: expected a string, got {type(self.system).__name__}", param="system")

    def messages(self, user: str, response: str | None = None) -> list[dict]:
        """The conversation as chat messages (system, user, and the assistant's response if any)."""
        turns = [{"role": "system", "content": self.system}] if self.system else []
        turns.append({"role": "user", "content": user})
        if response is not None:
            turns.append({"role": "assistant", "content": response})
        return turns

    def check(self, tokenizer) -> None:
        """Refuse a template for a tokenizer that has none (named, with the fix)."""
        if self.template and not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "this tokenizer")
            raise ActstoreError(f"chat_template: {name!r} has no chat template; leave out --chat-template (the "
                                "texts are then read as written)", param="chat_template")

    def prompt_text(self, tokenizer, user: str) -> str:
        """What the model continues: the user turn and the generation prompt (the assistant's turn
        opened); without a template, the system paragraph and the prompt."""
        if not self.template:
            return f"{self.system}\n\n{user}" if self.system else user
        self.check(tokenizer)
        return tokenizer.apply_chat_template(self.messages(user), tokenize=False, add_generation_prompt=True)

    def exchange_text(self, tokenizer, user: str, response: str) -> str:
        """A whole exchange: the prompt and the assistant's response."""
        if not self.template:
            return f"{self.prompt_text(tokenizer, user)}\n\n{response}"
        self.check(tokenizer)
        return tokenizer.apply_chat_template(self.messages(user, response), tokenize=False)

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer should add its special tokens (a template brings its own BOS)."""
        return not self.template

    def attrs(self, tokenizer) -> dict:
        """What a store or a sweep folder records of the format: the template's hash, the system prompt."""
        if not self.template:
            return {"chat_template": None, "system": self.system}
        source = getattr(tokenizer, "chat_template", None) or ""
        return {"chat_template": hashlib.sha256(str(source).encode()).hexdigest()[:16], "system": self.system}

    def tokens(self, tokenizer, user: str, response: str | None = None, where: str = "text") -> ChatTokens:
        """The tokens of :meth:`exchange_text` (or, without ``response``, of :meth:`prompt_text`) with
        each token's role and position in the response (:class:`ChatTokens`)."""
        messages = self.messages(user, response)
        text = self.prompt_text(tokenizer, user) if response is None else self.exchange_text(tokenizer, user, response)
        if not self.template:  # the paragraphs as written: system, a blank line, user, a blank line, response
            pieces: list[tuple[str, str]] = []
            for m in messages:
                pieces += [(TEMPLATE_ROLE, "\n\n")] if pieces else []
                pieces.append((m["role"], m["content"]))
            spans = layout_spans(pieces)
        else:
            spans = template_spans(tokenizer, messages, text, response is None, where)
        return token_roles(tokenizer, text, spans, self.add_special_tokens)


# --- Which tokens are whose: roles of an exchange's tokens -----------------------------------------

ROLES = ("template", "system", "user", "assistant")  # a token's role code is its index here
TEMPLATE, SYSTEM, USER, ASSISTANT = range(len(ROLES))
TEMPLATE_ROLE = ROLES[TEMPLATE]


@dataclass(frozen=True)
class ChatTokens:
    """A formatted text's tokens and what each is. ``ids``: the token ids (special tokens as
    ``add_special_tokens`` says); ``roles: (tokens,) int8``, the :data:`ROLES` code of each token
    (``template`` for what the template or the tokenizer added: BOS, turn markers, newlines);
    ``response_index: (tokens,) int64``, the position within the assistant's response (0, 1, ...),
    -1 elsewhere."""

    text: str
    ids: list[int]
    roles: np.ndarray
    response_index: np.ndarray

    @property
    def n_response(self) -> int:
        return int((self.roles == ASSISTANT).sum())


def layout_spans(pieces: Sequence[tuple[str, str]]) -> list[tuple[int, int, int]]:
    """``(role code, first char, end char)`` of each piece of a text made of ``pieces`` ``(role,
    string)`` joined as they are (``template`` pieces are the joints)."""
    spans, at = [], 0
    for role, piece in pieces:
        if role != TEMPLATE_ROLE:
            spans.append((ROLES.index(role), at, at + len(piece)))
        at += len(piece)
    return spans


_MARK = "\ue000{}\ue001"  # private-use characters: a template copies them as they are


def template_spans(tokenizer, messages: list[dict], text: str, generation_prompt: bool,
                   where: str = "text") -> list[tuple[int, int, int]]:
    """Each message's content span in ``text``, the template's rendering of ``messages``: the
    template renders the conversation again with each content replaced by a mark, so its own text
    (headers, turn ends, the system prompt folded into a user turn) is known exactly, and the
    contents are what lies between (as written, or trimmed where the template trims them). A content
    that also occurs in a header is never mistaken for it. Refused, naming ``where``, when the
    template changes the contents otherwise (it would rewrite what was captured)."""
    marked = [{**m, "content": _MARK.format(i)} for i, m in enumerate(messages)]
    skeleton = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation_prompt)
    found = sorted((skeleton.find(_MARK.format(i)), i) for i in range(len(messages)))
    spans, cursor, done = [], 0, 0
    for k, (at, i) in enumerate(found):
        literal = skeleton[done:at] if at >= 0 else None
        done = at + len(_MARK.format(i))
        after = skeleton[done:found[k + 1][0]] if k + 1 < len(found) else skeleton[done:]
        content = messages[i]["content"]
        fits = [c for c in (content, content.strip(), content.lstrip(), content.rstrip())
                if literal is not None and text.startswith(literal + c + after, cursor)]
        if not fits:
            raise ActstoreError(f"{where}: the {messages[i]['role']} turn's text {content[:60]!r} is not where the "
                                f"chat template puts it in {text[:120]!r}...; the template rewrites its messages, so "
                                "roles cannot be read from it", param="chat_template")
        cursor += len(literal)
        spans.append((ROLES.index(messages[i]["role"]), cursor, cursor + len(fits[0])))
        cursor += len(fits[0])
    return spans


def token_roles(tokenizer, text: str, spans: Sequence[tuple[int, int, int]],
                add_special_tokens: bool) -> ChatTokens:
    """Tokenize ``text`` and give each token the role of the content span its characters fall
    in (:func:`template_spans`, :func:`layout_spans`), ``template`` where none (a token that
    straddles a content's edge is the content's, as ``return_assistant_tokens_mask`` marks it).
    Needs a fast tokenizer (its offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ActstoreError(f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} is not a fast tokenizer: roles "
                            "are read from token offsets, which only fast tokenizers give", param="position")
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    first, end = offsets[:, 0], offsets[:, 1]
    roles = np.full(len(offsets), TEMPLATE, dtype=np.int8)
    for code, lo, hi in reversed(spans):  # a token over two contents is the earlier one's
        roles[(end > first) & (first < hi) & (end > lo)] = code
    in_response = roles == ASSISTANT
    response_index = np.where(in_response, np.cumsum(in_response) - 1, -1).astype(np.int64)
    return ChatTokens(text, list(encoded["input_ids"]), roles, response_index)

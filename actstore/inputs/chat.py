"""Chat exchanges: how a prompt (and a response) become the text a chat model reads.

One value, :class:`ChatFormat`, says whether the tokenizer's chat template is used and which
system prompt goes first; every command that formats text for a model (capture, steer, eval,
serve check, the judge) formats through it, so that a vector captured on a chat exchange is
applied and judged on the same layout.

>>> ChatFormat().prompt_text(None, "Name a colour.")  # no template: the prompt as is
'Name a colour.'
>>> ChatFormat(system="Be brief.").exchange_text(None, "Name a colour.", "Red.")
'Be brief.\\n\\nName a colour.\\n\\nRed.'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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

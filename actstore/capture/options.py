"""How texts become rows: :class:`CaptureOptions`, one frozen record from the command line to
the forward passes (a new capture option is a field here and a click option)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import InputFormatError
from ..inputs.chat import ChatFormat
from ..models.blocks import SITES
from .positions import Position


@dataclass(frozen=True)
class CaptureOptions:
    """How texts become rows, validated on construction.

    ``layers``: the decoder blocks to read (``"all"``, ``"2,6"`` or a list of ints; checked
    against the model when it loads). ``position`` (:data:`~actstore.capture.positions.POSITIONS`)
    and ``offset`` (with ``last``: back from the last token; ``None`` lets
    :func:`actstore.capture_to_store` choose, 1 (the answer letter) for A/B sets, else 0) make
    :attr:`at`, the :class:`Position`. ``window`` is texts per commit (None: chosen from the
    store's chunks). ``separator`` joins an A/B question and its answer; ``chat_template``
    formats texts with the tokenizer's template and ``system`` is the system prompt before each
    (:attr:`chat`, :class:`actstore.inputs.chat.ChatFormat`); texts longer than ``max_length`` tokens keep
    their last ones (a plain-text corpus is cut into windows of that many); ``stop_early`` ends
    the forward pass after the deepest block; ``site`` is what is read in each block (``resid``,
    ``attn``, ``mlp``: :func:`actstore.models.blocks.site_module`). ``text_column`` and ``label_column``
    name the fields of the texts and labels (a dataset's columns, a JSON file's keys:
    :mod:`actstore.inputs.datasets`). ``swap_options`` captures an A/B set with each pair's option-swapped twin
    (:func:`actstore.inputs.datasets.with_twins`), so the answer letter cancels question by question;
    False keeps the texts as written. ``progress`` shows a progress bar. ``new_run`` captures a file the group
    already holds under other settings (e.g. another system prompt) as a run of its own; without it that is
    refused, naming what changed (its texts would otherwise be added again by mistake).

    >>> options = CaptureOptions(layers="1,2", position="mean")
    >>> options.position, options.replace(position="all").position
    ('mean', 'all')
    """

    layers: str | tuple[int, ...] = "all"
    position: str = "last"
    offset: int | None = None
    batch_size: int = 8
    max_length: int | None = None
    stop_early: bool = True
    window: int | None = None
    separator: str = "\n"
    chat_template: bool = False
    system: str | None = None
    site: str = "resid"
    text_column: str | None = None
    label_column: str | None = None
    swap_options: bool = True
    progress: bool = True
    new_run: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layers, (list, tuple)):
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        elif not isinstance(self.layers, str):
            raise InputFormatError(f"layers={self.layers!r}: expected 'all', '2,6,10' or a list of integers",
                                   param="layers")
        Position(self.position, self.offset or 0)  # validates position and offset
        ChatFormat(self.chat_template, self.system)  # validates the system prompt
        if self.site not in SITES:
            raise InputFormatError(f"site={self.site!r}: expected one of {', '.join(SITES)}", param="site")
        for name in ("batch_size", "max_length", "window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputFormatError(f"{name}={value!r}: expected an integer >= 1", param=name)

    @property
    def at(self) -> Position:
        """Where each text is read (offset None reads as 0 until the capture chooses)."""
        return Position(self.position, self.offset or 0)

    @property
    def chat(self) -> ChatFormat:
        """How texts are formatted for the model: the chat template or not, the system prompt."""
        return ChatFormat(self.chat_template, self.system)

    @property
    def last_offset(self) -> int:
        return self.offset or 0

    @property
    def position_name(self) -> str:
        """The position as a store records it: ``last``, ``last-1``, ``mean``, ``all``."""
        return self.at.name

    @classmethod
    def at_position(cls, name: str, **values) -> CaptureOptions:
        """Options that read where a store's recorded :attr:`position_name` says (its
        inverse: ``last-1`` -> position last, offset 1; ``last`` -> offset 0)."""
        at = Position.parse(name)
        return cls(position=at.kind, offset=at.offset if at.takes_offset else None, **values)

    def replace(self, **changes) -> CaptureOptions:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

"""On-policy capture, the persona-vectors recipe (Chen et al. 2025): the model writes its own
response to each question under a positive and a negative system prompt, and those exchanges are
captured (read them at ``response-mean``, the recipe's position).

1. **Generate.** Each question is formatted under each system prompt through
   :class:`~actstore.inputs.chat.ChatFormat` (with the chat template: a system turn, the user turn
   and the generation prompt; without: the system paragraph, the question and a blank line, the
   layout the exchange is then captured in) and answered by ``model.generate`` in left-padded
   batches: greedy, or with ``temperature > 0`` sampled, seeded per batch (``seed`` + the batch's
   first job), so a rerun writes the same responses. They go to a JSONL file of exchanges (``prompt``,
   ``response``, ``label`` pos/neg, ``system``, ``pair_id`` = the question's index, ``settings``)
   after every batch: an interrupted generation continues where the file ends. The file is
   ``responses`` or, by default, one in actstore's cache named by the model, the questions and the
   settings (so a rerun finds it).
2. **Keep.** ``keep_if(question, response, label) -> bool`` (a Python callable; on the command line
   ``module:function``): a question's pair is captured only when both its responses are kept and
   neither is empty. No scorer is built in: those live in :mod:`actstore.evaluation`, which capture
   may not import; ``actstore.evaluation.scorers`` functions can be wrapped into one.
3. **Capture.** The kept exchanges are a contrast set (format ``exchanges``, each with its own
   system prompt) captured by :func:`~.run.run_capture`: resumable like every capture, each row's
   ``response`` in the store, the system prompts and the generation settings in the run's settings
   and the group's attributes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .._cache import cache_dir
from ..errors import ActstoreError, InputFormatError
from ..inputs.chat import ChatFormat
from ..inputs.datasets import NEG, POS, ContrastSet, exchange, read_questions
from ..inputs.records import file_sha256
from ..models.load import LoadedModel, input_device
from .run import CaptureReport, capture_request, run_capture


@dataclass(frozen=True)
class RespondOptions:
    """How the model writes its responses (see the module docstring): the two system prompts,
    ``max_new_tokens``, ``temperature`` (0: greedy), ``seed`` (sampling), ``keep_if`` and the
    ``responses`` file (None: in actstore's cache)."""

    system_pos: str
    system_neg: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    keep_if: Callable[[str, str, str], bool] | None = None
    responses: str | Path | None = None

    def __post_init__(self) -> None:
        for name in ("system_pos", "system_neg"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InputFormatError(f"{name}={value!r}: expected a system prompt (non-empty text)", param=name)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputFormatError(f"max_new_tokens={self.max_new_tokens!r}: expected an integer >= 1",
                                   param="max_new_tokens")
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise InputFormatError(f"temperature={self.temperature!r}: expected a number >= 0 (0: greedy)",
                                   param="temperature")
        if not isinstance(self.seed, int):
            raise InputFormatError(f"seed={self.seed!r}: expected an integer", param="seed")
        if self.keep_if is not None and not callable(self.keep_if):
            raise InputFormatError(f"keep_if={self.keep_if!r}: expected a callable (question, response, label) -> "
                                   "bool", param="keep_if")

    @property
    def systems(self) -> tuple[tuple[str, str], ...]:
        return (POS, self.system_pos), (NEG, self.system_neg)

    def settings(self, chat: ChatFormat, tokenizer) -> dict:
        """What the responses depend on (JSON): the file's key, and with :attr:`keep_if_name` the capture's."""
        values = {key: value for key, value in asdict(self).items() if key not in ("keep_if", "responses")}
        return {**values, "chat_template": chat.attrs(tokenizer)["chat_template"]}

    @property
    def keep_if_name(self) -> str | None:
        """``module:qualified name`` of :attr:`keep_if` (recorded with the capture), None without one."""
        if self.keep_if is None:
            return None
        return f"{getattr(self.keep_if, '__module__', '?')}:{getattr(self.keep_if, '__qualname__', repr(self.keep_if))}"


def capture_responses(model, questions: str | Path, store, respond: RespondOptions, *, options=None, group=None,
                      resume: bool = False, **changes) -> CaptureReport:
    """Let ``model`` answer every question of ``questions`` under both system prompts of ``respond``
    and capture the kept exchanges into ``store`` (``options``, ``group``, ``changes``: as
    :func:`~.run.capture_to_store`; ``position="response-mean"`` is the recipe's). The report's
    ``responses`` names the file of responses, ``kept`` the questions kept of those asked."""
    request = capture_request(model, options, group, **changes)
    if request.options.system is not None:
        raise InputFormatError("system: on-policy capture writes each response under system_pos or system_neg; "
                               "leave out system (--system)", param="system")
    asked, _, questions_sha = read_questions(questions, request.options.text_column)  # a bad file fails before loading
    loaded = request.model if isinstance(request.model, LoadedModel) else request.model.load()
    chat = request.options.chat
    settings = respond.settings(chat, loaded.tokenizer)
    path = Path(respond.responses) if respond.responses is not None else \
        _cache_path(loaded.fingerprint, questions_sha, settings)
    ResponseWriter(loaded, chat, respond, settings, path).write(asked, request.options.batch_size,
                                                                request.options.progress)
    contrast = kept_exchanges(path, respond, settings)
    if not contrast.examples:
        raise ActstoreError(f"{str(path)!r}: no question kept (keep_if refused a response of every pair, or they "
                            "were empty); nothing to capture", param="keep_if")
    report = run_capture(replace(request, model=loaded), contrast, store, resume=resume)
    return replace(report, responses=str(path), kept=(len(contrast.examples) // 2, len(asked)))


def _cache_path(fingerprint: str, questions_sha: str, settings: dict) -> Path:
    key = json.dumps([fingerprint, questions_sha, settings], sort_keys=True)
    return cache_dir() / "responses" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResponseWriter:
    """Writes the responses of ``loaded`` to ``path`` (JSONL), a batch at a time, continuing a file
    an earlier run left unfinished."""

    loaded: LoadedModel
    chat: ChatFormat
    respond: RespondOptions
    settings: dict
    path: Path

    def write(self, questions: list[str], batch_size: int, progress: bool) -> None:
        jobs = [(i, label, system) for i in range(len(questions)) for label, system in self.respond.systems]
        done = self._answered(questions)
        if done >= len(jobs):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bar = _progress_bar(progress, len(jobs), done)
        key = _settings_key(self.settings)
        try:
            with self.path.open("a", encoding="utf-8") as out, _left_padding(self.loaded.tokenizer):
                for first in range(done, len(jobs), batch_size):
                    batch = jobs[first: first + batch_size]
                    prompts = [self._prompt(system, questions[i]) for i, _, system in batch]
                    for (i, label, system), response in zip(batch, self._generate(prompts, first)):
                        out.write(json.dumps({"prompt": questions[i], "response": response, "label": label,
                                              "system": system, "pair_id": i, "settings": key}) + "\n")
                    out.flush()  # a batch is written whole before the next starts
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()

    def _prompt(self, system: str, question: str) -> str:
        chat = replace(self.chat, system=system)
        text = chat.prompt_text(self.loaded.tokenizer, question)
        # Without a template the exchange is captured as prompt, a blank line, response: write it so.
        return text if chat.template else text + "\n\n"

    def _generate(self, prompts: list[str], seed_offset: int) -> list[str]:
        tokenizer, device = self.loaded.tokenizer, input_device(self.loaded.model)
        encoded = tokenizer(prompts, add_special_tokens=self.chat.add_special_tokens, padding=True,
                            return_tensors="pt").to(device)
        sampled = self.respond.temperature > 0
        extra = {"do_sample": True, "temperature": float(self.respond.temperature)} if sampled else \
            {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(self.respond.seed + seed_offset)  # per batch: a resumed run samples the same
            out = self.loaded.model.generate(**encoded, max_new_tokens=self.respond.max_new_tokens,
                                             pad_token_id=pad, **extra)
        width = encoded["input_ids"].shape[1]
        return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]

    def _answered(self, questions: list[str]) -> int:
        """Responses already in the file (checked to be these questions' with these settings); a line
        cut by an interruption is removed."""
        if not self.path.exists():
            return 0
        raw = self.path.read_text(encoding="utf-8")
        if raw and not raw.endswith("\n"):  # a write cut short: keep the complete lines
            raw = raw[: raw.rfind("\n") + 1]
            self.path.write_text(raw, encoding="utf-8")
        key, jobs = _settings_key(self.settings), len(questions) * 2
        for n, line in enumerate(raw.splitlines()):
            record = json.loads(line)
            if record.get("settings") != key or n >= jobs or record.get("prompt") != questions[n // 2]:
                raise ActstoreError(f"{str(self.path)!r} line {n + 1}: responses to other questions or made with other "
                                    "settings; remove the file or name another (responses=, --responses)",
                                    param="responses")
        return len(raw.splitlines())


def kept_exchanges(path: Path, respond: RespondOptions, settings: dict) -> ContrastSet:
    """The responses of ``path`` as a contrast set of exchanges, the pairs ``keep_if`` keeps."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    examples = []
    for n in range(0, len(records) - 1, 2):
        pair = records[n: n + 2]
        if any(not r["response"].strip() for r in pair) or (
                respond.keep_if is not None and not all(respond.keep_if(r["prompt"], r["response"], r["label"])
                                                        for r in pair)):
            continue
        examples += [exchange(r["prompt"], r["response"], r["label"], int(r["pair_id"]), f"line {n + k + 1}",
                              r["system"]) for k, r in enumerate(pair)]
    made = {"respond": {**settings, "keep_if": respond.keep_if_name}}
    return ContrastSet(str(path), "exchanges", file_sha256([path]), examples, settings=made)


@contextlib.contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    """Left padding while generating (the new tokens follow every prompt's last token), restored after."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def _progress_bar(show: bool, total: int, initial: int):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="response", desc="respond")

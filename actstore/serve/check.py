"""``actstore serve check``: does a running engine apply a vector as actstore's own hooks do?

For each probe prompt the server is asked, in this order, for the next token's top log-probs
unsteered (U1), steered (S1), unsteered again (U2) and steered again (S2); the same prompts run
through the model with :func:`actstore.steering.steer`. Compared:

* the shift ``S1 - U1`` on the tokens both engine answers list, against the same shift locally
  (so a constant difference between the two engines' numerics cancels): a missing plugin, a wrong
  layer, sign or scale shows here;
* the top-1 token of S1 against the local steered top-1;
* ``U2 - U1`` and ``S2 - S1``: non-zero means the prefix cache handed one request blocks computed
  under other steering (the longest probe fills several key/value blocks).

The check first asks the server to refuse an impossible vector name: a server without the
plugin accepts it, and the check fails at once.

With ``chat=`` (``--chat-template``, ``--system``) each probe is formatted by
:meth:`ChatFormat.prompt_text <actstore.inputs.chat.ChatFormat.prompt_text>` and tokenized here
once; the server gets those token ids (the completions endpoint, never the chat endpoint or the
text, which the server would tokenize with its own special tokens: a template's BOS twice), so the
engine and the local hooks read exactly the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..inputs.chat import ChatFormat
from . import ServeError
from .client import GENERATION_TIMEOUT_S, ServerClient
from .settings import ALPHA_KEY, POSITIONS_KEY, VECTOR_KEY, VECTOR_SUFFIX

PROBES = (
    "The capital of France is",
    "I think that you are",
    "My favourite thing about the weekend is",
    # several 128-token blocks (the CPU backend's size; GPUs use 16): the prefix cache reuses it
    " ".join(f"Note {i}: the committee met again on Tuesday, read the minutes of the last meeting aloud, "
             "argued about the budget for the new library and agreed to meet again next week." for i in range(14))
    + " The chair closed the meeting by saying that",
)


@dataclass(frozen=True)
class ProbeResult:
    """One probe: the shifts compared and what the cache check saw (log-probs, nats)."""

    prompt: str
    tokens_compared: int
    max_difference: float
    largest_shift: float
    top1_agrees: bool
    cache_drift: float


@dataclass(frozen=True)
class CheckReport:
    """The outcome of :func:`check_server`; ``passed`` is what the exit status says."""

    url: str
    vector: str
    alpha: float
    tolerance: float
    plugin_loaded: bool
    probes: tuple[ProbeResult, ...] = field(default_factory=tuple)
    problems: tuple[str, ...] = field(default_factory=tuple)
    chat: ChatFormat = field(default_factory=ChatFormat)

    @property
    def passed(self) -> bool:
        return self.plugin_loaded and not self.problems

    @property
    def max_difference(self) -> float:
        return max((p.max_difference for p in self.probes), default=float("nan"))

    @property
    def top1_agreement(self) -> float:
        return float(np.mean([p.top1_agrees for p in self.probes])) if self.probes else float("nan")

    def summary(self) -> str:
        said = (["chat template"] if self.chat.template else []) + ([f"system {self.chat.system!r}"]
                                                                  if self.chat.system else [])
        lines = [f"server {self.url}: vector {self.vector!r}, alpha {self.alpha:g}"
                 + (f"; probes formatted with {', '.join(said)}" if said else "")]
        if not self.plugin_loaded:
            lines.append("FAIL: the server ignores actstore_* arguments: actstore's vLLM plugin is not loaded")
            return "\n".join(lines)
        for probe in self.probes:
            lines.append(f"  {probe.prompt[:40]!r:44} shift up to {probe.largest_shift:7.3f}  largest difference "
                         f"{probe.max_difference:.2e} over {probe.tokens_compared} tokens  top-1 "
                         f"{'agrees' if probe.top1_agrees else 'DIFFERS'}  cache drift {probe.cache_drift:.1e}")
        lines.append(f"largest difference of log-prob shifts {self.max_difference:.2e} (tolerance "
                     f"{self.tolerance:g}); top-1 agreement {self.top1_agreement:.0%}")
        lines += [f"FAIL: {problem}" for problem in self.problems] or ["PASS: the engine applies the vector as "
                                                                       "actstore's hooks do"]
        return "\n".join(lines)


def local_vector_path(vector: str, vectors: str | Path | None) -> Path:
    """The vector file the check compares with: ``vector`` itself when it is a file, else
    ``NAME[.safetensors]`` in ``vectors`` (the folder the server was started with)."""
    if Path(vector).is_file():
        return Path(vector)
    if vectors is None:
        raise ServeError(f"vector={vector!r} is not a file; pass the server's vectors folder with vectors= "
                         "(or the vector file itself)", param=("vector", "vectors"))
    stem = vector[: -len(VECTOR_SUFFIX)] if vector.endswith(VECTOR_SUFFIX) else vector
    path = Path(vectors) / (stem + VECTOR_SUFFIX)
    if not path.is_file():
        raise ServeError(f"vector={vector!r}: no file {str(path)!r}", param="vector")
    return path


def check_server(url: str, vector: str, alpha: float = 4.0, *, vectors: str | Path | None = None,
                 model=None, tolerance: float = 5e-3, probes=PROBES, device: str = "cpu",
                 chat: ChatFormat | None = None, timeout: float = GENERATION_TIMEOUT_S) -> CheckReport:
    """Compare how the server at ``url`` applies ``vector`` (a name the server knows; the same file
    is read locally, see :func:`local_vector_path`) with actstore's hooks on ``model`` (a hub id or
    folder, or a :class:`~actstore.models.load.LoadedModel`; default: the server's model, when that is a
    local folder). ``chat``: how each probe is formatted (default: as written), on both sides alike.
    ``timeout``: seconds a probe request may go unanswered (the model listing and the handshake wait
    less: :mod:`actstore.serve.client`)."""
    from ..models.load import LoadedModel, load_model
    from ..steering import check_vector
    from ..vectors.vector import load_vector
    from .generation import prompt_ids

    chat = chat or ChatFormat()
    path = local_vector_path(vector, vectors)
    name = path.stem
    client = ServerClient(url, timeout=timeout)
    served = client.model_id()
    if not client.applies_steering_arguments(served):
        return CheckReport(client.url, name, alpha, tolerance, plugin_loaded=False, chat=chat)
    if model is None:
        if not Path(served).is_dir():
            raise ServeError(f"the server's model {served!r} is not a folder here; pass model= (the same weights)",
                             param="model")
        model = served
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype="float32", device=device)
    steering_vector = load_vector(path)
    check_vector(steering_vector, loaded)
    probe_ids = prompt_ids(loaded.tokenizer, probes, chat)  # a template the tokenizer lacks is refused here
    steering = {VECTOR_KEY: name, ALPHA_KEY: alpha, POSITIONS_KEY: "all"}
    engine = _Engine(client, served, steering)
    results = tuple(_probe(engine, loaded, steering_vector, alpha, prompt, ids)
                    for prompt, ids in zip(probes, probe_ids))
    return CheckReport(client.url, name, alpha, tolerance, True, results, _problems(results, alpha, tolerance),
                       chat)


@dataclass(frozen=True)
class _Engine:
    """The server asked for one prompt's next-token top log-probs, unsteered or with ``steering``."""

    client: ServerClient
    model: str
    steering: dict

    def top_logprobs(self, ids: list[int], steered: bool) -> dict[int, float]:
        return self.client.complete(ids, self.steering if steered else None, model=self.model).top_logprobs[0]


def _probe(engine: _Engine, loaded, steering_vector, alpha: float, prompt: str, ids: list[int]) -> ProbeResult:
    """One probe: U1, S1, U2, S2 from the engine (in that order) against the local hooks on ``ids``."""
    import torch

    from ..steering import steer

    first, steered = engine.top_logprobs(ids, False), engine.top_logprobs(ids, True)
    again, steered_again = engine.top_logprobs(ids, False), engine.top_logprobs(ids, True)
    batch = torch.tensor([ids], device=loaded.model.device)
    with torch.no_grad():
        plain = torch.log_softmax(loaded.model(batch).logits[0, -1].double(), -1).cpu().numpy()
        with steer(loaded, steering_vector, alpha):
            local = torch.log_softmax(loaded.model(batch).logits[0, -1].double(), -1).cpu().numpy()
    _check_vocabulary(engine.client, (first, steered, again, steered_again), len(local))
    tokens = sorted(first.keys() & steered.keys())
    engine_shift = np.array([steered[t] - first[t] for t in tokens])
    local_shift = local[tokens] - plain[tokens]
    drift = max([abs(again[t] - first[t]) for t in first.keys() & again.keys()]
                + [abs(steered_again[t] - steered[t]) for t in steered.keys() & steered_again.keys()])
    return ProbeResult(prompt, len(tokens), float(np.abs(engine_shift - local_shift).max()),
                       float(np.abs(local_shift).max()), max(steered, key=steered.get) == int(np.argmax(local)),
                       float(drift))


def _check_vocabulary(client: ServerClient, answers, vocabulary: int) -> None:
    """Refuse log-probs of token ids the local model does not have (they index its log-probs)."""
    beyond = sorted(t for answer in answers for t in answer if t >= vocabulary)
    if beyond:
        raise ServeError(f"the server at {client.url!r} answered with token id {beyond[-1]}, beyond the "
                         f"{vocabulary} tokens of the local copy (model): does the server run other weights?",
                         param="model")


def _problems(results: tuple[ProbeResult, ...], alpha: float, tolerance: float) -> tuple[str, ...]:
    """What the probes say is wrong (nothing: the engine applies the vector as the hooks do)."""
    problems = []
    worst = max(r.max_difference for r in results)
    if max(r.largest_shift for r in results) < 20 * tolerance:
        problems.append(f"alpha {alpha:g} moves the next-token log-probs by less than {20 * tolerance:g} nats: "
                        "too little to tell steered from unsteered; raise alpha")
    if worst > tolerance:
        problems.append(f"the engine's log-prob shifts differ from actstore's hooks by up to {worst:.3g} nats "
                        "(wrong layer, sign or scale, another vector file, or other weights)")
    if not all(r.top1_agrees for r in results):
        problems.append("the engine's steered top-1 token differs from actstore's on some probes")
    if any(r.cache_drift > tolerance for r in results):
        problems.append("the same request answered differently the second time: the prefix cache served blocks "
                        "computed under other steering (stale cache)")
    return tuple(problems)

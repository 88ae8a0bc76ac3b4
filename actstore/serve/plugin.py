"""The vLLM general plugin: a different steering vector per request.

Registered under the entry point group ``vllm.general_plugins`` (``actstore[serve]``); vLLM
calls :func:`register` in every process it starts. It patches two places, both read from the
exactly pinned vLLM (requirements-serve.txt; tests/serve/test_internals.py fails when they move):

* the front end (``InputProcessor.process_inputs``, in the API server or ``LLM``'s process):
  each request's ``actstore_*`` extra arguments are checked (:mod:`actstore.serve.settings`);
  a bad one is refused with a ``VLLMValidationError`` (HTTP 400) for that request only; a good
  one travels on as a payload, and the request's ``cache_salt`` is derived from it, so prefix
  caching never hands a request key/value blocks computed under other steering;
* the worker (the V1 model runner): after the model loads, a forward hook on each decoder
  layer adds ``alpha * vector`` to the residual stream of exactly the tokens of the requests
  that asked for it: what is added is the request's :func:`actstore.steering.vector_addition`
  and which tokens get it :meth:`actstore.steering.Positions.selects` (:func:`steered_rows`),
  the computation and the rule of actstore's own hooks. vLLM layers return ``(hidden,
  residual)`` and the stream is their sum, so adding to ``hidden`` is adding to the stream.
  Which rows of the flattened batch belong to which request comes from the runner's input
  batch and ``query_start_loc``, read once per step (``execute_model`` is wrapped to mark the
  step; warm-up and profiling passes are never steered).

Everything here fails loudly: a wrong vLLM version, the V2 model runner or a compiled model
(hooks would be traced once and frozen) raise when the engine starts rather than serve
unsteered text. A plugin that cannot even be imported is only logged by vLLM; ``actstore
serve`` and ``actstore serve check`` catch that case from outside (see :mod:`actstore.serve.check`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..steering import Positions

logger = logging.getLogger("actstore.serve")

SUPPORTED_VLLM = "0.32.0"
_PATCHED = "_actstore_patched"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: patch the front end and the model runner.
    Called once per process; patching twice is a no-op."""
    import vllm

    if vllm.__version__ != SUPPORTED_VLLM and not os.environ.get("ACTSTORE_SERVE_ANY_VLLM"):
        raise RuntimeError(f"actstore's serve plugin reads vLLM {SUPPORTED_VLLM} internals; this is vLLM "
                           f"{vllm.__version__}. Install the pinned version (requirements-serve.txt) or set "
                           "ACTSTORE_SERVE_ANY_VLLM=1 and run tests/serve to see whether it still holds")
    # The plugin steers through the V1 model runner; on GPUs vLLM may pick V2 by default.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    from ..errors import VectorError
    from .settings import folder_from_env

    try:
        folder_from_env()  # a vectors folder that is not there stops the server, not each request
    except VectorError as err:
        raise RuntimeError(f"actstore serve: {err}") from None
    _patch_front_end()
    _patch_runner()


# ---------------------------------------------------------------- front end
def _patch_front_end() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    if getattr(InputProcessor.process_inputs, _PATCHED, False):
        return
    original = InputProcessor.process_inputs

    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        _steer_request(self, request)
        return request

    setattr(process_inputs, _PATCHED, True)
    process_inputs.__wrapped__ = original
    InputProcessor.process_inputs = process_inputs


def _front_state(processor):
    """Per-processor (so per served model) vectors folder and model facts, made on first use."""
    state = getattr(processor, "_actstore_state", None)
    if state is None:
        from .settings import folder_from_env

        state = (folder_from_env(), model_facts(processor.model_config))
        processor._actstore_state = state
    return state


def model_facts(model_config):
    """:class:`ModelFacts` of vLLM's model config (fingerprint as actstore computes it for a folder)."""
    from ..models.load import _fingerprint_local
    from .settings import ModelFacts

    folder = Path(model_config.model)
    fingerprint = _fingerprint_local(folder) if folder.is_dir() else ""
    layers = int(model_config.hf_text_config.num_hidden_layers)
    return ModelFacts(fingerprint, int(model_config.get_hidden_size()), layers)


def _steer_request(processor, request) -> None:
    from vllm.exceptions import VLLMValidationError

    from ..errors import VectorError
    from .settings import PAYLOAD_KEY, resolve_request

    params = request.sampling_params
    if params is None:
        return
    try:
        folder, facts = _front_state(processor)
        payload = resolve_request(params.extra_args, folder, facts)
    except VectorError as err:
        raise VLLMValidationError(str(err), parameter="vllm_xargs") from None
    if payload is None:
        return
    # process_inputs cloned the caller's params: this copy belongs to this request alone.
    params.extra_args = {**(params.extra_args or {}), PAYLOAD_KEY: payload.to_extra()}
    request.cache_salt = payload.cache_salt(request.cache_salt)


# ---------------------------------------------------------------- worker
def _patch_runner() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for cls in (GPUModelRunner, CPUModelRunner):
        if "load_model" in vars(cls) and not getattr(cls.load_model, _PATCHED, False):
            cls.load_model = _wrap_load_model(cls.load_model)
    if not getattr(GPUModelRunner.execute_model, _PATCHED, False):
        GPUModelRunner.execute_model = _wrap_execute_model(GPUModelRunner.execute_model)


def _wrap_load_model(original):
    def load_model(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if getattr(self, "_actstore_steering", None) is None:
            self._actstore_steering = RunnerSteering(self)
        return result

    setattr(load_model, _PATCHED, True)
    load_model.__wrapped__ = original
    return load_model


def _wrap_execute_model(original):
    def execute_model(self, *args, **kwargs):
        steering = getattr(self, "_actstore_steering", None)
        if steering is None:
            return original(self, *args, **kwargs)
        steering.begin_step()
        try:
            return original(self, *args, **kwargs)
        finally:
            steering.end_step()

    setattr(execute_model, _PATCHED, True)
    execute_model.__wrapped__ = original
    return execute_model


def decoder_layers(model):
    """The decoder layers of a vLLM model: the ModuleList at ``model.layers`` (or
    ``language_model.model.layers``), the same blocks actstore numbers as layers."""
    import torch

    for path in ("model.layers", "language_model.model.layers", "model.language_model.layers"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise RuntimeError(f"actstore serve: cannot find the decoder layers of {type(model).__name__} "
                       "(looked for model.layers)")


class RunnerSteering:
    """The hooks on one model runner's decoder layers and the plan of the step in progress."""

    def __init__(self, runner):
        from vllm.config import CompilationMode

        if runner.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise RuntimeError("actstore serve: the plugin hooks decoder layers, which a compiled model would "
                               "freeze; start the engine with --enforce-eager (actstore serve does)")
        self.runner = runner
        self.layers = decoder_layers(runner.get_model())
        self.active = False
        self.plan: dict[int, LayerAddition] | None = None
        self.tensors: OrderedDict[str, tuple] = OrderedDict()  # payload key -> (layer, indices, values)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        logger.info("actstore serve: steering hooks on %d decoder layers", len(self.layers))

    def begin_step(self) -> None:
        self.active, self.plan = True, None

    def end_step(self) -> None:
        self.active, self.plan = False, None

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not self.active:
                return None
            if self.plan is None:
                self.plan = self._make_plan()
            addition = self.plan.get(layer)
            if addition is None:
                return None
            if isinstance(output, tuple):
                return (add_to_rows(output[0], addition), *output[1:])
            return add_to_rows(output, addition)

        return hook

    def _tensors(self, extra: dict, device, dtype) -> tuple:
        """``(layer, indices, values)`` of a request's payload (:meth:`VectorAddition.tensors
        <actstore.steering.VectorAddition.tensors>`), made once per (vector, alpha): a step reads 64
        requests without re-reading 64 lists of floats. Only what the key covers may come from the
        cache (positions differ between requests)."""
        from .settings import SteeringPayload

        cached = self.tensors.get(extra["key"])
        if cached is None:
            payload = SteeringPayload.from_extra(extra)
            cached = self.tensors[payload.key] = (payload.layer, *payload.addition().tensors(device, dtype))
            while len(self.tensors) > 4096:
                self.tensors.popitem(last=False)
        else:
            self.tensors.move_to_end(extra["key"])
        return cached

    def _make_plan(self) -> dict[int, LayerAddition]:
        """layer -> what this step adds there: the rows of the flattened batch that each request's
        (vector, alpha) goes to, merged into one dense and one sparse scatter per layer."""
        from ..steering import Positions
        from .settings import PAYLOAD_KEY

        runner = self.runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        starts = runner.query_start_loc.np[: num_reqs + 1]
        computed = batch.num_computed_tokens_cpu[:num_reqs]
        param = next(runner.get_model().parameters())
        additions, tokens = [], []
        for index, req_id in enumerate(batch.req_ids[:num_reqs]):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            extra = (params.extra_args or {}).get(PAYLOAD_KEY) if params is not None else None
            if extra is None:
                continue
            additions.append(self._tensors(extra, param.device, param.dtype))
            # computed: the position of this step's first token of the request in its sequence
            tokens.append(StepTokens(Positions.from_text(extra["positions"]), int(starts[index]),
                                     int(starts[index + 1]), int(computed[index]), int(state.num_prompt_tokens)))
        per_layer: dict[int, list] = {}
        for (layer, indices, values), rows in zip(additions, steered_rows(tokens)):
            if len(rows):
                per_layer.setdefault(layer, []).append((rows, indices, values))
        return {layer: LayerAddition.merge(groups, param.device)
                for layer, groups in per_layer.items()}


@dataclass(frozen=True)
class StepTokens:
    """One steered request's tokens in a step: rows ``start:stop`` of the flattened batch hold
    the tokens at positions ``first, first + 1, ...`` of its sequence, whose first
    ``prompt_length`` are its prompt; ``positions``: the request's ``actstore_positions``."""

    positions: Positions
    start: int
    stop: int
    first: int
    prompt_length: int


def steered_rows(requests: Sequence[StepTokens]) -> list:
    """For each request, the rows (int64 numpy) that get its vector: those whose tokens
    :meth:`Positions.selects <actstore.steering.Positions.selects>` picks, the rule of actstore's
    own hooks, called once per distinct ``positions`` of the step, not once per request."""
    import numpy as np
    import torch

    by_spec: dict[str, list[int]] = {}
    for number, request in enumerate(requests):
        by_spec.setdefault(str(request.positions), []).append(number)
    rows: list = [None] * len(requests)
    for members in by_spec.values():
        spans = [requests[i] for i in members]
        counts = [span.stop - span.start for span in spans]
        index = np.concatenate([np.arange(s.first, s.first + n) for s, n in zip(spans, counts)]).astype(np.int64)
        is_prompt = index < np.repeat([span.prompt_length for span in spans], counts)
        chosen = spans[0].positions.selects(torch.from_numpy(index), torch.from_numpy(is_prompt)).numpy()
        offsets = np.cumsum([0, *counts])
        for number, span, low, high in zip(members, spans, offsets[:-1], offsets[1:]):
            rows[number] = span.start + np.flatnonzero(chosen[low:high])
    return rows


class LayerAddition:
    """What one step adds at one layer. Dense vectors: ``dense_rows`` (R,) and their rows of
    ``alpha * v`` (R, hidden), one ``index_add``. Sparse vectors: flat (row, kept coordinate)
    positions and values, one ``index_add`` over exactly the kept coordinates. Two scatters per
    layer however many distinct vectors the batch holds."""

    def __init__(self, dense_rows, dense_values, sparse_rows, sparse_columns, sparse_values):
        self.dense_rows, self.dense_values = dense_rows, dense_values
        self.sparse_rows, self.sparse_columns, self.sparse_values = sparse_rows, sparse_columns, sparse_values

    @classmethod
    def merge(cls, groups, device) -> LayerAddition:
        """``groups``: [(rows (n,) numpy, indices (k,) | None, values (k,) or (hidden,))], the
        tensors of :meth:`VectorAddition.tensors <actstore.steering.VectorAddition.tensors>`."""
        import torch

        dense_rows, dense_values, sparse_rows, sparse_columns, sparse_values = [], [], [], [], []
        for rows, indices, values in groups:
            rows_t = torch.from_numpy(rows).to(device)
            if indices is None:
                dense_rows.append(rows_t)
                dense_values.append(values.expand(len(rows), -1))
            elif len(indices):
                sparse_rows.append(rows_t.repeat_interleave(len(indices)))
                sparse_columns.append(indices.repeat(len(rows)))
                sparse_values.append(values.repeat(len(rows)))

        def cat(parts):
            return torch.cat(parts) if parts else None

        return cls(cat(dense_rows), cat(dense_values), cat(sparse_rows), cat(sparse_columns), cat(sparse_values))


def add_to_rows(hidden, addition: LayerAddition):
    """``hidden`` (tokens, hidden) plus ``addition``; a new tensor, the layer's own output untouched."""
    out = hidden.clone()
    if addition.dense_rows is not None:
        out.index_add_(0, addition.dense_rows, addition.dense_values.to(out.dtype))
    if addition.sparse_rows is not None:
        flat = addition.sparse_rows * out.shape[-1] + addition.sparse_columns
        out.view(-1).index_add_(0, flat, addition.sparse_values.to(out.dtype))
    return out

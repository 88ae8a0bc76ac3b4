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
  layer, and, where the model's writes to the residual stream are known, on its embeddings and
  each write (:func:`actstore.models.blocks.residual_writes`, whose attribute names vLLM's Llama,
  Qwen2 and Gemma3 share with transformers), applies the request's edit to exactly the tokens
  of the requests that asked for it: what is applied is the request's payload, made by steer's
  own functions (an addition, or a projection or clamp: :mod:`actstore.serve.settings`), where
  steer applies it (each block its operator names; a projection at all layers on the embeddings
  and every write), and which tokens get it :meth:`actstore.steering.Positions.selects`
  (:func:`~actstore.serve.step.steered_rows`). vLLM layers return ``(hidden, residual)`` and the
  stream is their sum: an addition to ``hidden`` is one to the stream, and a projection or clamp
  reads the component on the sum and puts its change in ``hidden``
  (:func:`~actstore.serve.step.edit_rows`). Which rows of the flattened batch belong to which
  request comes from the runner's input batch and ``query_start_loc``, read once per step
  (``execute_model`` is wrapped to mark the step; warm-up and profiling passes are never steered).

Everything here fails loudly: a wrong vLLM version, the V2 model runner or a compiled model
(hooks would be traced once and frozen) raise when the engine starts rather than serve
unsteered text. A plugin that cannot even be imported is only logged by vLLM; ``actstore
serve`` and ``actstore serve check`` catch that case from outside (see :mod:`actstore.serve.check`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .step import SlotSteering

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
    from ..models.load import _fingerprint_local, legacy_fingerprint
    from .settings import ModelFacts

    folder = Path(model_config.model)
    fingerprint = _fingerprint_local(folder) if folder.is_dir() else ""
    text = model_config.hf_text_config
    return ModelFacts(fingerprint, int(model_config.get_hidden_size()), int(text.num_hidden_layers),
                      str(getattr(text, "model_type", "") or ""),
                      legacy_fingerprint(folder) if folder.is_dir() else "")


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


def write_modules(runner, layers) -> tuple:
    """The embeddings and each write to the residual stream of the runner's model, in
    :func:`~actstore.models.blocks.residual_writes`'s order, or () for a model type whose writes
    actstore does not know (the front end refuses a projection at all layers there: the same
    ``model_type`` decides both). Raises when a known type's modules are not where
    transformers has them: a projection would otherwise go unapplied."""
    from ..models.blocks import RESIDUAL_WRITERS, residual_writes

    if runner.model_config.hf_text_config.model_type not in RESIDUAL_WRITERS:
        return ()
    model = runner.get_model()
    language = model.get_language_model() if hasattr(model, "get_language_model") else model
    try:
        writes = residual_writes(language, layers)
    except (AttributeError, ValueError) as err:  # ModelError is a ValueError
        raise RuntimeError(f"actstore serve: cannot find the writes to the residual stream of "
                           f"{type(language).__name__} where transformers has them ({err})") from None
    return (*writes.embeddings, *writes.writers)


class RunnerSteering:
    """The hooks on one model runner's decoder layers and writes to the residual stream, and the
    plan of the step in progress. A hook's slot: block ``i`` is slot ``i``; the writes follow."""

    def __init__(self, runner):
        from vllm.config import CompilationMode

        if runner.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise RuntimeError("actstore serve: the plugin hooks decoder layers, which a compiled model would "
                               "freeze; start the engine with --enforce-eager (actstore serve does)")
        self.runner = runner
        self.layers = decoder_layers(runner.get_model())
        self.writes = write_modules(runner, self.layers)
        self.active = False
        self.plan: dict[int, SlotSteering] | None = None
        self.tensors: OrderedDict[str, tuple] = OrderedDict()  # payload key -> (slots, edit)
        modules = [*self.layers, *self.writes]
        self.handles = [module.register_forward_hook(self._hook(slot, slot < len(self.layers)))
                        for slot, module in enumerate(modules)]
        logger.info("actstore serve: steering hooks on %d decoder layers and %d writes to the residual stream",
                    len(self.layers), len(self.writes))

    def begin_step(self) -> None:
        self.active, self.plan = True, None

    def end_step(self) -> None:
        self.active, self.plan = False, None

    def _hook(self, slot: int, block: bool):
        def hook(module, args, output):
            if not self.active:
                return None
            if self.plan is None:
                self.plan = self._make_plan()
            steering = self.plan.get(slot)
            if steering is None:
                return None
            if not isinstance(output, tuple):
                return steering.apply(output)
            # a block returns (hidden, residual); a RowParallelLinear write (output, bias), bias None here
            residual = output[1] if block and len(output) > 1 else None
            return (steering.apply(output[0], residual), *output[1:])

        return hook

    def _prepared(self, extra: dict, device, dtype) -> tuple:
        """``(slots, edit)`` of a request's payload: the hooked modules it edits and its edit
        (:meth:`VectorAddition.tensors <actstore.steering.VectorAddition.tensors>`, or its
        :class:`~actstore.steering.DirectionEdit` with the direction on ``device``), made once per
        (vector, alpha): a step reads 64 requests without re-reading 64 lists of floats. Only what
        the key covers may come from the cache (positions differ between requests)."""
        from ..steering import DirectionEdit
        from .settings import SteeringPayload

        cached = self.tensors.get(extra["key"])
        if cached is not None:
            self.tensors.move_to_end(extra["key"])
            return cached
        payload = SteeringPayload.from_extra(extra)
        if payload.writes and not self.writes:  # the front end refuses these: never reached
            raise RuntimeError("actstore serve: a projection at all layers reached a worker without write hooks")
        edit = payload.edit()
        if isinstance(edit, DirectionEdit):
            edit = DirectionEdit(edit.unit.to(device), edit.target, edit.alpha)
            slots = tuple(range(len(self.layers), len(self.layers) + len(self.writes))) if payload.writes \
                else payload.layers
        else:
            edit, slots = edit.tensors(device, dtype), payload.layers
        cached = self.tensors[payload.key] = (slots, edit)
        while len(self.tensors) > 4096:
            self.tensors.popitem(last=False)
        return cached

    def _make_plan(self) -> dict[int, SlotSteering]:
        """slot -> what this step does there (:func:`~actstore.serve.step.plan_step`): the rows of
        the flattened batch that each request's edit goes to."""
        from ..steering import Positions
        from .settings import PAYLOAD_KEY
        from .step import StepTokens, plan_step, steered_rows

        runner = self.runner
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        starts = runner.query_start_loc.np[: num_reqs + 1]
        computed = batch.num_computed_tokens_cpu[:num_reqs]
        param = next(runner.get_model().parameters())
        requests, tokens = [], []
        for index, req_id in enumerate(batch.req_ids[:num_reqs]):
            state = runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            extra = (params.extra_args or {}).get(PAYLOAD_KEY) if params is not None else None
            if extra is None:
                continue
            requests.append((extra["key"], *self._prepared(extra, param.device, param.dtype)))
            # computed: the position of this step's first token of the request in its sequence
            tokens.append(StepTokens(Positions.from_text(extra["positions"]), int(starts[index]),
                                     int(starts[index + 1]), int(computed[index]), int(state.num_prompt_tokens)))
        return plan_step(requests, steered_rows(tokens), param.device)

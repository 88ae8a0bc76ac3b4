"""Steering hooks: exact additions at the right block, sparse == dense, clean removal, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actstore.capture import record_blocks
from actstore.errors import VectorError
from actstore.models.load import load_model
from actstore.serve.settings import POSITIONS_KEY, ModelFacts, SteeringPayload, resolve_request
from actstore.serve.step import LayerAddition, StepTokens, add_to_rows, plan_step, steered_rows
from actstore.steering import DirectionEdit, Positions, check_vector, direction_edit, steer, vector_addition
from actstore.steering.core import _add, _PassState
from actstore.vectors.info import VectorInfo
from actstore.vectors.vector import SteeringVector

TEXT = "The quick brown fox jumps over the lazy dog."


def sparse_vector(layer: int, indices=(3, 7, 20), hidden: int = 32, seed: int = 0) -> SteeringVector:
    rng = np.random.default_rng(seed)
    values = np.zeros(hidden, np.float32)
    values[list(indices)] = rng.normal(size=len(indices)).astype(np.float32)
    return SteeringVector(values, np.asarray(indices, np.int64), np.abs(values),
                          VectorInfo(layer=layer, k=len(indices)))


def block_outputs(loaded, layers, ids):
    with record_blocks(loaded.blocks, layers, stop_after_last=False) as outputs, torch.no_grad():
        loaded.model(input_ids=ids)
    return {layer: outputs[layer].clone() for layer in layers}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma3_text"])
def test_steering_adds_exactly_alpha_v_at_every_position_of_its_block(tiny_model_dirs, arch):
    loaded = load_model(str(tiny_model_dirs[arch]))
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    vector = sparse_vector(layer=1)
    before = block_outputs(loaded, [0, 1], ids)
    # The hook on block 1 sees block 1's own output; record it with a hook registered first.
    with steer(loaded, vector, alpha=3.0):
        after = block_outputs(loaded, [0, 1], ids)
    torch.testing.assert_close(after[0], before[0])  # earlier block untouched
    added = (after[1] - before[1]).numpy()[0]
    expected = np.broadcast_to(3.0 * vector.vector, added.shape)
    np.testing.assert_allclose(added, expected, atol=1e-5)


def test_sparse_add_equals_dense_add(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    vector = sparse_vector(layer=2)
    with torch.no_grad():
        with steer(llama, vector, alpha=2.5, sparse=True):
            sparse_logits = llama.model(input_ids=ids).logits
        with steer(llama, vector, alpha=2.5, sparse=False):
            dense_logits = llama.model(input_ids=ids).logits
    torch.testing.assert_close(sparse_logits, dense_logits, rtol=1e-5, atol=1e-6)


def test_several_vectors_at_several_layers_add_up(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    a, b, c = sparse_vector(1, seed=1), sparse_vector(1, (0, 3), seed=2), sparse_vector(2, seed=3)
    with torch.no_grad():
        with steer(llama, [a, b, c], alpha=[1.0, 2.0, 0.5]):
            together = llama.model(input_ids=ids).logits
        summed = SteeringVector(a.vector + 2.0 * b.vector, np.arange(32), a.enr, VectorInfo(layer=1))
        with steer(llama, [summed, c], alpha=[1.0, 0.5], sparse=False):
            expected = llama.model(input_ids=ids).logits
    torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_on_exit_and_on_error(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = llama.model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with steer(llama, sparse_vector(1), alpha=5.0):
                assert llama.blocks[1]._forward_hooks
                raise RuntimeError("boom")
        assert not llama.blocks[1]._forward_hooks
        torch.testing.assert_close(llama.model(input_ids=ids).logits, plain)


def test_steering_applies_to_generated_tokens_too(llama):
    ids = llama.tokenizer(TEXT, return_tensors="pt")
    calls = []
    vector = sparse_vector(1)
    with steer(llama, vector, alpha=1.0):
        handle = llama.blocks[1].register_forward_hook(lambda m, a, o: calls.append(1))
        try:
            llama.model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        finally:
            handle.remove()
    assert len(calls) >= 3  # prompt pass + one per generated token


@pytest.mark.parametrize(
    "vector, alpha, message",
    [
        (SteeringVector(np.ones(16, np.float32), np.arange(16), np.ones(16), VectorInfo(layer=1)), 1.0,
         "vector has 16 dimensions but the model's hidden size is 32"),
        (sparse_vector(layer=9), 1.0, "vector is for layer 9; this model has decoder blocks 0..3"),
        (sparse_vector(layer=1), float("nan"), "alpha must be a finite number"),
        (sparse_vector(layer=1), float("inf"), "alpha must be a finite number"),
    ],
)
def test_vectors_that_do_not_fit_are_refused(llama, vector, alpha, message):
    with pytest.raises(VectorError) as err:
        with steer(llama, vector, alpha):
            pass
    assert message in str(err.value)
    assert all(not block._forward_hooks for block in llama.blocks)


def test_a_vector_for_other_weights_is_refused_unless_forced(llama):
    vector = sparse_vector(1).with_info(model="other/model", fingerprint="sha256-local:ffff")
    with pytest.raises(VectorError, match="pass force=True"):
        check_vector(vector, llama)
    with pytest.warns(UserWarning, match="vector was made for model 'other/model'"):
        check_vector(vector, llama, force=True)
    check_vector(vector.with_info(fingerprint=llama.fingerprint), llama)


def test_cli_steer_compares_and_refuses_a_vector_of_other_weights(tmp_path, tiny_model_dirs, pairs_file):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    model, store = str(tiny_model_dirs["gpt2"]), str(tmp_path / "s.zarr")
    runner = CliRunner()
    assert runner.invoke(cli, ["capture", "-q", "--model", model, "--data", str(pairs_file), "--layers", "1",
                               "--store", store]).exit_code == 0
    vec = tmp_path / "v.safetensors"
    assert runner.invoke(cli, ["enr", "--store", store, "--layer", "1", "--k", "4", "--out", str(vec)]).exit_code == 0
    result = runner.invoke(cli, ["steer", "--model", model, "--vector", str(vec), "--alpha", "8", "--prompt", "Hello",
                                 "--max-new-tokens", "4", "--compare"])
    assert result.exit_code == 0, result.output
    assert "--- unsteered:" in result.output and "--- steered (alpha=8; layer 1 k=4)" in result.output
    result = runner.invoke(cli, ["steer", "--model", model, "--vector", str(vec), "--alpha", "8", "--prompt", "Hello",
                                 "--max-new-tokens", "4", "--positions", "generated"])
    assert result.exit_code == 0 and "positions response" in result.output, result.output
    result = runner.invoke(cli, ["steer", "--model", model, "--vector", str(vec), "--prompt", "Hello",
                                 "--positions", "middle"])
    assert result.exit_code == 1 and "positions 'middle'" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["steer", "--model", str(tiny_model_dirs["llama"]), "--vector", str(vec),
                                 "--prompt", "Hello"])
    assert result.exit_code == 1 and "pass --force" in result.output


def _manual_hook(vector, alpha, select):
    """A hand-written steering hook: adds alpha * v where ``select(call, hidden) -> (batch, T) bool``."""
    calls = {"n": 0}
    values = torch.from_numpy(alpha * vector.vector)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        where = select(calls["n"], hidden).to(hidden.dtype).unsqueeze(-1)
        calls["n"] += 1
        steered = hidden + where * values
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


def _left_padded(loaded, texts):
    loaded.tokenizer.padding_side = "left"
    try:
        return loaded.tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        loaded.tokenizer.padding_side = "right"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_from_n_and_masks_count_real_tokens_under_left_padding(tiny_model_dirs, arch):
    loaded = load_model(str(tiny_model_dirs[arch]))
    batch = _left_padded(loaded, [TEXT, "A short one."])
    real_index = batch["attention_mask"].cumsum(-1) - 1
    real = batch["attention_mask"].bool()
    vector = sparse_vector(layer=1)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, [0, 2, 5]] = True
    cases = [("from:3", real & (real_index >= 3)),
             (mask, real & (real_index < 6) & torch.gather(mask, 1, real_index.clamp(0, 5)))]
    for spec, expected_mask in cases:
        with torch.no_grad(), steer(loaded, vector, 2.0, positions=spec):
            got = loaded.model(**batch).logits
        handle = loaded.blocks[1].register_forward_hook(_manual_hook(vector, 2.0, lambda n, h, m=expected_mask: m))
        try:
            with torch.no_grad():
                expected = loaded.model(**batch).logits
        finally:
            handle.remove()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["prompt", "response", "generated", "all"])
def test_positions_during_cached_generation_match_a_hand_written_hook(llama, kind):
    batch = _left_padded(llama, [TEXT, "A short one."])
    vector = sparse_vector(layer=1)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_scores=True,
                  return_dict_in_generate=True)
    with steer(llama, vector, 4.0, positions=kind):
        got = llama.model.generate(**batch, **kwargs)
    real = batch["attention_mask"].bool()

    def select(call, hidden):
        if call == 0:  # the prompt pass
            return real if kind in ("prompt", "all") else torch.zeros_like(real)
        on = kind in ("response", "generated", "all")
        return torch.full(hidden.shape[:2], on, dtype=torch.bool)

    if kind == "all":
        select_all = lambda call, hidden: torch.ones(hidden.shape[:2], dtype=torch.bool)  # noqa: E731
    handle = llama.blocks[1].register_forward_hook(_manual_hook(vector, 4.0, select if kind != "all" else select_all))
    try:
        expected = llama.model.generate(**batch, **kwargs)
    finally:
        handle.remove()
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    plain = llama.model.generate(**batch, **kwargs)
    assert any(not torch.allclose(a, b) for a, b in zip(got.scores, plain.scores))  # steering changed something


def test_positions_are_parsed_and_bad_ones_refused(llama):
    assert str(Positions.parse("from:4")) == "from:4" and Positions.parse(None).kind == "all"
    assert str(Positions.parse(" Response ")) == "response" and Positions.parse("prompt") == Positions("prompt")
    for bad in ("from:-1", "middle", "from:x"):
        with pytest.raises(VectorError, match="positions"):
            Positions.parse(bad)
    with pytest.raises(VectorError, match="boolean of shape"):
        Positions.parse(np.ones((2, 3), dtype=np.float32))
    batch = _left_padded(llama, [TEXT, "A short one."])
    with pytest.raises(VectorError, match="mask is for 3 examples"):
        with torch.no_grad(), steer(llama, sparse_vector(1), 1.0, positions=torch.ones(3, 4, dtype=torch.bool)):
            llama.model(**batch)
    assert not llama.model._forward_pre_hooks and not llama.blocks[1]._forward_hooks


SPECS = ["all", "prompt", "response", "generated", "from:0", "from:4", "from:7", "from:40"]


def _hooks_on_one_sequence(positions: Positions, tensors, hidden: torch.Tensor, prompt_length: int):
    """``hidden`` (T, H), one sequence's block outputs, as :func:`steer`'s hooks change them during
    ``generate``: a prompt pass of ``prompt_length`` tokens, then one cached pass per generated token."""
    state, out = _PassState(), []
    passes = [(0, prompt_length)] + [(t, t + 1) for t in range(prompt_length, hidden.shape[0])]
    for low, high in passes:
        state.pre_hook(None, (), {"input_ids": torch.zeros(1, high - low, dtype=torch.long),
                                  "attention_mask": torch.ones(1, high, dtype=torch.long)})
        where = None if positions.kind == "all" else state.selected(positions)
        out.append(_add(hidden[None, low:high], [tensors], where)[0])
    return torch.cat(out)


def _served(vector, alpha: float, positions: Positions, key: str = "key"):
    """The payload a vLLM worker reads for a request, as it travels (JSON)."""
    payload = SteeringPayload.of("v", vector, alpha, positions, 4, key)
    return SteeringPayload.from_extra(json.loads(json.dumps(payload.to_extra())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kept", [3, 32], ids=["sparse", "dense"])
def test_the_serve_plugin_adds_what_steer_adds_at_the_tokens_steer_picks(kept, dtype):
    """One engine step holding a sequence per positions spec, each split as vLLM schedules it (a
    prompt prefilled in two chunks beside single decoded tokens): the plugin's rows and scatters
    give exactly what steer's hooks give to the same tokens, bit for bit."""
    hidden_size, prompt_length, length = 32, 6, 10
    vector = sparse_vector(layer=1, indices=range(0, 32, 32 // kept)[:kept], seed=kept)
    addition = vector_addition(vector, -2.5)
    assert (addition.indices is None) == (kept == 32)  # the one sparse/dense rule, both sides
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(SPECS) * length, hidden_size, generator=generator).to(dtype)
    expected, requests, groups = [], [], []
    for number, spec in enumerate(SPECS):
        positions = Positions.from_text(spec)
        base = number * length
        sequence = hidden[base : base + length]
        expected.append(_hooks_on_one_sequence(positions, addition.tensors("cpu", dtype), sequence, prompt_length))
        payload = _served(vector, -2.5, positions)
        tensors = payload.edit().tensors("cpu", dtype)
        chunks = [(0, 4), (4, prompt_length)] + [(t, t + 1) for t in range(prompt_length, length)]
        for first, stop in chunks:
            requests.append(StepTokens(payload.positions, base + first, base + stop, first, prompt_length))
            groups.append(tensors)
    merged = LayerAddition.merge([(rows, *tensors) for rows, tensors in zip(steered_rows(requests), groups)
                                  if len(rows)], "cpu")
    assert torch.equal(add_to_rows(hidden, merged), torch.cat(expected))


@pytest.mark.parametrize("bad", ["middle", "from:-1", "from:x", "from:", "from:99999999999", "", "prompt,response",
                                 "responses", "assistant"])
def test_a_bad_positions_spec_gets_one_message_from_steer_and_from_the_server(llama, bad):
    with pytest.raises(VectorError) as local:
        with steer(llama, sparse_vector(1), 1.0, positions=bad):
            pass
    with pytest.raises(VectorError) as served:
        resolve_request({"actstore_vector": "v", POSITIONS_KEY: bad}, None, ModelFacts("", 32, 4))
    assert str(served.value) == str(local.value)
    assert "expected 'all', 'prompt', 'response' or 'from:N'" in str(local.value)
    assert "'generated' is read as 'response'" in str(local.value)  # the former name is said, not listed
    assert local.value.params == ("positions",) and served.value.params == (POSITIONS_KEY,)
    for not_text in (3, None, ["all"]):  # a request's value need not be a string
        with pytest.raises(VectorError, match="expected 'all', 'prompt', 'response' or 'from:N'"):
            resolve_request({"actstore_vector": "v", POSITIONS_KEY: not_text}, None, ModelFacts("", 32, 4))


# Operators beyond addition (issue 29): what the hook leaves along the vector's direction.
def _operator_vector(hidden: int, operator, k: int | None = None):
    from actstore.vectors.operators import Operator  # noqa: F401  (the caller's operator)

    values = np.random.default_rng(5).normal(size=hidden).astype(np.float32)
    indices = np.arange(hidden) if k is None else np.argsort(-np.abs(values))[:k]
    kept = np.zeros_like(values)
    kept[indices] = values[indices]
    return SteeringVector(kept, indices.astype(np.int64), np.abs(values),
                          VectorInfo(layer=2, k=k, operator=operator))


def _outputs_at(loaded, layers, vector=None, alpha=1.0):
    """Each layer's block output, recorded after the steering hooks (registered later, they run later)."""
    import contextlib

    ids = loaded.tokenizer(["I fed the stray cat.", "She kept the lost wallet"], return_tensors="pt",
                           padding=True).input_ids
    steering = contextlib.nullcontext() if vector is None else steer(loaded, vector, alpha)
    with torch.no_grad(), steering, record_blocks(loaded.blocks, layers, stop_after_last=False) as seen:
        loaded.model(ids)
    return {layer: value.double() for layer, value in seen.items()}


@pytest.mark.parametrize("k", [None, 6])
def test_project_leaves_no_component_along_the_direction_at_each_hooked_layer(llama, k):
    from actstore.vectors.operators import Operator

    vector = _operator_vector(llama.hidden_size, Operator("project", layers="1-2"), k)
    unit = torch.from_numpy(vector.vector.astype(np.float64))
    unit = unit / unit.norm()
    steered, plain = _outputs_at(llama, [1, 2], vector), _outputs_at(llama, [1, 2])
    for layer in (1, 2):
        along = (steered[layer] @ unit).abs().max()
        assert float(along) <= 1e-6 * float(steered[layer].norm(dim=-1).max())
        assert float((plain[layer] @ unit).abs().max()) > 1e-3  # it was there: the test can fail
    if k is not None:  # a sparse direction projects on its support only
        outside = np.setdiff1d(np.arange(llama.hidden_size), vector.indices)
        hidden_plain = _outputs_at(llama, [1])[1]
        torch.testing.assert_close(_outputs_at(llama, [1], vector)[1][..., outside], hidden_plain[..., outside])


def test_clamp_sets_the_component_along_the_direction_to_its_value(llama):
    from actstore.vectors.operators import Operator

    vector = _operator_vector(llama.hidden_size, Operator("clamp", 0.75))
    unit = torch.from_numpy(vector.vector.astype(np.float64))
    unit = unit / unit.norm()
    steered = _outputs_at(llama, [2], vector)[2]
    torch.testing.assert_close(steered @ unit, torch.full(steered.shape[:-1], 0.75, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    half = _outputs_at(llama, [2], vector, alpha=0.5)[2]  # alpha blends: halfway to the value
    plain = _outputs_at(llama, [2])[2]
    torch.testing.assert_close(half @ unit, 0.5 * (plain @ unit) + 0.5 * 0.75, rtol=0, atol=1e-5)


def test_a_projection_at_all_layers_is_the_ablation_that_a_bake_writes(llama):
    from actstore.models.hooks import ablate_direction
    from actstore.vectors.operators import Operator

    vector = _operator_vector(llama.hidden_size, Operator("project", layers="all"))
    unit = torch.from_numpy(vector.vector.astype(np.float64))
    ids = llama.tokenizer("I fed the stray cat.", return_tensors="pt").input_ids
    with torch.no_grad():
        with ablate_direction(llama.model, llama.blocks, unit / unit.norm()):
            want = llama.model(ids).logits
        with steer(llama, vector, 1.0):
            got = llama.model(ids).logits
        plain = llama.model(ids).logits
    torch.testing.assert_close(got, want)
    assert float((got - plain).abs().max()) > 1e-4


def test_an_old_add_file_steers_as_before(llama):
    vector = _operator_vector(llama.hidden_size, VectorInfo().operator)
    values = torch.from_numpy(vector.vector.astype(np.float64))
    steered, plain = _outputs_at(llama, [2], vector, 2.0)[2], _outputs_at(llama, [2])[2]
    torch.testing.assert_close(steered - plain, (2.0 * values).expand_as(steered), rtol=0, atol=1e-5)


def _split_step(dtype, sequences: int, length: int, hidden_size: int = 32):
    """A step's ``(hidden, residual)`` as a vLLM decoder layer returns them (the stream is their sum),
    with a residual much larger than the block's own output, as in a deep model."""
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(sequences * length, hidden_size, generator=generator).to(dtype)
    residual = (8 * torch.randn(sequences * length, hidden_size, generator=generator)).to(dtype)
    return hidden, residual


@pytest.mark.parametrize("split", [False, True], ids=["stream", "hidden+residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kept", [6, 32], ids=["sparse", "dense"])
@pytest.mark.parametrize("operator", [("project", None), ("clamp", 0.75)], ids=["project", "clamp"])
def test_the_serve_plugin_projects_and_clamps_as_steer_does_at_the_tokens_steer_picks(operator, kept, dtype, split):
    """The step of the addition test above, with a projection or clamp: each request's rows get
    steer's DirectionEdit (from the payload as it travels), on vLLM's (hidden, residual) split with
    the change in hidden, to float rounding (a matrix-vector product's sums depend on how many rows
    it holds, in steer's hooks as here). Beside them, a request adding another vector at the same
    layer gets its own addition and an unsteered request's rows stay as they were, bit for bit."""
    from actstore.vectors.operators import Operator

    prompt_length, length = 6, 10
    vector = sparse_vector(1, indices=range(0, 32, 32 // kept)[:kept], seed=kept).with_info(
        operator=Operator(*operator))
    edit, other = direction_edit(vector, 0.8), sparse_vector(1, seed=9)
    hidden, residual = _split_step(dtype, len(SPECS) + 2, length)
    stream = hidden + residual if split else hidden
    expected, requests, tokens = [], [], []
    for number, spec in enumerate([*SPECS, "all"]):
        positions, base = Positions.from_text(spec), number * length
        adding = number == len(SPECS)  # the last steered request adds ``other``: an addition beside the edits
        payload = _served(other if adding else vector, 0.8, positions, key="add" if adding else "edit")
        made = payload.edit().tensors("cpu", dtype) if adding else payload.edit()
        assert adding or (isinstance(made, DirectionEdit) and payload.layers == (1,) and not payload.writes)
        expected.append(_hooks_on_one_sequence(positions, made if adding else edit, stream[base : base + length],
                                               prompt_length))
        chunks = [(0, 4), (4, prompt_length)] + [(t, t + 1) for t in range(prompt_length, length)]
        for first, stop in chunks:
            requests.append((payload.key, payload.layers, made))
            tokens.append(StepTokens(payload.positions, base + first, base + stop, first, prompt_length))
    unsteered = slice(len(expected) * length, None)
    expected.append(stream[unsteered])
    plan = plan_step(requests, steered_rows(tokens), "cpu")
    assert set(plan) == {1} and len(plan[1].directions) == 1  # one edit for all the spans that share it
    out = plan[1].apply(hidden, residual if split else None)
    assert torch.equal(out[unsteered], hidden[unsteered])  # an unsteered request's rows: untouched
    got, want = out + residual if split else out, torch.cat(expected)
    adds = slice(len(SPECS) * length, (len(SPECS) + 1) * length)
    assert split or torch.equal(got[adds], want[adds])  # the addition: the scatter of the test above
    scale = float(stream.abs().max()) * torch.finfo(dtype).eps
    torch.testing.assert_close(got, want, rtol=0, atol=2 * scale)  # measured: at most 0.51 scale
    assert float((want - stream).abs().max()) > 0.5  # the edits did something


# Per-row steering (issue 32): one configuration per batch row, each row as if steered alone.
PROMPTS = ["The quick brown fox jumps over the lazy dog and runs away.", "Hi.", "She kept the lost wallet",
           "I told my baby I loved her when she cried at night", "A short one.", "Steering vectors add"]


def _row_configs(hidden: int):
    """Mixed configurations, one per row of PROMPTS: sparse, dense, none, a projection, a clamp (at
    two layers), a sparse vector at another layer on the response only."""
    from actstore.steering import RowSteering
    from actstore.vectors.operators import Operator

    dense = SteeringVector(np.random.default_rng(3).normal(size=hidden).astype(np.float32), np.arange(hidden),
                           np.ones(hidden, np.float32), VectorInfo(layer=2))
    return [(sparse_vector(1, seed=1), 6.0), RowSteering(dense, -3.0), None,
            RowSteering(_operator_vector(hidden, Operator("project", layers="1-2"), k=6), 1.0),
            RowSteering(_operator_vector(hidden, Operator("clamp", 2.0)), 0.5),
            RowSteering(sparse_vector(2, (0, 5, 9, 31), seed=4), 8.0, positions="response")]


def _alone(loaded, config):
    """The context that steers every row with ``config`` (None: unsteered)."""
    import contextlib

    if config is None:
        return contextlib.nullcontext()
    vector, alpha, positions = (config.vector, config.alpha, config.positions) if hasattr(config, "vector") \
        else (*config, None)
    return steer(loaded, vector, alpha, positions=positions)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_each_row_of_steer_rows_is_its_configuration_run_alone(tiny_model_dirs, arch):
    """Left-padded prompts of different lengths, greedy generation: every row's tokens are those of the
    same batch steered wholly by that row's configuration, its log-probs to 1e-5."""
    from actstore.steering import steer_rows

    loaded = load_model(str(tiny_model_dirs[arch]))
    batch = _left_padded(loaded, PROMPTS)
    configs = _row_configs(loaded.hidden_size)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with steer_rows(loaded, configs):
        mixed = loaded.model.generate(**batch, **kwargs)
    for row, config in enumerate(configs):
        with _alone(loaded, config):
            alone = loaded.model.generate(**batch, **kwargs)
        assert torch.equal(mixed.sequences[row], alone.sequences[row]), (row, config)
        for got, want in zip(mixed.scores, alone.scores):
            torch.testing.assert_close(torch.log_softmax(got[row], -1), torch.log_softmax(want[row], -1),
                                       rtol=0, atol=1e-5)
    plain = loaded.model.generate(**batch, **kwargs)
    changed = [any(not torch.allclose(a[row], b[row]) for a, b in zip(mixed.scores, plain.scores))
               for row in range(len(configs))]
    assert changed == [c is not None for c in configs]  # every steered row moved; the unsteered one did not


def test_steer_rows_full_passes_equal_steer_bit_for_bit_and_sparse_or_dense_alike(llama):
    """A forward pass over the whole batch: additions give exactly steer's numbers (index_add and the
    dense delta make the same sums), sparse=False changes nothing."""
    from actstore.steering import steer_rows

    batch = _left_padded(llama, PROMPTS[:3])
    sparse, dense = sparse_vector(1, seed=1), sparse_vector(2, indices=range(32), seed=2)
    with torch.no_grad():
        for flag in (True, False):
            with steer_rows(llama, [(sparse, 6.0), (dense, -2.0), None], sparse=flag):
                mixed = llama.model(**batch).logits
            for row, (vector, alpha) in enumerate([(sparse, 6.0), (dense, -2.0)]):
                with steer(llama, vector, alpha):
                    assert torch.equal(mixed[row], llama.model(**batch).logits[row])
            assert torch.equal(mixed[2], llama.model(**batch).logits[2])


def test_steer_rows_refuses_a_batch_of_another_size_and_removes_its_hooks(llama):
    from actstore.steering import steer_rows

    batch = _left_padded(llama, PROMPTS[:4])
    with pytest.raises(VectorError, match="a forward pass of 4 rows inside a context that steers 2 rows"):
        with torch.no_grad(), steer_rows(llama, [(sparse_vector(1), 2.0), None], positions="prompt"):
            llama.model(**batch)
    assert not llama.model._forward_pre_hooks and not any(b._forward_hooks for b in llama.blocks)
    with pytest.raises(VectorError, match="vector is for layer 9"):
        with steer_rows(llama, [None, (sparse_vector(9), 1.0)]):
            pass
    with pytest.raises(VectorError, match="alpha must be a finite number"):
        with steer_rows(llama, [(sparse_vector(1), float("nan"))]):
            pass

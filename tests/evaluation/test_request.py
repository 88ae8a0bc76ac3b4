"""SweepRequest: each of its rules pinned (one on-target input, what an alpha is, 'all' layers, the
behavior's name, the held-out separation, the served engine), the params its refusals name, and
`actstore eval` as one library call: the CLI and a Python run_sweep give the same folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import actstore
from actstore.errors import ActstoreError
from actstore.evaluation.grid import DEFAULT_FRACTIONS
from actstore.evaluation.protocols import ABLetters
from actstore.evaluation.request import SweepRequest
from actstore.evaluation.scoring import PerplexityWindows
from actstore.evaluation.sweep import run_sweep
from actstore.models.load import load_model
from actstore.stores import StoreGroup

from .test_sweep import ITEMS, TEXT


def _request(tmp_path, **fields) -> SweepRequest:
    """A request on held-out items at layer 1 of ``s.zarr``, k 4 and dense (nothing is read until it is run)."""
    return SweepRequest(**{"store": tmp_path / "s.zarr", "out": tmp_path / "out", "layers": "1", "ks": (4, None),
                           "data_test": tmp_path / "refusal" / "test.json", **fields})


def _eval_flags(command) -> set[str]:
    return {p.name for p in command.params}


def _refusal(tmp_path, **fields) -> ActstoreError:
    from actstore.cli.evaluate import evaluate

    with pytest.raises(ActstoreError) as refused:
        _request(tmp_path, **fields)
    # what a refusal names is an option of `actstore eval` (the CLI shows it as the flag) or a Python-only field
    assert set(refused.value.params) <= _eval_flags(evaluate) | {"on_target", "perplexity"}, refused.value.params
    return refused.value


def test_exactly_one_on_target_input_is_accepted_and_the_refusal_names_its_parameters(tmp_path):
    both = _refusal(tmp_path, prompts=tmp_path / "prompts.txt")
    assert both.params == ("data_test", "prompts") and "got data_test and prompts" in str(both)
    neither = _refusal(tmp_path, data_test=None)
    assert neither.params == ("data_test", "prompts") and "got neither" in str(neither)
    protocol = object()  # a protocol already built goes alone
    assert "on_target" in str(_refusal(tmp_path, on_target=protocol))
    assert _request(tmp_path, data_test=None, on_target=protocol).on_target is protocol


def test_a_refusal_reads_as_the_flags_on_the_command_line(tmp_path):
    from actstore.cli.evaluate import evaluate
    from actstore.cli.main import _with_flags

    refused = _refusal(tmp_path, prompts=tmp_path / "prompts.txt")
    assert _with_flags(str(refused), refused.params, evaluate).startswith(
        "give exactly one of --data-test (held-out items) and --prompts (generation)")
    refused = _refusal(tmp_path, normalize=True)
    assert _with_flags(str(refused), refused.params, evaluate).startswith("--normalize needs --alpha")


def test_without_alphas_the_default_fractions_of_the_residual_norm_are_swept(tmp_path, store):
    group = StoreGroup.open(store)
    request = _request(tmp_path, store=store)
    assert request.alpha_mode == "fraction" and request.grid(group).alphas == DEFAULT_FRACTIONS
    assert request.grid(group).alpha_mode == "fraction"
    request = _request(tmp_path, store=store, fractions=[0.1, 0.2])
    assert request.grid(group).alphas == (0.1, 0.2)
    request = _request(tmp_path, store=store, alphas=[3, 6])
    assert request.alpha_mode == "scale" and request.grid(group).alphas == (3, 6)
    assert _request(tmp_path, alphas=[3], normalize=True).alpha_mode == "norm"
    refused = _refusal(tmp_path, normalize=True)
    assert "normalize" in refused.params and "alphas" in refused.params


def test_all_layers_are_every_layer_the_store_captured(tmp_path, store):
    group = StoreGroup.open(store)  # layers 1 and 2
    assert _request(tmp_path, layers="all").layers == "all"
    assert _request(tmp_path, layers=" ALL ").grid(group).layers == (1, 2)
    assert _request(tmp_path, layers="2,1").grid(group).layers == (1, 2)
    assert _request(tmp_path, layers=[2]).grid(group).layers == (2,)
    with pytest.raises(ActstoreError, match=r"layers \[3\] are not in") as missing:
        _request(tmp_path, layers="1,3").grid(group)
    assert missing.value.params == ("layers",)
    assert _refusal(tmp_path, layers="one").params == ("layers",)
    assert _refusal(tmp_path, layers=[-1]).params == ("layers",)


def test_the_behavior_is_named_after_the_held_out_files_folder(tmp_path):
    assert _request(tmp_path).behavior_name == "refusal"
    assert _request(tmp_path, behavior="sycophancy").behavior_name == "sycophancy"
    assert _request(tmp_path, data_test=None, prompts=tmp_path / "sentiment" / "p.txt").behavior_name == "sentiment"
    assert _request(tmp_path, data_test=None, on_target=object()).behavior_name == "behavior"


def test_the_other_rules_are_checked_when_the_request_is_made(tmp_path):
    assert _refusal(tmp_path, batch_size=0).params == ("batch_size",)
    assert _refusal(tmp_path, ppl_window=4).params == ("ppl_window",)
    assert _refusal(tmp_path, max_items=0).params == ("max_items",)
    assert _refusal(tmp_path, methods="enr,svm").params == ("methods",)
    assert _refusal(tmp_path, ks=[4, "x"]).params == ("ks",)
    assert _refusal(tmp_path, budgets=[0.9]).params == ("budgets",)
    assert _refusal(tmp_path, contrasts=["k4 minus dense"]).params == ("contrasts",)
    assert _refusal(tmp_path, positions="every").params != ()
    assert _refusal(tmp_path, text="t.txt", perplexity=object()).params == ("text", "perplexity")
    assert _refusal(tmp_path, data_test=None, on_target=object(), server=object()).params[0] == "server"
    request = _request(tmp_path, methods="enr, random", ks=["8", "dense"], control_seeds=[1, 2])
    assert request.methods == ("enr", "random") and request.ks == (8, None) and request.control_seeds == (1, 2)


def test_served_flags_are_refused_before_anything_connects(tmp_path):
    connected = []

    def connect(server, server_vectors, positions):
        connected.append((server, server_vectors, positions))
        return "engine"

    flags = {"store": "s.zarr", "out": "out", "layers": "1", "quiet": True, "server": None, "server_vectors": None}
    request = SweepRequest.from_flags({**flags, "data_test": "t/test.json"}, connect=connect)
    assert request.server is None and request.progress is False and connected == []
    for extra in ({"data_test": "t.json", "server": "http://h:1", "server_vectors": "v"},
                  {"prompts": "p.txt", "server_vectors": "v"}):
        with pytest.raises(ActstoreError, match="give prompts, server and server_vectors together") as refused:
            SweepRequest.from_flags({**flags, **extra}, connect=connect)
        assert refused.value.params == ("server", "server_vectors", "prompts")
    assert connected == []
    request = SweepRequest.from_flags({**flags, "prompts": "p.txt", "server": "http://h:1", "server_vectors": "v",
                                       "positions": "prompt"}, connect=connect)
    assert request.server == "engine" and connected == [("http://h:1", "v", "prompt")]


def test_a_python_sweep_given_a_held_out_store_writes_separation_csv(tmp_path, llama, store, pairs_file, ppl_ids):
    heldout = tmp_path / "heldout.zarr"
    actstore.capture_to_store(llama, pairs_file, heldout, layers="2", progress=False)
    fields = dict(store=store, layers=(2,), ks=(4,), alphas=(4.0,), on_target=ABLetters(llama.tokenizer, ITEMS[:4]),
                  perplexity=PerplexityWindows(llama.tokenizer, ppl_ids, 32), heldout_store=heldout, progress=False)
    run_sweep(llama, SweepRequest(out=tmp_path / "with", **fields))
    separation = pd.read_csv(tmp_path / "with" / "separation.csv", dtype={"k": str})
    assert separation[["layer", "method", "k"]].values.tolist() == [[2, "enr", "4"]]
    assert "Separation of held-out pairs" in (tmp_path / "with" / "results.md").read_text()
    run_sweep(llama, SweepRequest(out=tmp_path / "without", separation=False, **fields))
    assert not (tmp_path / "without" / "separation.csv").exists()


@pytest.fixture
def eval_world(tmp_path, tiny_model_dirs, pairs_file):
    """A gpt2 store at layer 1, an A/B test file in a folder 'refusal', a perplexity text."""
    model, store = str(tiny_model_dirs["gpt2"]), tmp_path / "s.zarr"
    actstore.capture_to_store(load_model(model), pairs_file, store, layers="1", progress=False)
    (tmp_path / "refusal").mkdir()
    ab = tmp_path / "refusal" / "test.json"
    ab.write_text(json.dumps([{"positive": i.prompt + f"({i.matching})", "negative": i.prompt + f"({i.other})"}
                              for i in ITEMS]))
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    return {"model": model, "store": store, "data_test": ab, "text": text}


def _table(path):
    frame = pd.read_csv(path, dtype={"k": str, "method": str, "item": str})
    return frame.drop(columns=["seconds"], errors="ignore")  # the time each configuration took


def test_the_cli_and_a_python_run_sweep_write_the_same_folder(tmp_path, eval_world):
    from click.testing import CliRunner

    from actstore.cli.main import cli

    world = eval_world
    result = CliRunner().invoke(cli, ["eval", "-q", "--model", world["model"], "--store", str(world["store"]),
                                      "--data-test", str(world["data_test"]), "--text", str(world["text"]),
                                      "--ppl-tokens", "64", "--ppl-window", "16", "--layers", "all", "--k", "4,dense",
                                      "--fractions", "0.5,2", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    request = SweepRequest(store=world["store"], data_test=world["data_test"], text=world["text"], ppl_tokens=64,
                           ppl_window=16, layers="all", ks=(4, None), fractions=(0.5, 2.0), out=tmp_path / "python",
                           progress=False)
    results = run_sweep(load_model(world["model"]), request)
    assert len(results) == 4 and set(results["behavior"]) == {"refusal"}  # named after the test file's folder
    for name in ("results.csv", "items.csv", "windows.csv", "separation.csv", "frontier.csv", "contrasts.csv",
                 "steerability.csv"):
        pd.testing.assert_frame_equal(_table(tmp_path / "python" / name), _table(tmp_path / "cli" / name), obj=name)
    for name in ("results.md", "frontier_refusal.png", "separation_refusal.png", "baseline.json"):
        assert (tmp_path / "python" / name).is_file() and (tmp_path / "cli" / name).is_file(), name
    assert (json.loads((tmp_path / "python" / "baseline.json").read_text())["settings"]
            == json.loads((tmp_path / "cli" / "baseline.json").read_text())["settings"])


@pytest.mark.parametrize("flags, shown", [(("--k", "4,4"), "--k: 4 given twice"),
                                          (("--alpha", "1,1"), "1.0 given twice"),
                                          (("--fractions", "0.5,0.5"), "0.5 given twice"),
                                          (("--methods", "enr,enr"), "--methods: enr given twice")])
def test_a_repeated_grid_value_is_refused_at_the_door(run, tmp_path, flags, shown):
    # issue 31: --alpha 1,1 or --k 4,4 was measured twice, then the report crashed
    (tmp_path / "t.json").write_text("[]")
    (tmp_path / "s.zarr").mkdir()
    result = run("eval", "--model", "m", "--store", tmp_path / "s.zarr", "--data-test", tmp_path / "t.json",
                 "--layers", "1", "--out", tmp_path / "o", *flags)
    assert result.exit_code == 1 and shown in result.output and "Traceback" not in result.output, result.output


def test_a_store_without_the_classes_pos_and_neg_is_refused_before_the_model_loads(tmp_path, llama):
    from actstore.models.load import ModelSpec

    rows = [{"text": f"Some text {i}.", "label": "positive" if i % 2 else "negative"} for i in range(8)]
    data = tmp_path / "labeled.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    actstore.capture_to_store(llama, data, tmp_path / "s.zarr", layers="1", progress=False)
    (tmp_path / "t.json").write_text(json.dumps([{"positive": "a (A)", "negative": "a (B)"}]))
    request = SweepRequest(store=tmp_path / "s.zarr", data_test=tmp_path / "t.json", layers="1", out=tmp_path / "o",
                           ks=(4, None), progress=False)
    with pytest.raises(ActstoreError, match="class 'pos' .* it has classes \\['negative', 'positive'\\]"):
        run_sweep(ModelSpec("no-such/model-anywhere"), request)  # the model would fail to load: it is not reached


def test_the_margin_and_the_resamples_are_checked_when_the_request_is_made(tmp_path, run):
    # issue 30 §2: a margin stated before use (positive, on the contrasts' scale), enough resamples
    for margin in (0, -0.1, float("nan"), True):
        assert _refusal(tmp_path, margin=margin).params == ("margin",)
    assert _refusal(tmp_path, resamples=50).params == ("resamples",)
    request = _request(tmp_path, margin=0.1, resamples=5000, exclude_train_overlap=True)
    assert (request.analysis.margin, request.analysis.resamples) == (0.1, 5000)
    (tmp_path / "t.json").write_text("[]")
    (tmp_path / "s.zarr").mkdir()
    result = run("eval", "--model", "m", "--store", tmp_path / "s.zarr", "--data-test", tmp_path / "t.json",
                 "--layers", "1", "--out", tmp_path / "o", "--margin", "-1")
    assert result.exit_code == 2 and "--margin" in result.output  # click refuses it before anything is read

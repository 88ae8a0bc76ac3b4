"""The catalogue of bad inputs, as a user meets them: the command line.

Each case runs one `actstore` command on one bad input and asserts the exit
code (1 for actstore's errors, 2 for click's usage errors), that no traceback
is printed, and that the message names what is wrong and where (the file,
item or line, the field or flag, the value). Texts longer than the model's
context are the one documented non-error: they are truncated, keeping their
last tokens, with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from actstore.cli.main import cli

PAIRS = [{"positive": f"I kept my promise number {i}.", "negative": f"I broke my promise number {i}."}
         for i in range(6)]


@dataclass
class Case:
    name: str
    args: list[str]
    messages: list[str]
    exit_code: int = 1
    files: dict[str, str | bytes] = field(default_factory=dict)


CASES = [
    # Contrast-set files: which file, which line or item, which field.
    Case("missing field", ["capture", "-m", "{llama}", "-d", "{tmp}/bad.jsonl", "-s", "{tmp}/new.zarr"],
         ["bad.jsonl", "line 1: missing field 'negative'"], files={"bad.jsonl": '{"positive": "a"}\n'}),
    Case("misspelled field", ["capture", "-m", "{llama}", "-d", "{tmp}/typo.json", "-s", "{tmp}/new.zarr"],
         ["typo.json", "item 2: missing field 'negative'"],
         files={"typo.json": json.dumps([{"positive": "a", "negative": "b"}, {"positive": "a", "negatve": "b"}])}),
    Case("empty file", ["capture", "-m", "{llama}", "-d", "{tmp}/empty.jsonl", "-s", "{tmp}/new.zarr"],
         ["empty.jsonl", "is empty"], files={"empty.jsonl": ""}),
    Case("empty JSON list", ["capture", "-m", "{llama}", "-d", "{tmp}/empty.json", "-s", "{tmp}/new.zarr"],
         ["empty.json", "is an empty JSON list"], files={"empty.json": "[]"}),
    Case("invalid JSON", ["capture", "-m", "{llama}", "-d", "{tmp}/broken.json", "-s", "{tmp}/new.zarr"],
         ["broken.json", "line 2: invalid JSON"], files={"broken.json": '[{"positive": "a",\n "negative": }]'}),
    Case("not UTF-8", ["capture", "-m", "{llama}", "-d", "{tmp}/latin1.jsonl", "-s", "{tmp}/new.zarr"],
         ["latin1.jsonl", "line 1: not valid UTF-8"],
         files={"latin1.jsonl": '{"positive": "caf\xe9", "negative": "b"}\n'.encode("latin-1")}),
    Case("empty text", ["capture", "-m", "{llama}", "-d", "{tmp}/blank.json", "-s", "{tmp}/new.zarr"],
         ["blank.json", "item 1: field 'positive' is empty"],
         files={"blank.json": json.dumps([{"positive": " ", "negative": "b"}])}),
    Case("text that tokenizes to nothing",
         ["capture", "-m", "{llama}", "-d", "{tmp}/nothing.jsonl", "-s", "{tmp}/new.zarr", "--chat-template"],
         ["--chat-template", "has no chat template"], files={"nothing.jsonl": '{"text": "a", "label": "x"}\n'}),
    Case("input is a folder", ["capture", "-m", "{llama}", "-d", "{tmp}", "-s", "{tmp}/new.zarr"],
         ["'--data'", "is a directory"], exit_code=2),
    # Layers and blocks.
    Case("layer out of range", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "7", "-s", "{tmp}/new.zarr"],
         ["layer(s) [7] out of range; this model has decoder blocks 0..3"]),
    Case("negative layer", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "-1", "-s", "{tmp}/new.zarr"],
         ["layer(s) [-1] out of range"]),
    Case("layers not numbers", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "two", "-s", "{tmp}/new.zarr"],
         ["--layers 'two'", "expected 'all' or comma-separated integers"]),
    Case("blocks not found", ["capture", "-m", "{llama}", "-d", "{data}", "-l", "all", "--blocks", "model.nope",
                              "-s", "{tmp}/new.zarr"],
         ["has no attribute path 'model.nope'", "--blocks"]),
    Case("layer not in the store", ["enr", "-s", "{store}", "--layer", "3", "--k", "4", "-o", "{tmp}/v.safetensors"],
         ["layer 3 was not captured", "[1]"]),
    # k.
    Case("k = 0", ["enr", "-s", "{store}", "--layer", "1", "--k", "0", "-o", "{tmp}/v.safetensors"],
         ["k=0 is out of range"]),
    Case("k > hidden", ["enr", "-s", "{store}", "--layer", "1", "--k", "999", "-o", "{tmp}/v.safetensors"],
         ["k=999 is out of range", "32"]),
    Case("k not an integer", ["enr", "-s", "{store}", "--layer", "1", "--k", "2.5", "-o", "{tmp}/v.safetensors"],
         ["'--k'", "'2.5' is not a valid integer"], exit_code=2),
    # Classes.
    Case("class with 0 samples", ["enr", "-s", "{store}", "--layer", "1", "--k", "4", "--neg", "bad",
                                  "-o", "{tmp}/v.safetensors"],
         ["class 'bad' (--neg) is not in the store"]),
    Case("class with 1 sample", ["enr", "-s", "{one_store}", "--layer", "1", "--k", "4", "-o", "{tmp}/v.safetensors"],
         ["class 'pos' has 1 sample(s) at layer 1; ENR needs at least 2 per class"]),
    # Activations.
    Case("NaN/Inf activations", ["capture", "-m", "{broken}", "-d", "{data}", "-l", "1", "-s", "{tmp}/nan.zarr"],
         ["data.json' item 1: non-finite activation (NaN/Inf)", "float16"]),
    # Stores.
    Case("another schema version", ["stats", "-s", "{old_store}"], ["old.zarr", "schema version 99"]),
    Case("path that is not a store", ["stats", "-s", "{data}"], ["data.json", "is not an actstore store"]),
    Case("missing store", ["info", "{tmp}/missing.zarr"], ["missing.zarr", "is not an actstore store"]),
    Case("another model into a group", ["capture", "-m", "{gpt2}", "-d", "{data}", "-l", "1", "-s", "{store}",
                                        "--name", "tiny-llama"],
         ["group 'tiny-llama'", "model_id is", "pass --name"]),
    Case("another position into a group", ["capture", "-m", "{llama}", "-d", "{other}", "-l", "1", "-s", "{store}",
                                           "--position", "mean"],
         ["group 'tiny-llama'", "position is 'last' there but 'mean' now"]),
    Case("path traversal as a group name", ["capture", "-m", "{llama}", "-d", "{data}", "-s", "{tmp}/new.zarr",
                                            "--name", "../../escape"],
         ["--name '../../escape'", "no '/', no '..'"]),
    Case("bad shard", ["capture", "-m", "{llama}", "-d", "{data}", "-s", "{store}", "--shard", "3/2"],
         ["'--shard'", "'3/2': expected I/N with 0 <= I < N"], exit_code=2),
    Case("bad scheduler", ["stats", "-s", "{store}", "--scheduler", "local:0"],
         ["'--scheduler'", "'local:0': expected local:N with N >= 1"], exit_code=2),
    # Vector files.
    Case("vector file not safetensors", ["steer", "-m", "{llama}", "--vector", "{data}", "--prompt", "Hi"],
         ["data.json", "is not a safetensors vector file"]),
    Case("vector file without 'vector'", ["steer", "-m", "{llama}", "--vector", "{novec}",
                                          "--prompt", "Hi"],
         ["novec.safetensors", "'vector'"]),
    Case("vector for another hidden size", ["steer", "-m", "{gpt2_wide}", "--vector", "{vector}", "--prompt", "Hi",
                                            "--force"],
         ["vector has 32 dimensions but the model's hidden size is 48"]),
    # Models.
    Case("model that does not exist", ["capture", "-m", "{tmp}/no-such-model", "-d", "{data}", "-s", "{tmp}/n.zarr"],
         ["no-such-model", "could not load model"]),
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dirs, tiny_tokenizer):
    """Files every case may refer to: models, a store, a vector, an old store."""
    import torch
    import zarr
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, GPT2Config

    tmp = tmp_path_factory.mktemp("catalogue")
    data = tmp / "data.json"
    data.write_text(json.dumps(PAIRS))
    other = tmp / "other.json"
    other.write_text(json.dumps(PAIRS[:3]))
    llama = tiny_model_dirs["llama"]
    store = tmp / "acts.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", store, "-q").exit_code == 0
    vector = tmp / "v.safetensors"
    assert run("enr", "-s", store, "--layer", "1", "--k", "4", "-o", vector).exit_code == 0
    one = tmp / "one.jsonl"
    one.write_text('{"text": "alpha", "label": "pos"}\n{"text": "beta", "label": "neg"}\n'
                   '{"text": "gamma", "label": "neg"}\n')
    one_store = tmp / "one.zarr"
    assert run("capture", "-m", llama, "-d", one, "-l", "1", "-s", one_store, "-q").exit_code == 0
    old_store = tmp / "old.zarr"
    assert run("capture", "-m", llama, "-d", data, "-l", "1", "-s", old_store, "-q").exit_code == 0
    root = zarr.open_group(old_store, mode="a")
    root.attrs["actstore"] = {**root.attrs["actstore"], "schema_version": 99}
    save_file({"enr": torch.ones(32).numpy()}, str(tmp / "novec.safetensors"))
    # A model whose block 0 overflows (every activation after it is inf).
    broken = tmp / "broken"
    model = AutoModelForCausalLM.from_pretrained(llama)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    model.save_pretrained(broken)
    tiny_tokenizer.save_pretrained(broken)
    # A GPT-2 of another hidden size.
    wide = tmp / "gpt2-wide"
    config = GPT2Config(n_embd=48, n_layer=2, n_head=2, vocab_size=len(tiny_tokenizer), n_positions=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    tiny_tokenizer.save_pretrained(wide)
    return {"tmp": tmp, "data": data, "other": other, "llama": llama, "gpt2": tiny_model_dirs["gpt2"],
            "store": store, "vector": vector, "one_store": one_store, "old_store": old_store, "broken": broken,
            "gpt2_wide": wide, "novec": tmp / "novec.safetensors"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_gets_a_clear_message_naming_what_and_where(world, case, tmp_path):
    fill = {**world, "tmp": tmp_path}
    for name, content in case.files.items():
        path = Path(tmp_path) / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run(*[a.format(**{k: str(v) for k, v in fill.items()}) for a in case.args])
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    if case.exit_code == 1:  # actstore's own errors are ActstoreErrors, not crashes
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    for message in case.messages:
        assert message in result.output, result.output


def test_texts_longer_than_the_context_are_truncated_with_a_warning_not_refused(world, tmp_path):
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"positive": "word " * 400 + "yes", "negative": "word " * 400 + "no"}]))
    result = CliRunner().invoke(cli, ["capture", "-m", str(world["llama"]), "-d", str(long), "-l", "1",
                                      "-s", str(tmp_path / "long.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    assert "truncated to their last" in result.output

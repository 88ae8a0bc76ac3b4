"""Reading and steering other sites of a block: its attention output and its MLP output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tests.conftest import ARCHITECTURES

import actstore
from actstore.cli.main import cli
from actstore.errors import ActstoreError, ModelError, VectorError
from actstore.vectors.interop import write_gguf_control_vector
from actstore.models.load import load_model
from actstore.models.blocks import site_module
from actstore.steering import steer
from actstore.vectors.build import build_vector

MODULE_NAMES = {"attn": ("self_attn", "attn", "attention"), "mlp": ("mlp",)}


def _module(block, site):
    return next(getattr(block, n) for n in MODULE_NAMES[site] if hasattr(block, n))


def _hand_read(loaded, text: str, layer: int, site: str) -> np.ndarray:
    """The site's output at the last token, read by a hook written here on one unpadded text."""
    seen = {}

    def hook(module, args, output):
        seen["out"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = _module(loaded.blocks[layer], site).register_forward_hook(hook)
    try:
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loaded.model(input_ids=ids)
    finally:
        handle.remove()
    return seen["out"][0, -1].float().numpy()


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("site", ["attn", "mlp"])
def test_capture_reads_the_site_a_hand_written_hook_reads(tmp_path, tiny_model_dirs, pairs_file, arch, site):
    loaded = load_model(str(tiny_model_dirs[arch]))
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(loaded, pairs_file, path, layers="1,2", site=site, progress=False)
    ds = actstore.open_store(path)
    assert ds.attrs["site"] == site
    texts = [t for p in json.loads(pairs_file.read_text()) for t in (p["positive"], p["negative"])]
    for row in (0, 3, len(texts) - 1):
        text = texts[int(ds["text_index"].values[row])]
        np.testing.assert_allclose(ds.acts.sel(layer=2).values[row], _hand_read(loaded, text, 2, site),
                                   rtol=1e-4, atol=1e-5)
    # not the residual stream: the site is something else
    resid = tmp_path / "r.zarr"
    actstore.capture_to_store(loaded, pairs_file, resid, layers="2", progress=False)
    assert not np.allclose(actstore.open_store(resid).acts.values[:, 0], ds.acts.sel(layer=2).values)


def test_the_site_is_recorded_and_appends_must_match(tmp_path, tiny_model_dirs, pairs_file):
    model = str(tiny_model_dirs["llama"])
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(model, pairs_file, path, layers="1", site="mlp", progress=False)
    with pytest.raises(ActstoreError, match="site is 'mlp' there but 'attn' now"):
        actstore.capture_to_store(model, pairs_file, path, layers="1", site="attn", progress=False)
    vector = build_vector(path, 1, "enr", 4)
    assert vector.info.site == "mlp"
    with pytest.raises(VectorError, match="mlp site"):
        write_gguf_control_vector([vector], tmp_path / "c.gguf", "llama")
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0 and "site mlp" in result.output, result.output


@pytest.mark.parametrize("site", ["attn", "mlp"])
def test_steering_at_a_site_equals_a_hand_written_hook(tmp_path, tiny_model_dirs, pairs_file, site):
    loaded = load_model(str(tiny_model_dirs["gemma3_text"]))
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(loaded, pairs_file, path, layers="1", site=site, progress=False)
    vector = build_vector(path, 1, "enr", 6)
    ids = loaded.tokenizer(["I helped the old man.", "Hi"], return_tensors="pt", padding=True)
    alpha = 3.0
    with torch.no_grad(), steer(loaded, vector, alpha):
        ours = loaded.model(**ids).logits

    add = torch.from_numpy(vector.vector * alpha)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + add, *output[1:])
        return output + add

    handle = _module(loaded.blocks[1], site).register_forward_hook(hook)
    try:
        with torch.no_grad():
            theirs = loaded.model(**ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        unsteered = loaded.model(**ids).logits
    assert not torch.allclose(ours, unsteered)


def test_a_block_without_the_module_is_refused_with_its_parts_named():
    blocks = torch.nn.ModuleList([torch.nn.Sequential()])
    blocks[0].add_module("mixer", torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match=r"site='mlp'.*block 0 \(Sequential\).*its parts: mixer"):
        site_module(blocks, 0, "mlp")
    assert site_module(blocks, 0, "resid") is blocks[0]


def test_sweep_at_the_attention_site_replays_only_the_blocks_before(tmp_path, tiny_model_dirs, pairs_file):
    from tests.evaluation.test_sweep import ITEMS, TEXT, sweep

    loaded = load_model(str(tiny_model_dirs["llama"]))
    path = tmp_path / "s.zarr"
    actstore.capture_to_store(loaded, pairs_file, path, layers="0,2", site="attn", progress=False)
    ppl_ids = loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:96]
    args = dict(items=ITEMS[:6], layers=[0, 2], ks=[4], alphas=[4.0])
    replayed = sweep(loaded, path, tmp_path / "a", ppl_ids, **args)
    whole = sweep(loaded, path, tmp_path / "b", ppl_ids, replay=False, **args)
    np.testing.assert_allclose(replayed["on_target"], whole["on_target"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replayed["ppl"], whole["ppl"], rtol=1e-5)
    assert (replayed["on_target_shift"].abs() > 0).all()  # the attention vector does move something
    assert json.loads((tmp_path / "a" / "baseline.json").read_text())["settings"]["site"] == "attn"


def test_cli_capture_site(tmp_path, tiny_model_dirs, pairs_file):
    runner = CliRunner()
    store = str(tmp_path / "c.zarr")
    base = ["capture", "-q", "--model", str(tiny_model_dirs["gpt2"]), "--data", str(pairs_file), "--layers", "1",
            "--store", store]
    result = runner.invoke(cli, [*base, "--site", "attn"])
    assert result.exit_code == 0, result.output
    assert actstore.open_store(store).attrs["site"] == "attn"
    bad = runner.invoke(cli, [*base, "--site", "ffn"])
    assert bad.exit_code == 2 and "ffn" in bad.output

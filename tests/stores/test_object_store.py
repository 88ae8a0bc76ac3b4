"""Stores on object storage: fsspec URLs, against a real S3-protocol server on loopback.

The server is moto's, started in this process on 127.0.0.1 (a real HTTP S3
endpoint: s3fs talks to it over the socket, nothing is mocked client-side).
The client finds it through ``AWS_ENDPOINT_URL``, as a user points actstore at
MinIO or another S3-compatible service. The store contract (appends, refusals,
resume, cached statistics) runs on S3 and memory:// as on local disk in
test_store.py; here, the command line end to end against the server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import actstore
from actstore.vectors.vector import load_vector

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


def test_capture_stats_enr_on_s3_equal_a_local_store(run, tmp_path, s3_bucket, tiny_model_dirs, pairs_file):
    model = tiny_model_dirs["llama"]
    url = f"s3://{s3_bucket}/runs/acts.zarr"
    local = tmp_path / "acts.zarr"
    for store in (url, local):
        result = run("capture", "--model", model, "--data", pairs_file, "--layers", "1,3", "--store", store, "-q")
        assert result.exit_code == 0, result.output
        result = run("stats", "--store", store, "-q")
        assert result.exit_code == 0, result.output
    result = run("enr", "--store", url, "--layer", 3, "--k", 4, "--out", tmp_path / "s3.safetensors")
    assert result.exit_code == 0, result.output
    run("enr", "--store", local, "--layer", 3, "--k", 4, "--out", tmp_path / "local.safetensors")

    remote_ds, local_ds = actstore.open_store(url), actstore.open_store(local)
    np.testing.assert_array_equal(remote_ds.acts.values, local_ds.acts.values)
    for name in ("class", "pair_id", "text_hash", "token_index"):
        np.testing.assert_array_equal(remote_ds[name].values, local_ds[name].values)
    remote_stats, local_stats = actstore.open_stats(url), actstore.open_stats(local)
    np.testing.assert_array_equal(remote_stats["var"].values, local_stats["var"].values)
    a, b = load_vector(tmp_path / "s3.safetensors"), load_vector(tmp_path / "local.safetensors")
    np.testing.assert_array_equal(a.vector, b.vector)
    np.testing.assert_array_equal(a.indices, b.indices)

    import s3fs

    assert s3fs.S3FileSystem().exists(f"{s3_bucket}/runs/acts.zarr/zarr.json")  # really on the server
    info = json.loads(run("info", url, "--json").output)
    assert info["models"][0]["classes"] == {"neg": 7, "pos": 7}
    assert info["models"][0]["bytes_on_disk"] > 0 and info["models"][0]["has_stats"]


def test_an_unreachable_endpoint_is_named_as_such_with_nothing_after_the_error(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "PYTHONPATH": str(Path(actstore.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "actstore.cli.main", "info", "s3://bucket/acts.zarr"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: 's3://bucket/acts.zarr': cannot reach the object store"), proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_a_missing_store_on_a_reachable_server_is_not_a_store(run, s3_bucket):
    result = run("info", f"s3://{s3_bucket}/nothing-here.zarr")
    assert result.exit_code == 1
    assert "is not an actstore store (no zarr.json there)" in result.output, result.output


def test_an_s3_store_without_credentials_is_named_with_what_is_missing(run, tmp_path, monkeypatch):
    # botocore looked for credentials and found none: "unexpected NoCredentialsError" before (issue 31)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait on an instance-metadata endpoint
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    result = run("stats", "-s", "s3://some-bucket/acts.zarr")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    assert "'s3://some-bucket/acts.zarr': no credentials for the object store" in result.output, result.output
    assert "AWS_ACCESS_KEY_ID" in result.output

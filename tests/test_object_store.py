"""Stores on object storage: fsspec URLs, against a real S3-protocol server on loopback.

The server is moto's, started in this process on 127.0.0.1 (a real HTTP S3
endpoint: s3fs talks to it over the socket, nothing is mocked client-side).
The client finds it through ``AWS_ENDPOINT_URL``, as a user points actstore at
MinIO or another S3-compatible service.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import actstore
from actstore.cli.main import cli
from actstore.vectors import load_vector

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("ACTSTORE_CACHE", str(tmp_path / "cache"))  # lock files of URL stores
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a fresh client that reads the endpoint from the env
    name = f"acts-{tmp_path.name.lower().replace('_', '-')}"[:63]
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_capture_stats_enr_on_s3_equal_a_local_store(tmp_path, s3_bucket, tiny_model_dirs, pairs_file):
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


def test_resume_and_refusals_work_on_s3(tmp_path, s3_bucket, tiny_model_dirs, pairs_file):
    model = tiny_model_dirs["gpt2"]
    url = f"s3://{s3_bucket}/acts.zarr"
    assert run("capture", "--model", model, "--data", pairs_file, "--layers", "1", "--store", url, "-q").exit_code == 0
    again = run("capture", "--model", model, "--data", pairs_file, "--layers", "1", "--store", url, "-q")
    assert again.exit_code == 1 and "already holds a complete capture" in again.output
    other = run("capture", "--model", model, "--data", pairs_file, "--layers", "0", "--store", url, "-q")
    assert other.exit_code == 1 and "layers is [1] there but [0] now" in other.output
    missing = run("stats", "--store", f"s3://{s3_bucket}/nothing-here.zarr")
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_an_in_memory_fsspec_store(tiny_model_dirs, pairs_file):
    url = "memory://actstore-test/acts.zarr"
    actstore.capture_to_store(str(tiny_model_dirs["gpt_neox"]), pairs_file, url, "2", progress=False)
    stats = actstore.compute_stats(url)
    assert stats["count"].sel(layer=2).values.tolist() == [7, 7]
    vec = actstore.enr(url, 2, 4)
    assert np.count_nonzero(vec.vector) == 4

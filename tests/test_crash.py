"""A capture killed with SIGKILL at several points resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import actstore

CHILD = """
import sys, actstore
actstore.capture_to_store(sys.argv[1], sys.argv[2], sys.argv[3], "1,3", window=8, batch_size=2,
                          resume=True, progress=False)
"""


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory, tiny_tokenizer):
    """A random Llama big enough that a capture takes seconds, not milliseconds."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(7)
    config = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=1024, vocab_size=len(tiny_tokenizer), max_position_embeddings=384,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    folder = tmp_path_factory.mktemp("slow") / "slow-llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def committed(store) -> int:
    try:
        return int(zarr.open_group(store, mode="r")["slow-llama"].attrs["n_samples"])
    except Exception:  # not created yet
        return 0


def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path, slow_model, shared_data):
    pairs = json.loads((shared_data / "caa-pairs" / "sycophancy" / "train.json").read_text())[:40]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    reference = tmp_path / "reference.zarr"
    actstore.capture_to_store(str(slow_model), data, reference, "1,3", window=8, batch_size=2, progress=False)
    want = actstore.open_store(reference)

    store = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    for threshold in (1, 24, 48):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(slow_model), str(data), str(store)], env=env)
        deadline = time.monotonic() + 120
        while child.poll() is None and committed(store) < threshold and time.monotonic() < deadline:
            time.sleep(0.01)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.wait()
        # Readable right after the kill, and what it shows is a prefix of the uninterrupted capture.
        if (store / "zarr.json").exists() and committed(store):
            got = actstore.open_store(store)
            n = got.sizes["sample"]
            np.testing.assert_array_equal(got.acts.values, want.acts.values[:n])
            assert got["text_hash"].values.tolist() == want["text_hash"].values[:n].tolist()
    print(f"kills survived: {kills}")
    assert kills >= 2, "the capture finished before it could be killed: make it slower"
    result = subprocess.run([sys.executable, "-c", CHILD, str(slow_model), str(data), str(store)], env=env)
    assert result.returncode == 0
    got = actstore.open_store(store)
    np.testing.assert_array_equal(got.acts.values, want.acts.values)
    for name in ("class", "pair_id", "text_hash", "text_index", "token_index"):
        assert got[name].values.tolist() == want[name].values.tolist()
    runs = zarr.open_group(store, mode="r")["slow-llama"].attrs["runs"]
    assert len(runs) == 1 and runs[0]["complete"]

    # A statistics pass killed part-way leaves no stale or partial cache behind.
    stats_child = subprocess.Popen([sys.executable, "-c", f"import actstore; actstore.compute_stats({str(store)!r})"],
                                   env=env)
    time.sleep(1.5)
    if stats_child.poll() is None:
        os.kill(stats_child.pid, signal.SIGKILL)
    stats_child.wait()
    stats = actstore.compute_stats(store)
    expected = actstore.compute_stats(reference)
    np.testing.assert_allclose(stats["mean"].values, expected["mean"].values, rtol=1e-12)
    np.testing.assert_allclose(stats["var"].values, expected["var"].values, rtol=1e-12)

"""--store-dtype bfloat16: uint16 bits on disk, float32 from open_store, float32's range kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

import actstore
from actstore.errors import StoreError
from actstore.stores.schema import CaptureSpec, bfloat16_bits, bfloat16_values
from actstore.stores.writer import ActivationWriter

MASSIVE = np.array([7.1e5, -3.3e4, 65504.0, 65520.0, 1.0e30, -2.5e-3, 1.7, 0.0], dtype=np.float32)


def test_bfloat16_bits_round_to_nearest_even_as_torch_does():
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.integers(-6, 6, 10000)
    values = np.concatenate([MASSIVE, (rng.standard_normal(10000) * scales).astype(np.float32)])
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bfloat16_bits(values), want)
    back = bfloat16_values(bfloat16_bits(values))
    np.testing.assert_allclose(back, values, rtol=2.0**-8, atol=0)


def write_rows(store, dtype, acts):
    spec = CaptureSpec(model_id="m", model_fingerprint="f", model_type=None, hidden_size=acts.shape[2],
                       layers=[0, 1], position="all", dtype=dtype)
    n = len(acts)
    coords = {"class": np.array(["pos"] * n), "pair_id": np.arange(n), "text_hash": np.array(["0" * 16] * n),
              "text_index": np.arange(n), "token_index": np.zeros(n, dtype=np.int64)}
    with ActivationWriter.open(store, "g", spec) as writer:
        writer.begin_run("x", "0" * 64, n, False, {})
        writer.append(acts, coords, n, n - 1)


def test_massive_coordinates_round_trip_in_bfloat16_and_are_refused_in_float16(tmp_path):
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((40, 2, 16)).astype(np.float32)
    acts[:, :, 3] = MASSIVE[rng.integers(0, len(MASSIVE), (40, 2))]  # a massive coordinate, as gemma has
    write_rows(tmp_path / "b.zarr", "bfloat16", acts)
    raw = zarr.open_group(tmp_path / "b.zarr", mode="r")["g"]["acts"]
    assert raw.dtype == np.uint16 and raw.attrs["actstore_dtype"] == "bfloat16"
    ds = actstore.open_store(tmp_path / "b.zarr")
    assert ds.acts.dtype == np.float32 and ds.attrs["dtype"] == "bfloat16"
    got = ds.acts.values
    np.testing.assert_array_equal(got, bfloat16_values(bfloat16_bits(acts)))
    np.testing.assert_allclose(got, acts, rtol=2.0**-8, atol=0)
    assert np.abs(got[:, :, 3]).max() == pytest.approx(1.0e30, rel=2.0**-8)
    stats = actstore.compute_stats(tmp_path / "b.zarr")
    # The statistics see the decoded values (not their uint16 bits).
    np.testing.assert_allclose(stats["mean"].values[0], got.astype(np.float64).mean(0), rtol=1e-9)
    with pytest.raises(StoreError, match="float16 range"):
        write_rows(tmp_path / "h.zarr", "float16", acts)


def test_a_bfloat16_capture_reads_back_as_the_float32_capture_rounded(tmp_path, tiny_model_dirs, pairs_file):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    full, half = tmp_path / "f.zarr", tmp_path / "b.zarr"
    actstore.capture_to_store(model, pairs_file, full, layers="1,3", position="all", window=3, progress=False)
    actstore.capture_to_store(model, pairs_file, half, layers="1,3", position="all", window=3, store_dtype="bfloat16",
                              progress=False)
    want = actstore.open_store(full).acts.values
    np.testing.assert_array_equal(actstore.open_store(half).acts.values, bfloat16_values(bfloat16_bits(want)))
    info = actstore.store_info(half)["models"][0]
    assert info.get("dtype", "bfloat16") == "bfloat16"
    with pytest.raises(StoreError, match="dtype"):  # one dtype per group
        actstore.capture_to_store(model, pairs_file, half, layers="1,3", position="all", progress=False)


def test_sharded_bfloat16_captures_merge_their_bits_unchanged(tmp_path, tiny_model_dirs, pairs_file):
    model = actstore.load_model(str(tiny_model_dirs["llama"]))
    one, sharded = tmp_path / "one.zarr", tmp_path / "sharded.zarr"
    actstore.capture_to_store(model, pairs_file, one, layers="1", position="last", window=2, store_dtype="bfloat16",
                              progress=False)
    for index in range(2):
        actstore.capture_to_store(model, pairs_file, sharded, layers="1", position="last", window=2,
                                  store_dtype="bfloat16", shard=(index, 2), progress=False)
    np.testing.assert_allclose(actstore.open_store(sharded).acts.values, actstore.open_store(one).acts.values,
                               rtol=2.0**-7)
    assert np.abs(actstore.open_store(sharded).acts.values).max() < 1e4  # decoded once, not twice


@pytest.mark.slow
def test_real_gemma_massive_coordinates_survive_bfloat16(tmp_path, shared_data):
    from actstore.models.embedded import prepare_demo_model

    pairs = json.loads((shared_data / "caa-pairs" / "refusal" / "train.json").read_text())[:2]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    model = actstore.load_model(str(prepare_demo_model()))
    full, half = tmp_path / "f.zarr", tmp_path / "b.zarr"
    actstore.capture_to_store(model, data, full, layers="all", position="all", progress=False)
    actstore.capture_to_store(model, data, half, layers="all", position="all", store_dtype="bfloat16", progress=False)
    want, got = actstore.open_store(full).acts.values, actstore.open_store(half).acts.values
    assert np.abs(want).max() > 1e4  # gemma's massive coordinates (44,277 here with transformers 5.24)
    np.testing.assert_allclose(got, want, rtol=2.0**-8, atol=0)
    if np.abs(want).max() > 65504:  # beyond float16: refused, never stored as inf
        with pytest.raises(StoreError, match="float16 range"):
            actstore.capture_to_store(model, data, tmp_path / "h.zarr", layers="all", position="all",
                                      store_dtype="float16", progress=False)
    else:  # within float16: stored to float16's precision
        actstore.capture_to_store(model, data, tmp_path / "h.zarr", layers="all", position="all",
                                  store_dtype="float16", progress=False)
        np.testing.assert_allclose(actstore.open_store(tmp_path / "h.zarr").acts.values, want, rtol=2.0**-10,
                                   atol=2.0**-14)


def test_a_missing_bfloat16_chunk_reads_as_nan_and_is_refused(tmp_path):
    from actstore.errors import DamagedStoreError
    from actstore.stores.verify import verify_store

    acts = np.random.default_rng(2).standard_normal((40, 2, 16)).astype(np.float32)
    store = tmp_path / "b.zarr"
    write_rows(store, "bfloat16", acts)
    assert zarr.open_group(store, mode="r")["g"]["acts"].fill_value == 0x7FC0  # bfloat16 NaN bits
    (store / "g" / "acts" / "c" / "0" / "1" / "0").unlink()
    with pytest.raises(DamagedStoreError, match="'g/acts' chunk c/0/1/0: missing"):  # not zeros that pass as data
        actstore.open_store(store).acts.sel(layer=1).compute()  # nor NaN for the caller to find (issue 31)
    assert not np.isnan(actstore.open_store(store).acts.sel(layer=0).values).any()
    with pytest.raises(DamagedStoreError, match="'g/acts' chunk c/0/1/0: missing"):
        actstore.compute_stats(store, force=True)
    (report,) = verify_store(store)
    assert [(d.key, d.problem) for d in report.damaged] == [("c/0/1/0", "missing")]

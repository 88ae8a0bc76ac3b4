"""The direct chunk reader (actstore.stores.chunks) against zarr's own reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from actstore.stores import schema
from actstore.stores.chunks import ChunkScratch, LocalChunks, dask_array, local_chunks


def _array(tmp_path, codec: str, shape=(1000, 3, 16), chunks=(256, 1, 16), dtype="float32", **kw):
    root = zarr.open_group(str(tmp_path / f"{codec}.zarr"), mode="w")
    arr = root.create_array("acts", shape=shape, chunks=chunks, dtype=dtype,
                            fill_value=np.nan if dtype[0] == "f" else 0, compressors=schema.compressors(codec), **kw)
    values = np.random.default_rng(0).standard_normal(shape).astype(dtype) if dtype[0] == "f" else \
        np.random.default_rng(0).integers(0, 60000, shape).astype(dtype)
    arr[...] = values
    return arr, values


@pytest.mark.parametrize("codec", schema.CODECS)
def test_reads_what_zarr_reads_for_every_codec(tmp_path, codec):
    arr, values = _array(tmp_path, codec)
    files = local_chunks(arr)
    assert isinstance(files, LocalChunks)
    assert files.checksum
    # whole, cut at both ends of a chunk, across chunks and layers, the padded edge chunk
    for index in [(slice(0, 1000), slice(0, 3), slice(0, 16)), (slice(10, 20), slice(1, 2), slice(3, 9)),
                  (slice(200, 700), slice(0, 3), slice(0, 16)), (slice(768, 1000), slice(2, 3), slice(0, 16))]:
        np.testing.assert_array_equal(files[index], values[index])
    x = dask_array(arr)
    assert x.chunks[0][0] == 256  # one chunk per task on the direct path
    np.testing.assert_array_equal(x.compute(), values)
    np.testing.assert_array_equal(x[:777].compute(), values[:777])


@pytest.mark.parametrize("codec", schema.CODECS)
def test_reads_into_reused_buffers_what_zarr_reads(tmp_path, codec):
    """One ChunkScratch through chunks of every size, whole and cut, across chunks (the
    statistics pass reads a row block's chunks through one), then a smaller chunk after a larger one."""
    arr, values = _array(tmp_path, codec, chunks=(256, 2, 16))
    files, scratch = local_chunks(arr), ChunkScratch()
    for index in [(slice(0, 256), slice(0, 2), slice(0, 16)), (slice(768, 1000), slice(2, 3), slice(0, 16)),
                  (slice(10, 20), slice(1, 2), slice(3, 9)), (slice(200, 700), slice(0, 3), slice(0, 16)),
                  (slice(0, 256), slice(0, 2), slice(0, 16))]:
        got = files.read(index, scratch)
        np.testing.assert_array_equal(got, values[index])
        np.testing.assert_array_equal(files[index], values[index])


@pytest.mark.parametrize("codec", schema.CODECS)
def test_reads_variable_length_strings_as_zarr_does(tmp_path, codec):
    """A class-label array (zarr's vlen-utf8, then the codec, then the CRC32C): whole, cut,
    across chunks and the padded edge chunk, as objects; a missing chunk reads as the fill value."""
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    labels = np.array(["pos", "neg", "", "a much longer label", "é"] * 41)[:203]
    arr = root.create_array("class", shape=labels.shape, chunks=(16,), dtype=str, fill_value="",
                            compressors=schema.compressors(codec))
    arr[:] = labels
    assert local_chunks(arr) is None  # not a numeric array: only when asked for strings
    files = local_chunks(arr, strings=True)
    assert files.strings and files.checksum
    for lo, hi in [(0, 203), (3, 9), (10, 40), (192, 203), (200, 203)]:
        got = files[(slice(lo, hi),)]
        assert got.dtype == object
        assert got.tolist() == labels[lo:hi].tolist()
    (tmp_path / "s.zarr" / "class" / "c" / "1").unlink()
    assert files[(slice(0, 40),)].tolist() == labels[:16].tolist() + [""] * 16 + labels[32:40].tolist()


def test_uint16_bits_read_exactly(tmp_path):  # bfloat16 stores keep their bits as uint16
    arr, values = _array(tmp_path, "lz4", dtype="uint16")
    np.testing.assert_array_equal(dask_array(arr).compute(), values)


def test_missing_chunk_reads_as_the_fill_value(tmp_path):
    arr, values = _array(tmp_path, "none")
    files = local_chunks(arr)
    (tmp_path / "none.zarr" / "acts" / "c" / "1" / "2" / "0").unlink()
    got = files[(slice(0, 1000), slice(0, 3), slice(0, 16))]
    assert np.isnan(got[256:512, 2]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(arr[...]))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_a_flipped_byte_fails_the_checksum(tmp_path, codec):
    arr, _ = _array(tmp_path, codec)
    path = tmp_path / f"{codec}.zarr" / "acts" / "c" / "0" / "1" / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        dask_array(arr).compute()
    # the other chunks still read
    np.testing.assert_array_equal(local_chunks(arr)[(slice(0, 256), slice(0, 1), slice(0, 16))],
                                  arr[0:256, 0:1, :])


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("scratch", [None, ChunkScratch])
def test_a_truncated_chunk_is_refused(tmp_path, codec, scratch):
    arr, _ = _array(tmp_path, codec)
    path = tmp_path / f"{codec}.zarr" / "acts" / "c" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="checksum"):
        local_chunks(arr).read_chunk((0, 0, 0), scratch and scratch())


def test_layouts_it_does_not_read_go_through_zarr(tmp_path):
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    arr = memory.create_array("acts", shape=(10, 4), chunks=(5, 4), dtype="float32",
                              compressors=schema.compressors("none"))
    assert local_chunks(arr) is None
    sharded, values = _array(tmp_path, "none", shards=(512, 1, 16))
    assert local_chunks(sharded) is None
    np.testing.assert_array_equal(dask_array(sharded).compute(), values)
    big_endian = zarr.open_group(str(tmp_path / "be.zarr"), mode="w").create_array(
        "acts", shape=(10, 4), chunks=(5, 4), dtype=">f4", serializer=zarr.codecs.BytesCodec(endian="big"))
    assert local_chunks(big_endian) is None


def test_old_store_without_checksum_reads(tmp_path):
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    arr = root.create_array("acts", shape=(300, 2, 8), chunks=(128, 1, 8), dtype="float32", fill_value=0.0,
                            compressors=schema.compressors("lz4")[:-1])
    values = np.arange(300 * 16, dtype="float32").reshape(300, 2, 8)
    arr[...] = values
    files = local_chunks(arr)
    assert files is not None and not files.checksum
    np.testing.assert_array_equal(dask_array(arr).compute(), values)


@pytest.mark.parametrize("tasks", [1, 32])  # all layers of a row block per task; layers split in groups
@pytest.mark.parametrize("n", [1000, 777, 256])
def test_chunk_moments_match_two_pass_per_class(tmp_path, monkeypatch, n, tasks):
    """The fused statistics pass (read + verify + reduce in one task per chunk file) gives the two-pass
    per-class moments of the first ``n`` rows, over chunks cut in every dimension."""
    import dask

    from actstore.stats import streaming as stats
    from actstore.stats.streaming import chunk_moments, class_moments

    monkeypatch.setattr(stats, "TASKS", tasks)
    arr, values = _array(tmp_path, "lz4", shape=(1000, 3, 10), chunks=(96, 2, 4))
    values = values[:n].astype(np.float64)  # the rows the pass reads
    codes = np.random.default_rng(1).integers(0, 3, n)
    codes[:5] = [2, 2, 0, 2, 1]  # every class present; the first block's first rows mixed
    lazy = chunk_moments(local_chunks(arr), n, codes, 3, split_every=3)
    states = [k for k in dict(lazy.__dask_graph__()) if str(k[0]).startswith("welford-chan-states")]
    row_blocks = -(-n // 96)
    assert len(states) == (row_blocks if tasks == 1 else row_blocks * min(2, -(-tasks // row_blocks)))
    (got,) = dask.compute(lazy)
    for c in range(3):
        rows = values[codes == c]
        assert got[0, c].min() == got[0, c].max() == len(rows)
        np.testing.assert_allclose(got[1, c], rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[2, c], ((rows - rows.mean(0)) ** 2).sum(0), rtol=1e-10)
    # the same numbers as the generic pass over a dask array (other blocks, other merges)
    generic = class_moments(dask_array(arr)[:n], codes, 3).compute()
    np.testing.assert_allclose(got, generic, rtol=1e-10, atol=1e-12)


def test_chunk_moments_name_a_damaged_chunk(tmp_path):
    import dask

    from actstore.stats.streaming import chunk_moments

    arr, _ = _array(tmp_path, "none")
    path = tmp_path / "none.zarr" / "acts" / "c" / "2" / "1" / "0"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum.*c/2/1/0"):
        dask.compute(chunk_moments(local_chunks(arr), 1000, np.zeros(1000, dtype=int), 1))


def test_zarr_reads_switch_turns_the_direct_reader_off(tmp_path, monkeypatch):
    from actstore.stores.chunks import ZARR_READS

    arr, values = _array(tmp_path, "none")
    monkeypatch.setenv(ZARR_READS, "1")
    assert local_chunks(arr) is None
    np.testing.assert_array_equal(dask_array(arr).compute(), values)  # through zarr, the same values
    monkeypatch.setenv(ZARR_READS, "0")
    assert local_chunks(arr) is not None


def _files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("codec", schema.CODECS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16"])
def test_writes_the_bytes_zarr_writes(tmp_path, codec, dtype):
    """Appends of uneven windows (chunks filled in part, then again; an edge chunk; a chunk of fill
    values) leave the same chunk files, byte for byte, whether zarr or LocalChunks writes them."""
    rng = np.random.default_rng(1)
    fill = np.nan if dtype[0] == "f" else 7
    values = rng.standard_normal((1000, 3, 16)).astype(dtype) if dtype[0] == "f" else \
        rng.integers(0, 60000, (1000, 3, 16)).astype(dtype)
    values[256:512, 1] = fill  # a whole chunk of fill values: deleted, not written
    bounds = [0, 100, 256, 300, 700, 701, 1000]
    stores = {}
    for route in ("zarr", "direct"):
        root = zarr.open_group(str(tmp_path / f"{route}.zarr"), mode="w")
        arr = root.create_array("acts", shape=(0, 3, 16), chunks=(256, 1, 16), dtype=dtype, fill_value=fill,
                                compressors=schema.compressors(codec))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            arr.resize((hi, 3, 16))
            if route == "zarr":
                arr[lo:hi] = values[lo:hi]
            else:
                files = local_chunks(arr)
                assert files is not None and (files.compressor_config == ()) == (codec == "none")
                files.write_rows(arr, lo, values[lo:hi])
        np.testing.assert_array_equal(arr[...], values)
        stores[route] = _files(tmp_path / f"{route}.zarr" / "acts" / "c")
    assert "1/1/0" not in stores["direct"]
    assert len(stores["zarr"]) == 4 * 3 - 1
    assert stores["direct"] == stores["zarr"]


def test_write_rows_refuses_rows_outside_the_shape(tmp_path):
    arr, values = _array(tmp_path, "lz4")
    with pytest.raises(ValueError, match="do not fit"):
        local_chunks(arr).write_rows(arr, 900, values[:200])

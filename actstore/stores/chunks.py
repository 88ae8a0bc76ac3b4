"""Reading ``acts`` chunks from a local store's files inside each Dask task, and writing them.

zarr-python decodes every chunk through its asynchronous codec pipeline; on this project's
2-core machine that pipeline, not the bytes, set the speed of a statistics pass (issue 21:
0.9-1.1 GB/s through zarr against 1.6-1.9 GB/s reading the same LZ4 chunks here, and 3.1-3.5
against 1.3-1.9 GB/s for uncompressed ones; benchmarks/RESULTS.md). For the layout actstore
writes (a regular chunk grid, little-endian ``bytes``, then Blosc or Zstd or nothing, then the
CRC32C last) on a :class:`zarr.storage.LocalStore`, :class:`LocalChunks` reads a chunk's file,
verifies its CRC32C, decodes it with numcodecs (the codecs zarr itself calls) and returns the
array; everything else (object stores, sharding, other codecs) goes through zarr as before.

The checksum is always verified: a mismatch raises :class:`ValueError` saying "checksum", as
zarr's own codec does, so :func:`.integrity.damage_located` names the chunk the same way. A chunk
file that does not exist reads as the array's fill value, as in zarr (NaN for ``acts``: damage).

Writes take the same shortcut (:meth:`LocalChunks.write_rows`, used by the store writer): each chunk
is assembled once, encoded with the numcodecs codec zarr's own codec calls (the same parameters, so
the same bytes: tested against zarr), its CRC32C appended, and handed to the store's ``set`` (zarr's
LocalStore writes it to a temporary name and renames it into place: one chunk is all or nothing).
What zarr's pipeline costs around that on 2 cores (copies, a pass comparing every chunk with the
fill value, its event loop), and re-reading a partly filled chunk, made a ``--position all`` capture
of gemma-3-270m spend as long writing as the work itself (issue 21).

``ACTSTORE_ZARR_READS=1`` in the environment sends every read and write of chunks through zarr's
pipeline instead (to compare the two, as ``benchmarks/bench_read_path.py`` does, or to rule this
module out).
"""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ZARR_READS = "ACTSTORE_ZARR_READS"  # "1": chunks read and written through zarr's pipeline only


def open_regular(path: str):
    """``path`` opened for reading if it is a regular file; anything else in a chunk's place (a FIFO
    would block the read for ever, a device or a folder) is refused as damage (ValueError). Opened
    without blocking, then checked, then read normally."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"chunk file {path} is not a regular file (a FIFO, a device or a folder)")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def refuse_irregular_files(array) -> None:
    """Refuse (ValueError, naming the file) anything but regular files and folders in a local array's
    chunk folder: zarr opens a FIFO there and blocks for ever. A walk of directory entries (no file is
    opened); arrays of other stores pass."""
    root = getattr(array.store, "root", None)
    if root is None:
        return
    stack = [os.path.join(root, *array.path.split("/"))]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                stack.append(entry.path)
            elif not entry.is_file():
                raise ValueError(f"chunk file {entry.path} is not a regular file (a FIFO, a device or a socket)")


def _crc32c(data) -> bytes:
    """The CRC32C of ``data`` as zarr's ``crc32c`` codec stores it after the chunk: 4 bytes, little-endian."""
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


class ChunkScratch:
    """Two byte buffers that chunk reads go into, grown as needed and reused: a pass that is
    done with each chunk before it reads the next (the statistics) then allocates nothing per
    chunk. A fresh multi-MB buffer per chunk costs its page faults on every read, and glibc
    keeps the freed ones in per-thread arenas, so peak memory grew with the chunks read."""

    def __init__(self):
        self._stored = np.empty(0, dtype=np.uint8)
        self._decoded = np.empty(0, dtype=np.uint8)

    def read(self, f) -> np.ndarray:
        """The whole of the open file ``f``, as a view of the stored-bytes buffer."""
        size = os.fstat(f.fileno()).st_size
        if self._stored.size < size:
            self._stored = np.empty(size, dtype=np.uint8)
        view = self._stored[:size]
        got = f.readinto(memoryview(view))
        return view[:got]

    def decoded(self, nbytes: int) -> np.ndarray:
        """A buffer of ``nbytes`` for a codec to decode into."""
        if self._decoded.size < nbytes:
            self._decoded = np.empty(nbytes, dtype=np.uint8)
        return self._decoded[:nbytes]


@dataclass(frozen=True)
class LocalChunks:
    """The chunk files of one array of a local store, read like a numpy array (for :func:`dask.array.from_array`).

    ``folder``: the array's folder; ``keys``: the chunk key separator (``/`` or ``.``) and prefix;
    ``compressor``: ``None``, ``"blosc"`` or ``"zstd"``; ``checksum``: whether a CRC32C ends each chunk;
    ``compressor_config``: the compressor's numcodecs configuration (what it writes with).
    """

    folder: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: object
    prefix: str
    separator: str
    compressor: str | None
    checksum: bool
    compressor_config: tuple[tuple[str, object], ...] = ()
    strings: bool = False  # variable-length UTF-8 strings (zarr's vlen-utf8), read as an object array

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        key = self.prefix + self.separator.join(str(c) for c in coords)
        return os.path.join(self.folder, *key.split("/"))

    def read_chunk(self, coords: tuple[int, ...], scratch: ChunkScratch | None = None) -> np.ndarray:
        """Chunk ``coords`` as stored (full chunk shape; edge chunks are padded on disk).

        ``scratch``: buffers to read (and decode) into, kept by a caller that is done with each
        chunk before it reads the next; the chunk returned is then a view of them. Without it,
        each read allocates its chunk anew (a caller that keeps the chunks, as a dask array does).
        """
        path = self.chunk_path(coords)
        try:
            with open_regular(path) as f:
                if scratch is None:
                    raw = np.frombuffer(f.read(), dtype=np.uint8)
                else:
                    raw = scratch.read(f)
        except FileNotFoundError:
            return np.full(self.chunks, self.fill_value, dtype=self.dtype)
        if self.checksum:
            raw, stored = raw[:-4], bytes(raw[-4:])
            if len(stored) != 4 or _crc32c(raw) != stored:
                raise ValueError(f"Stored and computed checksum do not match (chunk file {path})")
        if self.strings:
            return self._strings(raw, path)
        expected = int(np.prod(self.chunks)) * self.dtype.itemsize
        if self._encoder is not None:  # the numcodecs codec the chunks are written with
            out = None if scratch is None else scratch.decoded(expected)
            raw = np.frombuffer(self._encoder.decode(raw, out=out), dtype=np.uint8)
        if raw.size != expected:
            raise ValueError(f"chunk file {path} decodes to {raw.size} bytes, expected {expected}")
        return raw.view(self.dtype).reshape(self.chunks)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return self.read(index)

    def read(self, index: tuple[slice, ...], scratch: ChunkScratch | None = None) -> np.ndarray:
        """``self[index]``; with ``scratch`` (see :meth:`read_chunk`), a view of it where ``index``
        lies in one chunk, so valid only until the next read with the same ``scratch``."""
        index = tuple(index) + (slice(None),) * (self.ndim - len(tuple(index)))
        bounds = [s.indices(n)[:2] for s, n in zip(index, self.shape)]
        if any(s.step not in (None, 1) for s in index):
            raise IndexError("LocalChunks reads unit-step slices only")
        ranges = [range(lo // c, -(-hi // c)) if hi > lo else range(0) for (lo, hi), c in zip(bounds, self.chunks)]
        out_shape = tuple(max(hi - lo, 0) for lo, hi in bounds)
        spans = [list(r) for r in ranges]
        if all(len(r) == 1 for r in spans):  # the common case: one chunk, maybe cut; no copy when whole
            coords = tuple(r[0] for r in spans)
            chunk = self.read_chunk(coords, scratch)
            return chunk[tuple(slice(lo - c * i, hi - c * i) for (lo, hi), c, i in zip(bounds, self.chunks, coords))]
        out = np.empty(out_shape, dtype=self.dtype)
        for coords in itertools.product(*spans):
            chunk = self.read_chunk(coords, scratch)
            src, dst = [], []
            for (lo, hi), c, i in zip(bounds, self.chunks, coords):
                start, stop = max(lo, c * i), min(hi, c * (i + 1))
                src.append(slice(start - c * i, stop - c * i))
                dst.append(slice(start - lo, stop - lo))
            out[tuple(dst)] = chunk[tuple(src)]
        return out

    def _strings(self, raw: np.ndarray, path: str) -> np.ndarray:
        """A checked chunk of variable-length strings decoded, with the numcodecs codecs zarr's
        own ``zstd``/``blosc`` and ``vlen-utf8`` codecs call."""
        from numcodecs import VLenUTF8

        if self._encoder is not None:
            raw = self._encoder.decode(raw)
        items = VLenUTF8().decode(raw)
        if items.size != int(np.prod(self.chunks)):
            raise ValueError(f"chunk file {path} decodes to {items.size} strings, expected {int(np.prod(self.chunks))}")
        return items.reshape(self.chunks)

    @cached_property
    def _encoder(self):
        from numcodecs import get_codec

        return get_codec(dict(self.compressor_config)) if self.compressor else None

    def _blank(self) -> tuple[np.ndarray, np.ndarray]:
        """A chunk to fill, and the bytes it is stored as when nothing compresses it: with room for
        the CRC32C after it (no copy to append it)."""
        nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        stored = np.empty(nbytes + 4 * (self.checksum and self._encoder is None), dtype=np.uint8)
        return stored[:nbytes].view(self.dtype).reshape(self.chunks), stored

    def encode(self, chunk: np.ndarray, stored: np.ndarray | None = None):
        """The stored bytes of a whole chunk: raw little-endian bytes, compressed as zarr's codec
        compresses them (the same numcodecs call with the same parameters), then the CRC32C.
        ``stored``: the chunk's buffer from :meth:`_blank`, written in place when nothing compresses."""
        if self._encoder is not None:
            encoded = self._encoder.encode(np.ascontiguousarray(chunk, dtype=self.dtype))
            return b"".join((encoded, _crc32c(encoded))) if self.checksum else encoded
        if stored is None:
            blank, stored = self._blank()
            blank[...] = chunk
        if self.checksum:
            stored[-4:] = np.frombuffer(_crc32c(stored[:-4]), dtype=np.uint8)
        return stored

    def write_rows(self, array, start: int, values: np.ndarray) -> None:
        """``array[start:start + len(values)] = values`` for the zarr ``array`` these are the files of
        (its shape already holding those rows, every axis but the first written whole), as zarr writes
        it: a chunk the rows fill within the array's shape is made from them and the fill value; one
        they fill in part is read (checksum verified), updated and written again; a chunk equal to
        the fill value is deleted instead (zarr's ``write_empty_chunks=False``). Each chunk goes
        through the store's ``set``/``delete``, the chunks of one span of rows together."""
        stop = start + values.shape[0]
        if values.shape[1:] != self.shape[1:] or stop > self.shape[0]:
            raise ValueError(f"rows {start}..{stop} of shape {values.shape[1:]} do not fit {self.shape}")
        rows = self.chunks[0]
        keep_empty = _array_config(array).write_empty_chunks
        grid = list(itertools.product(*(range(-(-n // c)) for n, c in zip(self.shape[1:], self.chunks[1:]))))
        for row_chunk in range(start // rows, -(-stop // rows) if stop > start else 0):
            lo, hi = row_chunk * rows, (row_chunk + 1) * rows
            first, last = max(start, lo), min(stop, hi)
            complete = first == lo and last == min(hi, self.shape[0])
            writes = []
            for rest in grid:
                coords = (row_chunk, *rest)
                inner = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(rest, self.chunks[1:], self.shape[1:]))
                inner_shape = tuple(s.stop - s.start for s in inner)
                stored = None
                if complete:
                    chunk, stored = self._blank()
                    if inner_shape != self.chunks[1:]:
                        chunk[...] = self.fill_value
                    else:
                        chunk[last - lo:] = self.fill_value
                else:
                    chunk = np.array(self.read_chunk(coords))  # a writable copy
                chunk[(slice(first - lo, last - lo), *(slice(0, n) for n in inner_shape))] = \
                    values[(slice(first - start, last - start), *inner)]
                empty = not keep_empty and self._is_fill(chunk)
                writes.append((coords, None if empty else self.encode(chunk, stored)))
            self._store(array, writes)

    def _store(self, array, writes: list) -> None:
        """Each ``(coords, stored bytes)`` through the store's ``set`` (``delete`` for None), at once."""
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        store, buffer = array.store, default_buffer_prototype().buffer

        def key(coords):
            return f"{array.path}/{self.prefix}{self.separator.join(map(str, coords))}"

        async def put():
            await asyncio.gather(*(store.delete(key(coords)) if data is None else
                                   store.set(key(coords), buffer.from_array_like(np.frombuffer(data, np.uint8)))
                                   for coords, data in writes))

        sync(put())

    def _is_fill(self, chunk: np.ndarray) -> bool:
        first = chunk.flat[0]
        if self.dtype.kind == "f" and np.isnan(self.fill_value):
            return bool(np.isnan(first)) and bool(np.isnan(chunk).all())
        return bool(first == self.fill_value) and bool((chunk == self.fill_value).all())


def local_chunks(array, strings: bool = False) -> LocalChunks | None:
    """A :class:`LocalChunks` for zarr ``array`` when its layout is one this module reads, else None.
    ``strings``: read a variable-length string array (zarr's ``vlen-utf8`` first), as objects."""
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, VLenUTF8Codec, ZstdCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding
    from zarr.storage import LocalStore

    if os.environ.get(ZARR_READS) == "1":
        return None
    meta = array.metadata
    if not isinstance(array.store, LocalStore) or getattr(meta, "zarr_format", None) != 3:
        return None
    if not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    codecs = list(meta.codecs)
    if strings:
        if not codecs or not isinstance(codecs[0], VLenUTF8Codec):
            return None
        dtype = np.dtype(object)
    else:
        if not codecs or not isinstance(codecs[0], BytesCodec):
            return None
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "fiu" or dtype.itemsize > 1 and (codecs[0].endian is None or
                                                              codecs[0].endian.value != "little"):
            return None
    checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    middle = codecs[1:-1] if checksum else codecs[1:]
    if len(middle) > 1:
        return None
    compressor, config = None, ()
    if middle:
        codec = middle[0]
        if isinstance(codec, BloscCodec) and codec.typesize is not None:
            # what zarr's BloscCodec hands numcodecs (typesize too, numcodecs >= 0.16)
            compressor = "blosc"
            config = (("id", "blosc"), ("cname", codec.cname.value), ("clevel", codec.clevel),
                      ("shuffle", {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]),
                      ("blocksize", codec.blocksize), ("typesize", codec.typesize))
        elif isinstance(codec, ZstdCodec) and not codec.checksum:
            compressor, config = "zstd", (("id", "zstd"), ("level", codec.level), ("checksum", False))
        else:
            return None
    encoding = meta.chunk_key_encoding
    if isinstance(encoding, DefaultChunkKeyEncoding):
        prefix, separator = "c" + encoding.separator, encoding.separator
    elif isinstance(encoding, V2ChunkKeyEncoding):
        prefix, separator = "", encoding.separator
    else:
        return None
    probe = (3,) + (0,) * (array.ndim - 1)
    if array.ndim and meta.encode_chunk_key(probe) != prefix + separator.join(map(str, probe)):
        return None  # a key spelling this module does not write: zarr reads it
    return LocalChunks(
        folder=os.path.join(str(array.store.root), *array.path.split("/")),
        shape=tuple(array.shape), chunks=tuple(array.chunks), dtype=dtype,
        fill_value=np.array(meta.fill_value, dtype=dtype).item(), prefix=prefix, separator=separator,
        compressor=compressor, checksum=checksum, compressor_config=config, strings=strings,
    )


def dask_array(array, chunks_per_task: int = 4):
    """``array`` as a dask array, one task per chunk read by :class:`LocalChunks` when it can read
    the layout; else through zarr with ``chunks_per_task`` chunks per task along the first axis
    (zarr decodes them concurrently: 1.2x faster than one, benchmarks/RESULTS.md)."""
    import dask.array as da

    files = local_chunks(array)
    if files is None:
        return da.from_zarr(array, chunks=(array.chunks[0] * chunks_per_task, *array.chunks[1:]))
    return da.from_array(files, chunks=array.chunks, asarray=False, lock=False, fancy=False,
                         name=f"acts-{files.folder}-{files.shape}")


def _array_config(array):
    """The zarr ``array``'s own ``ArrayConfig`` (its ``write_empty_chunks``, ``order``): public as
    ``AsyncArray.config`` from zarr 3.1.6, held as ``_config`` before (the peers' venv, pinned to
    numpy<2, gets zarr 3.1.5)."""
    inner = array.async_array
    return getattr(inner, "config", None) or inner._config

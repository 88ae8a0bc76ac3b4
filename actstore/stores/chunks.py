"""Reading ``acts`` chunks from a local store's files inside each Dask task, and writing them.

zarr-python decodes every chunk through its asynchronous codec pipeline; on this project's
2-core machine that pipeline, not the bytes, set the speed of a statistics pass (issue 21:
0.9-1.1 GB/s through zarr against 1.6-1.9 GB/s reading the same LZ4 chunks here, and 3.1-3.5
against 1.3-1.9 GB/s for uncompressed ones; benchmarks/RESULTS.md). For the layout actstore
writes (a regular chunk grid, little-endian ``bytes``, then Blosc or Zstd or nothing, then the
CRC32C last) on a :class:`zarr.storage.LocalStore`, :class:`LocalChunks` reads a chunk's file,
verifies its CRC32C, decodes it with numcodecs (the codecs zarr itself calls) and returns the
array; everything else (object stores, sharding, other codecs) goes through zarr as before.

The checksum is always verified, and where the group's manifest is given (:mod:`.binding`) so is
the chunk's place: a mismatch raises :class:`DamagedStoreError` naming the store, group, array and
chunk where the reader knows them (``where``: every read of a store's activations), else a
:class:`ValueError` saying "checksum", as zarr's own codec does, so :func:`.integrity.damage_located`
names the chunk the same way. A chunk file that does not exist reads as the array's fill value, as
in zarr (NaN for ``acts``: damage, refused where ``where`` is known).

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import DamagedStoreError
from .binding import MISPLACED, misplaced, rows_crc
from .chunkfiles import ChunkScratch, open_regular, refuse_irregular_files  # noqa: F401 (here for readers)
from .schema import ACTS, BFLOAT16, BFLOAT16_NAN_BITS

ZARR_READS = "ACTSTORE_ZARR_READS"  # "1": chunks read and written through zarr's pipeline only


def _crc32c(data) -> bytes:
    """The CRC32C of ``data`` as zarr's ``crc32c`` codec stores it after the chunk: 4 bytes, little-endian."""
    import google_crc32c

    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


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
    # Each chunk's place (.binding): chunk key -> its manifest entry; None: not checked
    entries: Mapping | None = field(default=None, compare=False)
    # (store, group) a damaged chunk is named in (DamagedStoreError); None: a ValueError, as zarr's codec raises
    where: tuple[str, str] | None = None
    name: str = ""  # the array's path in the store ("tiny-llama/acts")
    missing_is_damage: bool = False  # a missing chunk is damage (acts: NaN fill), not the fill value

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def key(self, coords: tuple[int, ...]) -> str:
        """Chunk ``coords``' key in its array (``c/3/0/0``)."""
        return self.prefix + self.separator.join(str(c) for c in coords)

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        return os.path.join(self.folder, *self.key(coords).split("/"))

    def read_chunk(self, coords: tuple[int, ...], scratch: ChunkScratch | None = None) -> np.ndarray:
        """Chunk ``coords`` as stored (full chunk shape; edge chunks are padded on disk).

        ``scratch``: buffers to read (and decode) into, kept by a caller that is done with each
        chunk before it reads the next; the chunk returned is then a view of them. Without it,
        each read allocates its chunk anew (a caller that keeps the chunks, as a dask array does).
        """
        key = self.key(coords)
        path = os.path.join(self.folder, *key.split("/"))
        try:
            with open_regular(path) as f:
                raw = np.frombuffer(f.read(), dtype=np.uint8) if scratch is None else scratch.read(f)
        except FileNotFoundError:
            if self.missing_is_damage and self.where is not None:
                raise self._damaged(key, "missing", path) from None
            return np.full(self.chunks, self.fill_value, dtype=self.dtype)
        except ValueError:  # not a regular file
            raise self._damaged(key, "not a regular file (a FIFO, a device or a folder in the chunk's place)",
                                path) from None
        entry = None if self.entries is None else self.entries.get(key)
        if self.checksum:
            raw, stored = raw[:-4], bytes(raw[-4:])
            if len(stored) != 4 or _crc32c(raw) != stored:
                raise self._damaged(key, "checksum mismatch (the bytes on disk changed after they were written)", path)
            if type(entry) is int and int.from_bytes(stored, "little") != entry:  # its place (.binding)
                raise self._damaged(key, MISPLACED, path)
        try:
            chunk = self._decoded(raw, path, scratch)
        except Exception as err:  # the codec's own error: truncated, not its format
            raise self._damaged(key, f"cannot be decoded ({type(err).__name__}: {str(err)[:120]})", path) from None
        if isinstance(entry, list) and misplaced(entry, chunk, None):
            raise self._damaged(key, MISPLACED, path)
        return chunk

    def _decoded(self, raw: np.ndarray, path: str, scratch: ChunkScratch | None) -> np.ndarray:
        if self.strings:
            return self._strings(raw, path)
        expected = int(np.prod(self.chunks)) * self.dtype.itemsize
        if self._encoder is not None:  # the numcodecs codec the chunks are written with
            out = None if scratch is None else scratch.decoded(expected)
            raw = np.frombuffer(self._encoder.decode(raw, out=out), dtype=np.uint8)
        if raw.size != expected:
            raise ValueError(f"chunk file {path} decodes to {raw.size} bytes, expected {expected}")
        return raw.view(self.dtype).reshape(self.chunks)

    def _damaged(self, key: str, problem: str, path: str) -> Exception:
        """The error for chunk ``key``: :class:`DamagedStoreError` naming the store, group, array and
        chunk where :attr:`where` is known, else a ValueError naming the file, for the caller to locate."""
        if self.where is None:
            return ValueError(f"{problem} (chunk file {path})")
        from .integrity import Damage, damage_message

        return DamagedStoreError(damage_message(*self.where, [Damage(self.name, key, problem)]))

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

    def write_rows(self, array, start: int, values: np.ndarray) -> dict:
        """``array[start:start + len(values)] = values`` for the zarr ``array`` these are the files of
        (its shape already holding those rows, every axis but the first written whole), as zarr writes
        it: a chunk the rows fill within the array's shape is made from them and the fill value; one
        they fill in part is read (checksum verified), updated and written again; a chunk equal to
        the fill value is deleted instead (zarr's ``write_empty_chunks=False``). Each chunk goes
        through the store's ``set``/``delete``, the chunks of one span of rows together. Returns each
        written chunk's manifest entry (:mod:`.binding`; rows ``start ..`` committed next), by key."""
        stop = start + values.shape[0]
        if values.shape[1:] != self.shape[1:] or stop > self.shape[0]:
            raise ValueError(f"rows {start}..{stop} of shape {values.shape[1:]} do not fit {self.shape}")
        rows = self.chunks[0]
        keep_empty = _array_config(array).write_empty_chunks
        entries: dict = {}
        grid = list(itertools.product(*(range(-(-n // c)) for n, c in zip(self.shape[1:], self.chunks[1:]))))
        for row_chunk in range(start // rows, -(-stop // rows) if stop > start else 0):
            lo, hi = row_chunk * rows, (row_chunk + 1) * rows
            first, last = max(start, lo), min(stop, hi)
            complete = first == lo and last == min(hi, self.shape[0])
            writes = []
            for rest in grid:
                coords = (row_chunk, *rest)
                inner = tuple(slice(i * c, min((i + 1) * c, n))
                              for i, c, n in zip(rest, self.chunks[1:], self.shape[1:]))
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
                data = None if not keep_empty and self._is_fill(chunk) else self.encode(chunk, stored)
                writes.append((coords, data))
                if data is not None and inner_shape == self.chunks[1:]:  # else left unbound (.binding)
                    entries[self.key(coords)] = int.from_bytes(bytes(data[-4:]), "little") \
                        if hi <= stop and self.checksum else [last - lo, rows_crc(chunk[:last - lo])]
            self._store(array, writes)
        return entries

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


def local_chunks(array, strings: bool = False, where: tuple[str, str] | None = None,
                 entries: Mapping | None = None) -> LocalChunks | None:
    """A :class:`LocalChunks` for zarr ``array`` when its layout is one this module reads, else None.
    ``strings``: read a variable-length string array (zarr's ``vlen-utf8`` first), as objects;
    ``where``: (store, group) to name in a :class:`DamagedStoreError` for a damaged or missing chunk
    (else a ValueError, and a missing chunk reads as the fill value); ``entries``: the array's
    manifest entries (:mod:`.binding`), each chunk checked against the one for its key."""
    from zarr.codecs import BytesCodec, Crc32cCodec, VLenUTF8Codec
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
    compressor, config = _compressor(middle[0]) if middle else (None, ())
    if compressor == "?":
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
        entries=entries, where=where, name=array.path, missing_is_damage=_fill_is_damage(array),
    )


def _compressor(codec) -> tuple[str, tuple]:
    """The name and numcodecs configuration of zarr compressor ``codec``; ``"?"`` for one this module
    does not read."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if isinstance(codec, BloscCodec) and codec.typesize is not None:
        # what zarr's BloscCodec hands numcodecs (typesize too, numcodecs >= 0.16)
        return "blosc", (("id", "blosc"), ("cname", codec.cname.value), ("clevel", codec.clevel),
                         ("shuffle", {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]),
                         ("blocksize", codec.blocksize), ("typesize", codec.typesize))
    if isinstance(codec, ZstdCodec) and not codec.checksum:
        return "zstd", (("id", "zstd"), ("level", codec.level), ("checksum", False))
    return "?", ()


def _fill_is_damage(array) -> bool:
    """Whether a chunk of ``array`` missing is damage: ``acts`` whose fill value is NaN (or bfloat16's
    NaN bits), which no capture writes; stores written before checksums filled with 0."""
    fill = array.metadata.fill_value
    if array.basename != ACTS:
        return False
    if np.dtype(array.dtype).kind == "f":
        return bool(np.isnan(fill))
    return array.attrs.get("actstore_dtype") == BFLOAT16 and int(fill) == BFLOAT16_NAN_BITS


def dask_array(array, chunks_per_task: int = 4, where: tuple[str, str] | None = None, entries: Mapping | None = None):
    """``array`` as a dask array, one task per chunk read by :class:`LocalChunks` when it can read
    the layout; else through zarr with ``chunks_per_task`` chunks per task along the first axis
    (zarr decodes them concurrently: 1.2x faster than one, benchmarks/RESULTS.md). ``where`` and
    ``entries``: see :func:`local_chunks`; through zarr, ``where`` names the chunks of a block that
    fails to decode or reads a missing chunk (:class:`.guard.GuardedZarr`)."""
    import dask.array as da

    files = local_chunks(array, where=where, entries=entries)
    if files is None:
        chunks = (array.chunks[0] * chunks_per_task, *array.chunks[1:])
        if where is None:
            return da.from_zarr(array, chunks=chunks)
        from .guard import GuardedZarr

        return da.from_array(GuardedZarr(array, where), chunks=chunks, asarray=False, lock=False, fancy=False,
                             name=f"acts-zarr-{id(array)}-{array.shape}")
    return da.from_array(files, chunks=array.chunks, asarray=False, lock=False, fancy=False,
                         name=f"acts-{files.folder}-{files.shape}")


def _array_config(array):
    """The zarr ``array``'s own ``ArrayConfig`` (its ``write_empty_chunks``, ``order``): public as
    ``AsyncArray.config`` from zarr 3.1.6, held as ``_config`` before (the peers' venv, pinned to
    numpy<2, gets zarr 3.1.5)."""
    inner = array.async_array
    return getattr(inner, "config", None) or inner._config

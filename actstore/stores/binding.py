"""Each chunk bound to its place (issue 31 #6): a manifest of chunk checksums, committed with the rows.

A chunk's CRC32C (:mod:`.integrity`) covers its bytes, not its key: layer 0's and layer 1's chunk
files exchanged both pass it, and layer 1 then reads layer 0's activations. So a group records, for
every chunk of its sample arrays (``acts`` and the per-sample coordinates), which checksum belongs at
that key, in its attribute :data:`MANIFEST` (``{array: {chunk key: entry}}``), written in the same
one metadata write that commits the rows (:meth:`.writer.ActivationWriter.commit`): it always
describes exactly the committed rows, whatever a crash or a concurrent reader sees.

An entry is either

* an ``int``: the CRC32C stored after a chunk whose rows are all committed (written whole, never
  written again): the direct reader (:mod:`.chunks`) already holds those 4 bytes, so checking the
  place costs a dict lookup and an integer compare; or
* ``[rows, crc]``: the CRC32C of the decoded bytes of the chunk's first ``rows`` rows (C order;
  strings as numcodecs' ``vlen-utf8`` items, each a 4-byte length and its UTF-8 bytes) for a chunk
  still filling up (the last one), or one written through zarr (coordinates, object stores). Rows
  past the committed ones may change (an append, an interrupted write); the committed ones never do,
  so a reader of an older snapshot still matches.

Groups created before the manifest have no :data:`MANIFEST` attribute; they read as before, and
``actstore verify`` says their chunks' places could not be checked.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

MANIFEST = "chunk_crc32c"
MISPLACED = ("not the chunk recorded for this place (its checksum is another chunk's: chunk files exchanged or "
             "copied over)")


def manifest_of(attrs: Mapping, name: str) -> dict | None:
    """The entries of array ``name`` in a group's attributes ``attrs``; None for a group made before
    the manifest (nothing to check)."""
    table = attrs.get(MANIFEST)
    if not isinstance(table, dict):
        return None
    entries = table.get(name)
    return entries if isinstance(entries, dict) else {}


def rows_crc(values, crc: int = 0) -> int:
    """The CRC32C of ``values``' decoded bytes (see the module), extending ``crc``."""
    import google_crc32c

    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        from numcodecs import VLenUTF8

        data = bytes(VLenUTF8().encode(values.astype(object).ravel()))[4:]  # without the item count
    else:
        data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return int(google_crc32c.extend(crc, data))


def misplaced(entry, values, stored: int | None) -> bool:
    """Whether a chunk read as ``values`` (its decoded rows from the first; ``stored``: the CRC32C
    stored after it, None if unknown) is not the one ``entry`` records for its place."""
    if isinstance(entry, bool):
        return False
    if isinstance(entry, int):
        return stored is not None and stored != entry
    if isinstance(entry, list) and len(entry) == 2:
        rows, crc = entry
        return len(values) < rows or rows_crc(values[:rows]) != crc
    return False


def appended_entries(array, entries: Mapping, start: int, values) -> dict:
    """The entries of the chunks of zarr ``array`` that rows ``start ..`` (``values``, written through
    zarr) go into: ``[rows, crc]`` extended from the chunk's entry (``entries``); None (unbound) where
    that entry does not describe the rows before (a chunk an older actstore began)."""
    values = np.asarray(values)
    if values.dtype.kind not in "OUT":
        values = values.astype(np.dtype(array.dtype), copy=False)
    rows, rest = array.chunks[0], array.chunks[1:]
    if any(n % c for n, c in zip(array.shape[1:], rest)):
        return {}  # chunks padded along another axis: not bound
    stop = start + values.shape[0]
    grid = list(itertools.product(*(range(n // c) for n, c in zip(array.shape[1:], rest))))
    out: dict = {}
    for row_chunk in range(start // rows, -(-stop // rows) if stop > start else 0):
        lo = row_chunk * rows
        first, last = max(start, lo), min(stop, lo + rows)
        for inner in grid:
            key = array.metadata.encode_chunk_key((row_chunk, *inner))
            block = values[(slice(first - start, last - start), *(slice(i * c, (i + 1) * c) for i, c in
                                                                   zip(inner, rest)))]
            before = entries.get(key)
            if first == lo:
                out[key] = [last - lo, rows_crc(block)]
            elif isinstance(before, list) and len(before) == 2 and before[0] == first - lo:
                out[key] = [last - lo, rows_crc(block, int(before[1]))]
            else:
                out[key] = None
    return out


def merged(table: Mapping | None, pending: Mapping) -> dict:
    """The manifest ``table`` with ``pending`` entries (``{array: {key: entry or None}}``) applied."""
    out = {name: dict(entries) for name, entries in (table or {}).items() if isinstance(entries, dict)}
    for name, entries in pending.items():
        target = out.setdefault(name, {})
        for key, entry in entries.items():
            if entry is None:
                target.pop(key, None)
            else:
                target[key] = entry
    return out


def stored_checksum(array, key: str) -> int | None:
    """The CRC32C stored at the end of chunk ``key`` of zarr ``array`` (its last 4 bytes), or None."""
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    data = sync(array.store.get(f"{array.path}/{key}", default_buffer_prototype(), byte_range=SuffixByteRequest(4)))
    return None if data is None else int.from_bytes(data.to_bytes(), "little")

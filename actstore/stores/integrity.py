"""Damage detection: a store that was damaged on disk is refused where it is read.

Four checks, each for a way damage could otherwise pass as data:

* a **checksum** (CRC32C, zarr v3's ``crc32c`` codec, last in every array's codec
  pipeline of stores written since checksums were added): a flipped or truncated chunk fails
  to decode, and :func:`locate_damage` names the chunk;
* a **fill value that cannot pass as data**: a missing ``acts`` chunk reads as NaN
  (capture refuses non-finite activations, so NaN in a store is damage), a missing
  ``class``/``pair_id``/``text_index`` chunk as ``''``/``-1`` (never written by a capture);
* each chunk **at its place** (:mod:`.binding`): chunk files exchanged pass their own checksums,
  not the one the group's manifest records for their key;
* the group's **attributes checked against the arrays** they describe on open
  (:func:`check_group`): ``n_samples`` beyond the rows, ``layers`` that are not the
  ``layer`` array, a missing key.

Stores written before checksums (fill value 0 for ``acts``) still open and read;
in them a flipped bit inside a chunk cannot be detected, a missing chunk only by
:func:`.verify.verify_group` (``actstore verify``).
"""

from __future__ import annotations

import contextlib
import itertools
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ActstoreError, DamagedStoreError, StoreError
from .binding import MISPLACED, manifest_of, misplaced, stored_checksum
from .schema import ACTS, CREATING, LATER_COORDS, MOMENTS, SAMPLE_COORDS, child, physical_dtype

# Arrays whose fill value is also a valid value (token_index is -1 for position 'mean'):
# a chunk of them may be absent because zarr does not write chunks equal to the fill value.
_FILL_IS_DATA = {"token_index"}
_SHOWN = 3


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: ``array`` (path inside the store), chunk ``key`` (``c/3/0/0``), ``problem``."""

    array: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"array {self.array!r} chunk {self.key}: {self.problem}"


def has_checksum(array) -> bool:
    """Whether ``array``'s chunks carry a CRC32C."""
    from zarr.codecs import Crc32cCodec

    return any(isinstance(codec, Crc32cCodec) for codec in getattr(array.metadata, "codecs", ()))


def _chunk_regions(array, rows: int | None) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    shape = list(array.shape)
    if rows is not None and shape:
        shape[0] = min(shape[0], rows)
    chunks = array.chunks
    counts = [-(-s // c) if s else 0 for s, c in zip(shape, chunks)]
    for coords in itertools.product(*(range(n) for n in counts)):
        yield coords, tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coords, chunks, shape))


def _exists(array, key: str) -> bool:
    from zarr.core.sync import sync

    return bool(sync(array.store.exists(f"{array.path}/{key}")))


def _irregular_chunk(array, key: str) -> str | None:
    """Why a local chunk file is not a regular file (a FIFO in its place would block zarr's read for
    ever), or None (regular, missing, or a store that is not a folder)."""
    root = getattr(array.store, "root", None)
    if root is None:
        return None
    path = Path(root, *array.path.split("/"), *key.split("/"))
    try:
        mode = path.stat().st_mode  # a link to a regular file is read as one (git-annex, DVC)
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "not a regular file (a FIFO, a device or a folder in the chunk's place)"


def check_array(array, rows: int | None = None, fill_is_data: bool = False,
                entries: dict | None = None) -> tuple[int, list[Damage]]:
    """Read every chunk of ``array`` (only its first ``rows`` along axis 0 if given).

    Returns (chunks checked, damaged chunks): missing (unless ``fill_is_data``),
    failing to decode (checksum, codec), holding non-finite floats, or not the chunk the
    group's manifest ``entries`` record for its key (:mod:`.binding`: chunk files exchanged).
    """
    damaged: list[Damage] = []
    checked = 0
    for coords, region in _chunk_regions(array, rows):
        checked += 1
        key = array.metadata.encode_chunk_key(coords)
        irregular = _irregular_chunk(array, key)  # before zarr looks: it calls a FIFO missing
        if irregular:
            damaged.append(Damage(array.path, key, irregular))
            continue
        if not fill_is_data and not _exists(array, key):
            damaged.append(Damage(array.path, key, "missing"))
            continue
        try:
            values = array[region]
        except PermissionError as err:  # not damage: the bytes may be whole, the reader may not see them
            raise StoreError(f"array {array.path!r} chunk {key}: cannot be read ({err.strerror or err}); check the "
                             "store's file permissions (this is not damage: nothing needs capturing again)") \
                from None
        except Exception as err:  # any decode failure of this chunk is damage: checksum, codec, truncation
            damaged.append(Damage(array.path, key, decode_problem(err)))
            continue
        if np.asarray(values).dtype.kind == "f" and not np.all(np.isfinite(values)):
            damaged.append(Damage(array.path, key, "non-finite values (NaN/Inf: damaged or missing data)"))
        elif entries and key in entries:
            entry = entries[key]
            stored = stored_checksum(array, key) if type(entry) is int else None
            if misplaced(entry, np.asarray(values), stored):
                damaged.append(Damage(array.path, key, MISPLACED))
    return checked, damaged


def decode_problem(err: Exception) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return "checksum mismatch (the bytes on disk changed after they were written)"
    return f"cannot be decoded ({type(err).__name__}: {text[:120]})"


def group_arrays(group) -> list[tuple[object, int | None, bool]]:
    """(array, rows to check, fill is data) for every array actstore wrote in a model group."""
    attrs = group.attrs
    n = int(attrs.get("n_samples", 0) or 0)
    arrays: list[tuple[object, int | None, bool]] = []
    for name in (ACTS, "layer", *SAMPLE_COORDS):
        array = child(group, name)
        if array is not None:
            rows = None if name == "layer" else n
            arrays.append((array, rows, name in _FILL_IS_DATA))
    if "moments_buffer" in attrs and attrs.get("moments_classes"):
        array = child(group, MOMENTS[int(attrs["moments_buffer"])])
        if array is not None:
            arrays.append((array, None, False))
    return arrays


def locate_damage(group, names: tuple[str, ...] | None = None) -> list[Damage]:
    """Every damaged chunk of the committed part of ``group``'s arrays (or of those in ``names``)."""
    damaged: list[Damage] = []
    attrs = dict(group.attrs)
    for array, rows, fill_is_data in group_arrays(group):
        if names is None or array.basename in names:
            damaged.extend(check_array(array, rows, fill_is_data, manifest_of(attrs, array.basename))[1])
    return damaged


def damage_message(path, group_name: str, damaged: list[Damage]) -> str:
    """What names the store, the group and the damaged chunks (and what to do)."""
    shown = "; ".join(str(d) for d in damaged[:_SHOWN])
    more = f"; and {len(damaged) - _SHOWN} more" if len(damaged) > _SHOWN else ""
    return (f"store {str(path)!r} group {group_name!r} is damaged: {shown}{more}. "
            f"'actstore verify {path}' lists what is damaged and what is still good; capture the data again "
            "into a new store (or restore the store from a copy)")


def damage_error(path, group, damaged: list[Damage]) -> DamagedStoreError:
    """The error that names the store, the group and the damaged chunks."""
    return DamagedStoreError(damage_message(path, group.basename, damaged))


@contextlib.contextmanager
def damage_located(group, path, names: tuple[str, ...] | None = (ACTS,)) -> Iterator[None]:
    """Turn a decode failure while reading arrays ``names`` of ``group`` (None: all) into
    :class:`DamagedStoreError` naming the chunk."""
    try:
        yield
    except ActstoreError:
        raise
    except Exception:  # a codec's own error type: find the chunk, else let the original through
        damaged = locate_damage(group, names)
        if damaged:
            raise damage_error(path, group, damaged) from None
        raise


def refuse_non_finite(group, path, values: np.ndarray, names: tuple[str, ...] = (ACTS,)) -> None:
    """``values`` computed from ``group`` hold NaN/Inf: a capture never stores those, so a chunk is
    missing or damaged; name it (or say the values are non-finite if no chunk is)."""
    if np.all(np.isfinite(values)):
        return
    damaged = locate_damage(group, names)
    if damaged:
        raise damage_error(path, group, damaged)
    raise DamagedStoreError(f"store {str(path)!r} group {group.basename!r} holds non-finite activations; "
                            "capture the data again into a new store")


# What a missing chunk of a per-sample coordinate reads as, and no capture writes.
_FILL = {"class": "", "pair_id": -1, "text_index": -1, "question": -1, "order": -1}


def refuse_fill_values(group, path, name: str, values: np.ndarray) -> None:
    """Coordinate ``name`` of ``group`` read as ``values`` holds its fill value: a chunk is missing."""
    if name in _FILL and values.size and np.any(values == _FILL[name]):
        damaged = locate_damage(group, (name,))
        if damaged:
            raise damage_error(path, group, damaged)
        raise DamagedStoreError(f"store {str(path)!r} group {group.basename!r}: array {name!r} holds "
                                f"{_FILL[name]!r}, which no capture writes; capture the data again into a new store")


_REQUIRED = {"schema_version": int, "model_id": str, "hidden_size": int, "layers": list, "position": str,
             "dtype": str, "n_samples": int, "n_texts": int, "next_pair_id": int, "runs": list}


def promised_arrays(attrs) -> set[str]:
    """The later coordinates a group's runs promise: a run that recorded option-swapped twins
    (``swap_options``) wrote ``question`` and ``order``; without them the letter control would take
    the group for one captured before twins existed."""
    runs = attrs.get("runs") if isinstance(attrs.get("runs"), list) else []
    twins = any(isinstance(run, dict) and isinstance(run.get("settings"), dict) and run["settings"].get("swap_options")
                for run in runs)
    return {"question", "order"} if twins else set()


def check_group(group, path) -> None:
    """Refuse a model group whose attributes do not describe its arrays (edited or half-written)."""
    attrs = dict(group.attrs)
    where = f"store {str(path)!r} group {group.basename!r}"
    for key, kind in _REQUIRED.items():
        value = attrs.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise DamagedStoreError(f"{where}: attribute {key!r} is {value!r}, expected {kind.__name__}; the "
                                    "group's metadata (zarr.json) was edited or damaged")
    n = attrs["n_samples"]
    problems = []
    if n < 0:
        problems.append(f"n_samples is {n}")
    acts = child(group, ACTS)
    if acts is None:
        problems.append(f"array {ACTS!r} is missing")
    else:
        if acts.ndim != 3 or acts.shape[1:] != (len(attrs["layers"]), attrs["hidden_size"]):
            problems.append(f"array {ACTS!r} has shape {acts.shape}, but layers {attrs['layers']} and hidden_size "
                            f"{attrs['hidden_size']} say (n, {len(attrs['layers'])}, {attrs['hidden_size']})")
        elif str(acts.dtype) != physical_dtype(attrs["dtype"]):
            problems.append(f"array {ACTS!r} is {acts.dtype}, but dtype says {attrs['dtype']}")
        elif not attrs.get("stats_only") and acts.shape[0] < n:
            problems.append(f"n_samples is {n} but array {ACTS!r} has {acts.shape[0]} rows")
    if attrs.get("stats_only") and attrs.get("moments_classes") and \
            child(group, MOMENTS[int(attrs.get("moments_buffer", 0)) % len(MOMENTS)]) is None:
        problems.append("its moments are missing (array "
                        f"{MOMENTS[int(attrs.get('moments_buffer', 0)) % len(MOMENTS)]!r}, named by its attributes)")
    promised = promised_arrays(attrs)
    for name in SAMPLE_COORDS:
        coord = child(group, name)
        if coord is None and name in LATER_COORDS and name not in promised:  # a group made before them
            continue
        if coord is None:
            problems.append(f"array {name!r} is missing")
        elif not attrs.get("stats_only") and coord.shape[0] < n:
            problems.append(f"n_samples is {n} but array {name!r} has {coord.shape[0]} rows")
    layer = child(group, "layer")
    if layer is None:
        problems.append("array 'layer' is missing")
    else:
        try:
            stored = [int(x) for x in layer[:]]
        except Exception as err:  # a damaged chunk of the layer array
            problems.append(f"array 'layer' {decode_problem(err)}")
        else:
            if stored != list(attrs["layers"]):
                problems.append(f"attribute layers is {attrs['layers']} but array 'layer' holds {stored}")
    done = 0
    for record in attrs["runs"]:
        if not isinstance(record, dict) or not isinstance(record.get("texts_done"), int):
            problems.append(f"a run record is {record!r}")
            break
        done += record["texts_done"]
    if attrs["n_texts"] < done:
        problems.append(f"n_texts is {attrs['n_texts']} but the runs record {done} texts done")
    if problems:
        raise DamagedStoreError(f"{where}: " + "; ".join(problems) + "; the group's metadata (zarr.json) or "
                                "arrays were edited or damaged, so its rows cannot be trusted")


def is_half_created(group) -> bool:
    """A group whose creation was interrupted, by a positive sign, never by a missing attribute:
    it still holds the creation marker (:data:`.schema.CREATING`), or (groups created before the
    marker existed) it has no attributes at all and no array holds a row or moments. A group
    that lacks ``n_samples`` but holds rows is damaged (:func:`check_group` says so), and
    nothing replaces it."""
    attrs = dict(group.attrs)
    if attrs.get(CREATING) is True:
        return True
    if attrs:
        return False
    acts = child(group, ACTS)
    return (acts is None or acts.shape[0] == 0) and all(child(group, name) is None for name in MOMENTS)

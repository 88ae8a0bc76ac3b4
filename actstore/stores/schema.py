"""The store's schema, written in this one place: names, dtypes, codecs, chunking
and the arrays of a new group, of its running moments and of its statistics cache.

Layout (one group per model, named by :func:`actstore.models.load.safe_group_name`)::

    store.zarr/                      attrs: actstore = {kind, schema_version}
      <model-group>/                 attrs: CaptureSpec.attrs() + n_samples, n_texts, next_pair_id,
                                            runs (RunRecord.to_attrs() each), data_version,
                                            chunk_crc32c (each chunk's checksum by key: .binding)
        acts       (sample, layer, hidden) float32|float16, chunks (S, 1, hidden)
        layer      (layer,)  int64   real block numbers, e.g. [2, 6, 10]
        class      (sample,) string  class label ("pos", "neg", ...)
        pair_id    (sample,) int64   pairs a pos with its neg (unique across runs)
        question   (sample,) int64   the question a row asks: the pair id of its pair as written, shared
                                     by the pair and its option-swapped twin (an A/B set; else = pair_id)
        order      (sample,) int64   0: options as written; 1: the option-swapped twin
        text_hash  (sample,) string  16 hex digits of BLAKE2b of the text
        text_index (sample,) int64   index of the text in this group (0, 1, ...)
        token_index(sample,) int64   token position among real tokens (-1 for mean)
        role       (sample,) string  chat exchanges: the role of the row's token (system, user, assistant,
                                     template; "" for a mean or a text that is no exchange)
        response_index (sample,) int64  the row's token's place in the assistant's response (-1 elsewhere)
        response   (sample,) string  on-policy capture (capture --respond): the response the model wrote
        stats/                       cached statistics, attrs current = the subgroup in use:
          v<hex>/                    count (class, layer), mean and var (class, layer, hidden),
                                     class, layer; attrs say which data_version
        moments0, moments1 (moment, class, layer, hidden) float64   stats-only groups
                                     (``capture --stats-only``): running n, mean, M2 per class;
                                     attrs ``moments_buffer`` names the committed one
        shards/run<r>-<i>of<n>/      a shard still being captured (same arrays; merged, then deleted)

Every array ends its codec pipeline with a CRC32C checksum, and ``acts`` has fill value NaN
(:mod:`.integrity`); stores written before checksums were added have neither, and still read.

``acts`` chunks hold one layer of S consecutive samples, S the power of two that
gives 4-8 MiB raw (2048 samples at hidden 640, float32): zarr's per-chunk cost
dominates below a few MiB (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import SCHEMA_VERSION, __version__
from ..errors import StoreError
from .binding import MANIFEST

ROOT_KIND = "actstore-activations"
ACTS = "acts"
SAMPLE_COORDS = {
    "class": str,
    "pair_id": "int64",
    "text_hash": str,
    "text_index": "int64",
    "token_index": "int64",
    "question": "int64",
    "order": "int64",
    "role": str,
    "response_index": "int64",
    "response": str,
}
# Coordinates that groups created before them lack (their rows are all as written: question =
# pair_id, order 0; no roles, no responses); readers and writers take a group without them as it is.
LATER_COORDS = ("question", "order", "role", "response_index", "response")
CHAT_COORDS = ("role", "response_index", "response")
# What a row that is no chat exchange holds in them (the writer's default)
NO_CHAT = {"role": "", "response_index": -1, "response": ""}
# Fill values no data takes: zarr skips writing a chunk equal to the fill value, which verify would
# take for a lost chunk (most rows of a capture of plain texts hold "" and -1).
_FILLS = {"role": "\x01", "response": "\x01", "response_index": -2}
STORE_DTYPES = ("float32", "float16", "bfloat16")
# Zarr v3's core has no bfloat16: its bits are stored as uint16, the logical dtype in the
# group's ``dtype`` and the array's ``actstore_dtype`` attribute; open_store decodes it.
BFLOAT16 = "bfloat16"
_BFLOAT16_BITS = "uint16"
BFLOAT16_NAN_BITS = 0x7FC0  # the bits of bfloat16's quiet NaN (float32 0x7FC00000 shifted down)


def physical_dtype(dtype: str) -> str:
    """The zarr dtype that holds activations of store dtype ``dtype``."""
    return _BFLOAT16_BITS if dtype == BFLOAT16 else dtype


def bfloat16_bits(acts: np.ndarray) -> np.ndarray:
    """float32 -> the bits of the nearest bfloat16 (round half to even), as uint16: float32's range,
    8 significant bits (relative error <= 2**-8, 0.4%)."""
    bits = np.ascontiguousarray(acts, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
CODECS = ("none", "lz4", "zstd")
# A new group's codec by default ("auto"): none where each text gives one row (float32 activations
# of distinct texts compress 1.04x with LZ4, and read about 2x faster uncompressed), LZ4 where each
# token gives one (--position all: texts that share a prompt compress 1.6x). benchmarks/RESULTS.md, issue 21.
AUTO_CODEC = "auto"
CODEC_CHOICES = (AUTO_CODEC, *CODECS)
DEFAULT_CODEC = "none"  # a spec built without a position (benchmarks, direct writers)
SHARDS = "shards"
STATS_GROUP = "stats"
MOMENTS = ("moments0", "moments1")  # stats-only groups: double-buffered running moments
_CHUNK_BYTES = 8 << 20
_COORD_CHUNK = 16384


def root_attrs() -> dict[str, Any]:
    """The root group's attributes, written with the root itself (one write)."""
    return {"actstore": {"kind": ROOT_KIND, "schema_version": SCHEMA_VERSION}}


def sample_chunk(hidden: int, itemsize: int, target_bytes: int = _CHUNK_BYTES) -> int:
    """Samples per ``acts`` chunk: the largest power of two within ``target_bytes`` (at least 16)."""
    samples = max(1, target_bytes // (hidden * itemsize))
    return int(max(16, 1 << (samples.bit_length() - 1)))


_GROUP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_group_name(name: str) -> str:
    """A group name given by the user (``name``): letters, digits, ``._-``, not starting with a dot."""
    if not _GROUP_NAME.fullmatch(name) or name == SHARDS:
        raise StoreError(
            f"name={name!r}: a group name is letters, digits, '.', '_' and '-', not starting with '.' "
            "(no '/', no '..'), e.g. name='gemma-refusal'", param="name"
        )
    return name


def compressors(codec: str) -> list:
    """``acts`` compressors: ``none`` (the default: fastest to read; float32 activations of distinct
    texts compress only 1.04x with LZ4, 1.10x with Zstd), ``lz4`` (Blosc LZ4 + shuffle: fastest to
    decode of those that compress), ``zstd`` (plain Zstd level 1: 1.3x smaller than LZ4 on A/B pairs
    captured with ``--position all``, slower to read). Figures: benchmarks/RESULTS.md.

    Each is followed by a CRC32C checksum of the stored bytes (zarr v3's ``crc32c`` codec):
    Blosc and Zstd frames carry none, so without it a flipped bit decodes to a wrong number
    (:mod:`.integrity`)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), checksum()]
    if codec == "zstd":
        return [ZstdCodec(level=1), checksum()]
    if codec == "none":
        return [checksum()]
    raise StoreError(f"codec={codec!r}: expected one of {', '.join(CODECS)}", param="codec")


def checksum():
    """The checksum codec last in every array's pipeline."""
    from zarr.codecs import Crc32cCodec

    return Crc32cCodec()


def small_compressors() -> list:
    """Coordinates, layers, moments and statistics: zarr's default Zstd, then the checksum."""
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=0, checksum=False), checksum()]


def child(group, name: str):
    """``group[name]``, or None if there is no such member."""
    try:
        return group[name]
    except KeyError:
        return None
    except ValueError as err:  # its zarr.json cut or emptied: a crash without fsync can leave that
        from ..errors import DamagedStoreError

        where = f"{str(group.store_path).removeprefix('file://')}/{name}"
        raise DamagedStoreError(f"{where}/zarr.json is damaged (not valid Zarr metadata: {err}); restore it from a "
                                "copy or capture again (`actstore verify` checks the rest)") from None


def commit_attrs(node, values: dict[str, Any]) -> None:
    """Set several attributes of a zarr group or array in ONE metadata write.

    Not ``node.attrs.update(values)``: zarr's ``Attributes`` is a MutableMapping
    whose ``update`` sets key by key, one atomic file write each, so a kill between
    two of them leaves e.g. ``n_samples`` advanced and ``runs`` not (the crash test
    caught a resumed capture writing a window twice that way).
    """
    node.update_attributes(values)


@dataclass(frozen=True)
class GroupOptions:
    """How a capture stores its rows, validated on construction: ``store_dtype`` of the
    activations, ``codec`` of a new group, group ``name`` (None: from the model),
    ``stats_only`` (store per-class moments instead of rows).

    >>> GroupOptions(store_dtype="float16", codec="zstd").store_dtype
    'float16'
    >>> GroupOptions(store_dtype="int8")
    Traceback (most recent call last):
    ...
    actstore.errors.StoreError: store_dtype='int8': expected one of float32, float16, bfloat16
    """

    store_dtype: str = "float32"
    codec: str = AUTO_CODEC
    name: str | None = None
    stats_only: bool = False

    def __post_init__(self) -> None:
        if self.store_dtype not in STORE_DTYPES:
            raise StoreError(f"store_dtype={self.store_dtype!r}: expected one of {', '.join(STORE_DTYPES)}",
                             param="store_dtype")
        if self.codec not in CODEC_CHOICES:
            raise StoreError(f"codec={self.codec!r}: expected one of {', '.join(CODEC_CHOICES)}", param="codec")
        if self.name is not None:
            check_group_name(self.name)


@dataclass(frozen=True)
class CaptureSpec:
    """What a group holds; appending must match it exactly (:data:`MUST_MATCH`)."""

    model_id: str
    model_fingerprint: str
    model_type: str | None
    hidden_size: int
    layers: list[int]
    position: str
    dtype: str = "float32"
    stats_only: bool = False
    codec: str = DEFAULT_CODEC  # for a new group only; appends keep the group's codec
    site: str = "resid"  # what is read in each block: resid (its output), attn or mlp
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise StoreError(f"store dtype {self.dtype!r}: expected one of {STORE_DTYPES}", param="store_dtype")

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> CaptureSpec:
        """The spec a group's (or its statistics') attributes record: the one read of them, with
        the defaults of groups written before a key existed (:data:`SPEC_DEFAULTS`) applied here.
        Keys that are not the spec's nor the group's running state land in ``extra``."""
        values = {**SPEC_DEFAULTS, **{key: value for key, value in attrs.items() if value is not None}}
        missing = [key for key in ("model_id", "model_fingerprint", "hidden_size", "layers", "position")
                   if key not in values]
        if missing:
            raise StoreError(f"the group's attributes lack {', '.join(missing)}; the store was not written by "
                             "actstore, or its metadata (zarr.json) was damaged")
        extra = {key: value for key, value in attrs.items() if key not in _SPEC_KEYS and key not in GROUP_STATE}
        return cls(model_id=str(values["model_id"]), model_fingerprint=str(values["model_fingerprint"]),
                   model_type=values.get("model_type"), hidden_size=int(values["hidden_size"]),
                   layers=[int(layer) for layer in values["layers"]], position=str(values["position"]),
                   dtype=str(values["dtype"]), stats_only=bool(values["stats_only"]), codec=str(values["codec"]),
                   site=str(values["site"]), extra=extra)

    @classmethod
    def from_stats(cls, stats) -> CaptureSpec:
        """The spec of the group a statistics dataset (:func:`actstore.open_stats`) was computed from
        (a dataset made by hand, without provenance, reads as an unknown model)."""
        return cls.from_attrs({"model_id": "", "model_fingerprint": "", "position": "", **stats.attrs,
                               "layers": [int(x) for x in stats["layer"].values],
                               "hidden_size": int(stats.sizes["hidden"])})

    def attrs(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "actstore_version": __version__,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "layers": list(self.layers),
            "position": self.position,
            "dtype": self.dtype,
            "stats_only": self.stats_only,
            "site": self.site,
            **self.extra,
        }


MUST_MATCH = ("model_id", "model_fingerprint", "hidden_size", "layers", "position", "dtype", "stats_only", "site")
# A key a group written before it existed lacks reads as this (the one place of these defaults).
SPEC_DEFAULTS = {"dtype": "float32", "stats_only": False, "site": "resid", "codec": "lz4", "model_type": None}
MATCH_DEFAULTS = {key: SPEC_DEFAULTS[key] for key in ("stats_only", "site")}
_SPEC_KEYS = {"model_id", "model_fingerprint", "model_type", "hidden_size", "layers", "position", "dtype",
              "stats_only", "codec", "site"}
# The group's running state and bookkeeping, not what it holds
GROUP_STATE = {"schema_version", "actstore_version", "n_samples", "n_texts", "next_pair_id", "runs", "data_version",
               "moments_buffer", "moments_classes", "group", "store", "ddof", "computed_by", MANIFEST}


def check_appendable(group, spec: CaptureSpec, path: str, group_name: str) -> None:
    """Refuse to append rows of ``spec`` to an existing ``group`` they do not fit."""
    existing = dict(group.attrs)
    if existing.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{path!r} group {group_name!r} has schema version "
            f"{existing.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    from ..models.load import fingerprints_agree

    new = spec.attrs()
    for key in MUST_MATCH:
        there = existing.get(key, MATCH_DEFAULTS.get(key))
        if key == "model_fingerprint" and fingerprints_agree(there, new[key], spec.model_id):
            continue  # a group recorded with the older kind of fingerprint, of this same folder
        if there != new[key]:
            raise StoreError(
                f"cannot append to {path!r} group {group_name!r}: {key} is "
                f"{there!r} there but {new[key]!r} now; capture into another "
                "store or pass name= to use another group", param="name"
            )


CREATING = "actstore_creating"  # the one attribute of a model group whose creation has not finished


def create_group(root, group_name: str, spec: CaptureSpec):
    """A new, empty model group for rows of ``spec`` (replacing a half-created one, which holds no rows).

    The group is born holding the positive marker :data:`CREATING` and nothing else; its
    attributes replace the marker last, in one write. Only a group that still says so is one
    whose creation was interrupted (:func:`.integrity.is_half_created`), which readers skip and
    the next writer (holding the group's lock) replaces: a group that merely lacks an attribute
    is damaged, never replaced (it may hold committed rows).
    """
    group = root.create_group(group_name, overwrite=True, attributes={CREATING: True})
    itemsize = np.dtype(physical_dtype(spec.dtype)).itemsize
    chunk = sample_chunk(spec.hidden_size, itemsize)
    acts = group.create_array(
        ACTS,
        shape=(0, len(spec.layers), spec.hidden_size),
        chunks=(chunk, 1, spec.hidden_size),
        dtype=physical_dtype(spec.dtype),
        compressors=compressors(spec.codec),
        dimension_names=("sample", "layer", "hidden"),
        # a missing chunk reads as NaN (for bfloat16 bits: a NaN's), which no capture writes: damage, not data
        fill_value=BFLOAT16_NAN_BITS if spec.dtype == BFLOAT16 else np.nan,
    )
    if spec.dtype == BFLOAT16:
        commit_attrs(acts, {"actstore_dtype": BFLOAT16})
    layer = group.create_array("layer", shape=(len(spec.layers),), dtype="int64", dimension_names=("layer",),
                               compressors=small_compressors())
    layer[:] = np.asarray(spec.layers, dtype=np.int64)
    for name, dtype in SAMPLE_COORDS.items():
        group.create_array(
            name,
            shape=(0,),
            chunks=(_COORD_CHUNK,),
            dtype=dtype,
            dimension_names=("sample",),
            fill_value=_FILLS.get(name, "" if dtype is str else -1),
            compressors=small_compressors(),
        )
    # put, not update: the marker goes in the same single write that brings the attributes
    group.attrs.put({**spec.attrs(), "n_samples": 0, "n_texts": 0, "next_pair_id": 0,
                     "runs": [], "data_version": uuid.uuid4().hex, MANIFEST: {}})
    return group


def moments_array(group, buffer: int, shape: tuple[int, ...]):
    """Buffer ``buffer`` of a stats-only group's running moments, (re)created at ``shape``
    as one chunk (one atomic object)."""
    return group.create_array(
        MOMENTS[buffer], shape=shape, chunks=shape, dtype="float64", fill_value=np.nan,
        dimension_names=("moment", "class", "layer", "hidden"), overwrite=True, compressors=small_compressors(),
    )

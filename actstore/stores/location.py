"""Where a store is, as one value: a local folder, an fsspec URL (``s3://``, ``memory://``,
``file://``) or a ``zarr.Store`` object (a zip file, a store of your own), parsed once.

:class:`StoreLocation` owns what depends on the kind of place: how zarr is given it, whether
it is a local folder (checked before opening, locked beside itself), where its writer lock
lives, how much it holds on disk, and how it is shown. Nothing else in actstore looks at a
store's spelling.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._cache import cache_dir
from ..errors import StoreError


def _is_zarr_store(value) -> bool:
    try:
        from zarr.abc.store import Store
    except ImportError:  # pragma: no cover - zarr 2
        return False
    return isinstance(value, Store)


@dataclass(frozen=True, eq=False)
class StoreLocation:
    """A parsed store location. ``spelling``: the path or URL (a ``file://`` URL as the path it
    names; one store, one spelling for its lock and its opening), None for a store object;
    ``store``: the ``zarr.Store`` object, if given one; ``shown``: as the user gave it."""

    spelling: str | None
    store: Any = None
    shown: str = ""

    @classmethod
    def parse(cls, where: str | Path | StoreLocation | Any) -> StoreLocation:
        if isinstance(where, StoreLocation):
            return where
        if _is_zarr_store(where):
            return cls(None, where, f"<{type(where).__name__}>")
        shown = str(where)
        return cls(_local_spelling(shown), None, shown)

    @classmethod
    def in_memory(cls, prefix: str = "actstore") -> StoreLocation:
        """A new, empty in-process store (fsspec's memory file system), e.g. for a held-out capture."""
        return cls.parse(f"memory://{prefix}/{uuid.uuid4().hex}.zarr")

    @property
    def is_url(self) -> bool:
        return self.spelling is not None and "://" in self.spelling

    @property
    def local_path(self) -> Path | None:
        """The folder, for a local store; None for a URL or a store object."""
        return None if self.spelling is None or self.is_url else Path(self.spelling)

    @property
    def zarr_target(self):
        """What :func:`zarr.open_group` is given."""
        return self.store if self.store is not None else self.spelling

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"StoreLocation({self.shown!r})"

    def __fspath__(self) -> str:  # a local store stands in for its path
        if self.local_path is None:
            raise TypeError(f"{self.shown!r} is not a local folder")
        return str(self.local_path)

    def lock_file(self, name: str) -> Path | None:
        """Where the writer lock of group ``name`` lives: beside a local store; in the local cache,
        named by a hash, for a URL (it sees writers on this machine only); None for a store object
        (no file to lock: one process owns it)."""
        if self.store is not None:
            return None
        name = name.replace("/", "~")  # shard staging groups are nested
        if self.is_url:
            digest = hashlib.sha256(self.spelling.rstrip("/").encode()).hexdigest()[:16]
            return cache_dir() / "locks" / f"{digest}.{name}.lock"
        store_path = Path(self.spelling).resolve()
        return store_path.parent / f".{store_path.name}.{name}.lock"

    def join(self, *names: str) -> str | None:
        """The spelling of a member (``<store>/<group>``); None for a store object."""
        if self.spelling is None:
            return None
        return "/".join([self.spelling.rstrip("/"), *names])

    def disk_usage(self, *names: str) -> int | None:
        """Bytes stored under the store (or its member ``names``); None if unknown."""
        spelling = self.join(*names)
        if spelling is None:
            return None
        if not self.is_url:
            local = Path(spelling)
            return sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) if local.is_dir() else None
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(spelling)
            return int(fs.du(root))
        except (OSError, NotImplementedError, ValueError):
            return None


def _local_spelling(path: str) -> str:
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"store={path!r}: a file:// URL names a local path (file:///path/to/store.zarr)",
                             param="store")
        return unquote(parsed.path) or "/"
    return path

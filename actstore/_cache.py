"""Where actstore keeps files between runs (converted models, lock files of object stores)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ACTSTORE_CACHE``, else ``$XDG_CACHE_HOME/actstore``, else ``~/.cache/actstore``."""
    if os.environ.get("ACTSTORE_CACHE"):
        return Path(os.environ["ACTSTORE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "actstore"

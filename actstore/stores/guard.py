"""Reads through zarr guarded as the direct reader's are: a block that fails to decode, or that reads a
missing ``acts`` chunk (NaN, which no capture writes), raises :class:`DamagedStoreError` naming the
store, group, array and chunk wherever it is computed (``project``, ``extract``, ``eval``), not a
codec's ValueError or NaN for scikit-learn to find (issue 31). The direct reader
(:class:`.chunks.LocalChunks` with ``where``) does the same for a local store's chunk files."""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import DamagedStoreError
from .integrity import Damage, damage_message, decode_problem


class GuardedZarr:
    """A zarr ``array`` read like a numpy array (for :func:`dask.array.from_array`), every read
    guarded; ``where``: (store, group) to name."""

    def __init__(self, array, where: tuple[str, str]):
        self.array = array
        self.where = where
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        fill = array.metadata.fill_value
        self._nan_is_damage = self.dtype.kind == "f" and bool(np.isnan(fill))

    def __getitem__(self, index):
        try:
            values = np.asarray(self.array[index])
        except PermissionError:
            raise
        except Exception as err:  # the codec's own error (checksum, truncation): name the chunks
            problem = decode_problem(err)
            raise self._error(index, lambda key: problem) from None
        if self._nan_is_damage and values.size and np.isnan(values).any():
            raise self._error(index, lambda key: "missing" if not self._exists(key) else
                              "non-finite values (NaN/Inf: damaged or missing data)")
        return values

    def _exists(self, key: str) -> bool:
        from zarr.core.sync import sync

        return bool(sync(self.array.store.exists(f"{self.array.path}/{key}")))

    def _error(self, index, problem) -> DamagedStoreError:
        """The error naming the chunks of the region ``index`` that are damaged (every chunk of the
        region where none can be told apart)."""
        index = tuple(index) + (slice(None),) * (self.ndim - len(tuple(index)))
        spans = []
        for s, n, c in zip(index, self.shape, self.array.chunks):
            lo, hi = s.indices(n)[:2]
            spans.append(range(lo // c, -(-hi // c)))
        damaged = []
        for coords in itertools.product(*spans):
            key = self.array.metadata.encode_chunk_key(coords)
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, self.array.chunks, self.shape))
            try:
                values = np.asarray(self.array[region])
            except PermissionError:
                raise
            except Exception:
                damaged.append(Damage(self.array.path, key, problem(key)))
                continue
            if self._nan_is_damage and np.isnan(values).any():
                damaged.append(Damage(self.array.path, key, problem(key)))
        if not damaged:
            damaged = [Damage(self.array.path, "(one of the chunks read)", problem(""))]
        return DamagedStoreError(damage_message(*self.where, damaged))

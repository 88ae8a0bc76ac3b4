"""One handle per store group: where it is, the opened zarr group, and what it holds
(its :class:`~.schema.CaptureSpec`, read back once), with the checks every reader of a
group makes: the layers it captured, whether it has activations, which model it is from.

Open once at the edge (:meth:`StoreGroup.open`) and pass the handle down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import LayerNotCapturedError, NoActivationsError
from .reader import group_dataset
from .roots import check_store_model, open_root, select_group
from .schema import CaptureSpec


def require_layers(captured: Iterable[int], wanted: int | Iterable[int], where: str = "the store",
                   param: str = "layer") -> None:
    """Refuse layers not in ``captured`` (:class:`LayerNotCapturedError`, naming ``param``)."""
    captured = [int(layer) for layer in captured]
    asked = [int(wanted)] if hasattr(wanted, "__index__") else [int(x) for x in wanted]
    missing = [layer for layer in asked if layer not in captured]
    if missing:
        what = f"layer {missing[0]} was" if len(missing) == 1 else f"layers {missing} were"
        raise LayerNotCapturedError(f"{what} not captured; {where} has layers {captured}", param=param)


@dataclass(frozen=True, eq=False)
class StoreGroup:
    """A model group of a store: ``location`` (the store as given), ``group`` (the opened zarr
    group) and ``spec`` (what it holds, :meth:`CaptureSpec.from_attrs`).

    >>> group = StoreGroup.open("acts.zarr")
    >>> group.spec.layers, group.group.basename
    ([1, 2], 'tiny-llama')
    """

    location: str | Path
    group: Any
    # (fingerprint, force) already checked (check_model), so that a handle passed down is checked once
    _checked: set[tuple[str, bool]] = field(default_factory=set, init=False, repr=False)

    @classmethod
    def open(cls, store: str | Path | StoreGroup, model: str | None = None) -> StoreGroup:
        """The group of ``model`` (group name, model id or hub id; the only one if None) in
        ``store``, opened for reading and checked. A :class:`StoreGroup` is returned as is."""
        if isinstance(store, StoreGroup):
            return store
        return cls(store, select_group(open_root(store, mode="r"), model, store))

    @cached_property
    def spec(self) -> CaptureSpec:
        return CaptureSpec.from_attrs(dict(self.group.attrs))

    @property
    def name(self) -> str:
        return self.group.basename

    @property
    def attrs(self) -> dict[str, Any]:
        """The group's attributes now (a fresh dict: they change as a writer commits)."""
        return dict(self.group.attrs)

    @property
    def where(self) -> str:
        return repr(str(self.location))

    def __repr__(self) -> str:
        return f"StoreGroup({str(self.location)!r}, group={self.name!r}, layers={self.spec.layers})"

    def require_layers(self, layers: int | Iterable[int], param: str = "layer") -> None:
        """Refuse layers this group did not capture."""
        require_layers(self.spec.layers, layers, self.where, param)

    def require_activations(self, needed_for: str, param: str | None = None) -> None:
        """Refuse a stats-only group (moments, no rows) to what needs the rows."""
        if self.spec.stats_only:
            raise NoActivationsError(f"{needed_for} needs the activations, and {self.where} was captured stats-only "
                                     "(moments, no rows); capture without stats_only", param=param)

    def check_model(self, loaded, force: bool = False) -> None:
        """Refuse a group captured from other weights than ``loaded``'s (by fingerprint), unless
        ``force`` (then warn). Once per model and handle: whoever the handle is passed to may
        call it again without a second check (or a second warning)."""
        fingerprint = loaded.fingerprint
        if (fingerprint, False) in self._checked or (force and (fingerprint, True) in self._checked):
            return
        check_store_model(self.group.attrs, loaded, force, self.location)
        # (fingerprint, True): other weights, let through by force (a later call without force checks again)
        self._checked.add((fingerprint, bool(force) and fingerprint != self.spec.model_fingerprint))

    def dataset(self, coords: tuple[str, ...] | None = None):
        """The group as a lazy xarray dataset (:func:`actstore.open_store`)."""
        return group_dataset(self.group, self.location, coords)

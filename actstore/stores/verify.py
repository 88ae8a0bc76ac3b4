"""``actstore verify``: read every committed chunk of every group of a store and say what is
damaged (the checks themselves are :mod:`.integrity`'s; this module only walks the store)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StoreError
from .binding import manifest_of
from .integrity import Damage, check_array, check_group, group_arrays, has_checksum, is_half_created
from .moments import stats_cache_state
from .roots import model_groups, open_root
from .schema import ACTS


@dataclass
class GroupReport:
    """What :func:`verify_group` found in one group."""

    group: str
    checked: int
    damaged: list[Damage]
    problem: str | None = None  # attributes that do not describe the arrays, or a half-created group
    checksums: bool = True
    stats: str = "none"  # none | ok | damaged (recomputed by the next 'actstore stats')
    bound: bool = True  # its chunks' places are recorded (.binding); False: a group made before that

    @property
    def ok(self) -> bool:
        return not self.damaged and self.problem is None


def verify_group(group, path) -> GroupReport:
    """Read every committed chunk of ``group`` (data, coordinates, moments, statistics cache)."""
    if is_half_created(group):
        return GroupReport(group.basename, 0, [], problem="its creation was interrupted (holds no rows; the next "
                                                           "capture into it replaces it)")
    problem = None
    try:
        check_group(group, path)
    except StoreError as err:
        problem = str(err)
    checked, damaged = 0, []
    attrs = dict(group.attrs)
    for array, rows, fill_is_data in group_arrays(group):
        n, bad = check_array(array, rows, fill_is_data, manifest_of(attrs, array.basename))
        checked += n
        damaged += bad
    checksums = all(has_checksum(array) for array, _, _ in group_arrays(group))
    return GroupReport(group.basename, checked, damaged, problem, checksums, stats_cache_state(group),
                       bound=manifest_of(attrs, ACTS) is not None)


def verify_store(path) -> list[GroupReport]:
    """:func:`verify_group` of every model group of the store at ``path``.

    >>> [(report.group, report.ok) for report in verify_store("acts.zarr")]
    [('tiny-llama', True)]
    """
    root = open_root(path, mode="r")
    return [verify_group(root[name], path) for name in model_groups(root, include_half_created=True)]

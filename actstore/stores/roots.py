"""A store's root, opened once at the edge (where it is: :mod:`.location`), and its model groups."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .._version import SCHEMA_VERSION, __version__
from ..errors import StoreError, StoreNotFoundError
from .integrity import check_group, is_half_created
from .location import StoreLocation
from .schema import child, root_attrs


def _probe_url(url: str, shown: str, mode: str) -> None:
    """One synchronous look at an object store before zarr opens it, so that an unreachable
    endpoint, a denied access and a missing store are each named as what they are (zarr reads
    several keys at once and leaves a failed batch's other requests to be reported by the event
    loop as 'Exception ignored' tracebacks on stderr)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        found = fs.exists(f"{root.rstrip('/')}/zarr.json")
    except ImportError as err:
        raise StoreError(f"{shown!r}: opening this kind of URL needs a package that is not installed ({err}); "
                         "for s3:// install actstore[s3]", param="store") from None
    except PermissionError as err:
        raise StoreError(f"{shown!r}: access denied ({err}); check the credentials and the bucket's permissions",
                         param="store") from None
    except Exception as err:  # also botocore's and aiohttp's own classes for an unreachable endpoint
        if _is_credentials_error(err):
            raise StoreError(f"{shown!r}: no credentials for the object store ({type(err).__name__}: {err}); set "
                             "them (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                             "~/.aws/credentials) and try again") from None
        if _is_connection_error(err):
            raise StoreError(f"{shown!r}: cannot reach the object store ({err}); check the network and the "
                             "endpoint (e.g. AWS_ENDPOINT_URL)", param="store") from None
        if not isinstance(err, (OSError, ValueError)):
            raise
        raise StoreError(f"{shown!r}: the object store refused the request ({type(err).__name__}: {err})",
                         param="store") from None
    if not found and mode == "r":
        raise StoreNotFoundError(f"{shown!r} is not an actstore store (no zarr.json there); create one with "
                                 "'actstore capture'")


def _is_credentials_error(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says no credentials were found (botocore's
    ``NoCredentialsError``, ``PartialCredentialsError``, ``CredentialRetrievalError``; told by name:
    botocore comes with the s3 extra only)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "Credential" in type(err).__name__:
            return True
        err = err.__cause__ or err.__context__
    return False


def _is_connection_error(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) says the endpoint could not be reached."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = type(err).__name__
        if isinstance(err, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
            return True
        err = err.__cause__ or err.__context__
    return False


def _is_unborn(local: Path) -> bool:
    """A store folder that holds nothing but what a capture killed while writing its first file can
    leave: an empty root ``zarr.json`` (the file created, its bytes not yet on disk), or zarr's
    temporary ``zarr.<hex>.partial`` (killed before its rename), or both."""
    try:
        names = [p.name for p in local.iterdir()] if local.is_dir() else []
        return bool(names) and all(_STRAY_ROOT.fullmatch(name) or name == "zarr.json" and
                                   (local / name).is_file() and (local / name).stat().st_size == 0 for name in names)
    except OSError:
        return False


_STRAY_ROOT = re.compile(r"zarr\.[0-9a-f]{32}\.partial")


def _clear_unborn(local: Path) -> None:
    """Remove what a creation killed before its first write left (:func:`_is_unborn`): it holds nothing."""
    for entry in local.iterdir():
        entry.unlink(missing_ok=True)


def _what_it_is(local: Path | None) -> str:
    """What a local path without a root ``zarr.json`` holds, where that explains the refusal."""
    if local is not None and any((local / name).is_file() for name in (".zgroup", ".zarray", ".zattrs")):
        return "a Zarr v2 store: actstore reads the Zarr v3 stores it writes; create one with 'actstore capture'"
    inside = _inside_a_store(local)
    return f"no zarr.json: {inside}" if inside else "no zarr.json; create one with 'actstore capture'"


def _inside_a_store(local: Path | None) -> str | None:
    """For a path inside an actstore store (a model group, an array, a chunk folder): which store it
    is in and what to pass instead; else None."""
    if local is None:
        return None
    for parent in list(local.parents)[:4]:
        try:
            meta = json.loads((parent / "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("attributes"), dict) and \
                isinstance(meta["attributes"].get("actstore"), dict):
            parts = local.relative_to(parent).parts
            where = "" if len(parts) == 1 else "inside "
            return f"it is {where}group {parts[0]!r} of the actstore store {str(parent)!r}; pass the store"
    return None


def open_root(path: str | Path, mode: str = "r"):
    """Open the root group of a store; ``mode`` 'r' (must exist) or 'a'."""
    import zarr

    location = StoreLocation.parse(path)
    shown = str(location)
    path = location.spelling or shown
    local = location.local_path
    if local is not None and _is_unborn(local):
        if mode == "r":
            raise StoreNotFoundError(f"{path!r} holds only an empty or temporary zarr.json: its creation was "
                                     "interrupted before anything was written; capture into it again")
        _clear_unborn(local)  # a creation killed before its first write was on disk: it holds nothing
    if local is not None and not (local / "zarr.json").is_file():
        if mode == "r":
            raise StoreNotFoundError(f"{path!r} is not an actstore store ({_what_it_is(local)})")
        if local.exists() and (not local.is_dir() or any(local.iterdir())):
            raise StoreNotFoundError(
                f"{path!r} exists and is not a Zarr store; choose a new path for store=", param="store"
            )
    if location.is_url:
        _probe_url(path, shown, mode)
    try:
        # attributes= apply only when the root is created: it is written whole, in one write
        root = zarr.open_group(location.zarr_target, mode=mode, attributes=root_attrs() if mode != "r" else None)
    except FileNotFoundError:
        raise StoreNotFoundError(f"{shown!r} is not a Zarr store") from None
    except OSError:
        raise
    except Exception as err:  # zarr raises several types for "not a group" (metadata, JSON, node type)
        inside = _inside_a_store(local)
        raise StoreNotFoundError(f"{shown!r} is not a Zarr v3 group: {inside or err}") from None
    meta = root.attrs.get("actstore")
    if meta is None:
        if mode == "r" or len(list(root.keys())) > 0:
            inside = _inside_a_store(local)
            raise StoreNotFoundError(f"{shown!r} is a Zarr group but not an actstore store"
                                     + (f" ({inside})" if inside else ""))
        root.update_attributes(root_attrs())  # a root created by an older actstore, killed before its attrs
        meta = root.attrs["actstore"]
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        version = meta.get("schema_version") if isinstance(meta, dict) else meta
        raise StoreError(
            f"{shown!r} has actstore schema version {version!r}; this actstore "
            f"({__version__}) reads version {SCHEMA_VERSION}"
        )
    return root


def model_groups(root, include_half_created: bool = False) -> list[str]:
    """Names of the root's model groups; without those whose creation was interrupted
    (they hold no rows; the next capture into one replaces it) unless ``include_half_created``."""
    import zarr

    groups = ((name, child(root, name)) for name in member_names(root))
    return sorted(name for name, group in groups
                  if isinstance(group, zarr.Group) and (include_half_created or not is_half_created(group)))


def member_names(group) -> list[str]:
    """Names of a group's members, listed from the store without reading their metadata (one
    damaged member's ``zarr.json`` must not hide the others, nor be a bare JSON error)."""
    from zarr.core.sync import sync

    async def names() -> list[str]:
        store_path = group.store_path
        return [name async for name in store_path.store.list_dir(store_path.path)]

    return sorted(name for name in sync(names()) if name != "zarr.json")


def select_group(root, model: str | None, path: str | Path = "store"):
    """The group of ``model`` (group name, model id or the hub id a converted folder
    stands for); the only one if None."""
    names = model_groups(root)
    if not names:
        raise StoreError(f"{str(path)!r} holds no captured model yet")
    if model is None:
        if len(names) > 1:
            raise StoreError(
                f"{str(path)!r} holds several models ({', '.join(names)}); choose one with model_group=",
                param="model_group",
            )
        return _checked(root[names[0]], path)
    for name in names:
        group = root[name]
        if model in (name, group.attrs.get("model_id"), group.attrs.get("model_source")):
            return _checked(group, path)
    raise StoreError(f"{str(path)!r} has no model {model!r}; it holds: {', '.join(names)}")


def _checked(group, path):
    check_group(group, path)
    return group


def check_store_model(group_attrs, loaded, force: bool = False, store: str | Path = "store") -> None:
    """Refuse to use a group captured from other weights than ``loaded``'s (by fingerprint),
    unless ``force`` (then warn). ``group_attrs``: the group's attributes (``dict(group.attrs)``)."""
    import warnings

    from ..models.load import same_weights

    there = group_attrs.get("model_fingerprint")
    if same_weights(there, loaded):
        return
    source = group_attrs.get("model_source")
    message = (f"store {str(store)!r} was captured from {group_attrs.get('model_id')!r}"
               + (f" ({source})" if source else "") + f" with weights {there}, not from "
               f"{loaded.model_id!r} (weights {loaded.fingerprint})")
    if not force:
        raise StoreError(message + "; pass force=True to use it anyway", param="force")
    warnings.warn(message, stacklevel=2)

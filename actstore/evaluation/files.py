"""How every file of a sweep folder is written: whole or not at all, and a failed write named.

Two ways, and every byte of either goes through :func:`_write_bytes` (the one place bytes
reach a sweep folder: the kill-at-every-write test cuts writes there):

* :func:`replace_file`: the new contents go to a hidden partial file beside the target, reach
  the disk (fsync), and are renamed over it: a kill leaves the old file or the new one, and
  maybe a partial file that :func:`remove_partials` clears when the folder is opened again.
* :func:`append_file`: rows added at the end. A kill may leave a cut last line; readers ignore
  it and the folder's next writer cuts it off (:func:`drop_cut_line`). The ledger appends a
  configuration's rows before its results row commits it, so a cut line never belongs to a
  finished configuration.

An ``OSError`` (a full disk, a quota, permissions) becomes :class:`FolderWriteError`, which
names the file, the disk and what to do; the file is left as it was (an append is cut back).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import ActstoreError

PARTIAL = ".partial"


class FolderWriteError(ActstoreError, OSError):
    """A file of a sweep folder could not be written (the disk full, a quota, permissions).
    Nothing finished is lost: the same command resumes the folder once the cause is fixed."""


def _write_bytes(handle, data: bytes) -> None:
    """Every byte written to a sweep folder passes here (tests cut writes at this point)."""
    handle.write(data)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}")


def replace_file(path: str | Path, data: bytes | str) -> None:
    """``path`` holds ``data`` (str: UTF-8), replaced in one rename once it is on disk."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    tmp = _partial(path)
    try:
        with open(tmp, "wb") as handle:
            _write_bytes(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _named(err, path) from err


def append_file(path: str | Path, data: bytes | str) -> None:
    """``data`` added at the end of ``path`` (created if absent); on a failed write the file
    is cut back to its old length, so no half line stays behind."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    try:
        with open(path, "ab") as handle:
            size = handle.tell()
            try:
                _write_bytes(handle, data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(size)  # shrinking needs no space: the file is as it was
                raise
    except OSError as err:
        raise _named(err, path) from err


def drop_cut_line(path: str | Path) -> bool:
    """Cut off an appended file's last line if a kill cut it (no newline at its end); True if
    one was. The folder's writer calls it before appending again."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if not size:
        return False
    with open(path, "rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        end = size
        while end > 0:  # back to the last newline, a block at a time (the file may be large)
            start = max(0, end - 2**16)
            handle.seek(start)
            block = handle.read(end - start)
            if b"\n" in block:
                end = start + block.rfind(b"\n") + 1
                break
            end = start
        try:
            handle.truncate(end)
        except OSError as err:
            raise _named(err, path) from err
    return True


def complete_lines(data: bytes) -> bytes:
    """``data`` up to its last newline: what a reader keeps of a file being appended to."""
    return data[: data.rfind(b"\n") + 1]


# The files of a sweep folder (the ledger's and the report's): only their partial files are removed.
FOLDER_FILES = ("results.csv", "baseline.json", "items.csv", "windows.csv", "kl.csv", "generations.jsonl",
                "separation.csv", "frontier.csv", "contrasts.csv", "steerability.csv", "results.md", "frontier_*.png",
                "separation_*.png", "judge.txt")


def remove_partials(folder: str | Path) -> None:
    """Clear the partial files a kill left in ``folder`` (those of the sweep's own files, nothing
    else), and the ``.tmp`` files of earlier versions."""
    for pattern in FOLDER_FILES:
        for leftover in (*Path(folder).glob(f".{pattern}{PARTIAL}"), *Path(folder).glob(f"{pattern}.tmp")):
            leftover.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """The rename on disk too (a power cut after it keeps the new name); where a folder cannot be
    opened for that (some systems), the rename stands as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_ADVICE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this file system or a ulimit allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "the disk failed (input/output error)",
}


def _named(err: OSError, path: Path) -> FolderWriteError:
    folder = path.parent
    cause = _ADVICE.get(err.errno, err.strerror or str(err))
    disk = _mount_point(folder)
    where = f" (the disk mounted at {str(disk)!r})" if disk is not None else ""
    fix = ("free space there" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that")
    # errno and filename are left unset: OSError's str() would print them instead of this message
    return FolderWriteError(
        f"cannot write {str(path)!r}: {cause}{where}; the sweep folder {str(folder)!r} keeps every configuration "
        f"finished so far: {fix} and run the same command again to resume it, or use another --out")


def _mount_point(folder: Path) -> Path | None:
    try:
        path = folder.resolve()
        while not os.path.ismount(path) and path != path.parent:
            path = path.parent
        return path
    except OSError:
        return None


__all__ = ["FolderWriteError", "append_file", "complete_lines", "drop_cut_line", "remove_partials", "replace_file"]


SWEEP_MARKER = ".actstore-sweep"  # written when a sweep first takes an empty folder
SWEEP_FILES = ("results.csv", "items.csv", "windows.csv", "kl.csv", "generations.jsonl", "separation.csv")


def claim_folder(out_dir: Path, readonly: bool = False) -> None:
    """Make ``out_dir`` a sweep folder, or refuse one that holds files of a sweep's names that no sweep
    wrote: a resume rewrites and deletes those files, and actstore deletes nothing it did not write. A
    folder is a sweep's when it has the marker (written before any row) or baseline.json (older folders)."""
    if readonly:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / SWEEP_MARKER).exists() or (out_dir / "baseline.json").exists():
        return
    foreign = [name for name in SWEEP_FILES if (out_dir / name).exists()]
    if foreign:
        raise ActstoreError(f"{str(out_dir)!r} holds {', '.join(foreign)} but is not a sweep folder actstore wrote "
                            f"(no baseline.json, no {SWEEP_MARKER}); a sweep would rewrite or delete them: use "
                            "another --out folder, or move them away", param="out")
    replace_file(out_dir / SWEEP_MARKER, "actstore eval writes this folder\n")

"""The ``actstore`` command: a click group of thin commands over the library."""

from __future__ import annotations

import errno
import os
import re
import time
import traceback
import warnings
from pathlib import Path

import click

from .._version import __version__
from ..errors import ActstoreError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A user reads "Warning: <what>", not a source file and line of actstore's.
    click.echo(f"Warning: {message}", err=True)


class _Group(click.Group):
    """Turns :class:`ActstoreError` (a user mistake) into ``Error: ...`` and exit 1,
    and warnings into ``Warning: ...`` lines on stderr."""

    def invoke(self, ctx):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except ActstoreError as err:
                raise click.ClickException(_with_flags(str(err), err.params, self._subcommand(ctx))) from None
            except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
                raise
            except BrokenPipeError:  # the reader went away (`actstore enr ... | head -1`): click quiets it
                raise
            except Exception as err:  # the safety net: no user ever sees a stack trace unless --debug
                if ctx.meta.get("actstore.debug"):
                    raise
                raise click.ClickException(unexpected_error(err)) from None

    def _subcommand(self, ctx) -> click.Command | None:
        name = ctx.invoked_subcommand
        return self.get_command(ctx, name) if name else None


def _all_params(command: click.Command) -> list[click.Parameter]:
    """A command's parameters; for a group (``judge``, ``serve``, ``models``, ``vector``) its own and its
    subcommands', since the error reaches the top-level group after the subcommand's context is gone."""
    params = list(command.params)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            params += _all_params(sub)
    return params


def _with_flags(message: str, params: tuple[str, ...], command: click.Command | None) -> str:
    """The library names Python parameters (``offset=-1``); a CLI user reads the flag (``--offset -1``)."""
    if command is None:
        return message
    params_of = _all_params(command)
    options = {p.name: max(p.opts, key=len) for p in params_of if isinstance(p, click.Option)}
    flags = {p.name for p in params_of if isinstance(p, click.Option) and p.is_flag}
    for param in params:
        flag = options.get(param)
        if flag is not None and param in flags:  # "force=True" -> "--force": a flag takes no value
            message = re.sub(rf"(?<![\w'\"-]){re.escape(param)}=True\b", flag, message)
        if flag is not None:
            # "offset=-1" -> "--offset -1"; "pass name= to" and "offset must" -> "--name", "--offset";
            # never inside a quoted value ("classes are both 'pos'" keeps the class name).
            message = re.sub(rf"(?<![\w'\"-]){re.escape(param)}(?:(=)(?=\S)|=|\b(?!['\"]))",
                             lambda m, flag=flag: flag + (" " if m.group(1) else ""), message)
    return message


_ERRNO_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded: free space or write elsewhere",
    errno.EFBIG: "the file grew beyond the size this file system or a ulimit allows: write elsewhere",
    errno.EACCES: "permission denied: check the file's and its folder's permissions, or write elsewhere",
    errno.EPERM: "operation not permitted: check the file's permissions, or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "is a folder, not a file: give a file path",
    errno.ENOTDIR: "a part of the path is not a folder: check the path",
    errno.EIO: "input/output error: the disk or network file system failed; check it and retry",
}


def unexpected_error(err: BaseException) -> str:
    """The ``Error:`` line for an exception that is not an :class:`ActstoreError`: what happened and
    where (for the failures a user can cause or fix: disk, permissions, devices, files), and the
    path of the saved traceback."""
    saved = _save_traceback(err)
    where = f"; the traceback is saved in {saved}" if saved else ""
    known = _known_cause(err)
    if known is not None:
        return f"{known} (rerun with --debug for the traceback{where})"
    return (f"unexpected {type(err).__name__}: {err} -- this is a bug or a case actstore does not handle yet; "
            f"please report it with the saved traceback{where} (or rerun with --debug to see it)")


def _known_cause(err: BaseException) -> str | None:
    if isinstance(err, OSError) and err.errno is not None:
        advice = _ERRNO_ADVICE.get(err.errno, os.strerror(err.errno))
        target = err.filename if err.filename is not None else None
        return f"{target!r}: {advice}" if target is not None else f"{advice} ({err})"
    if isinstance(err, RecursionError):
        return ("an input file is nested too deeply to read (JSON nested thousands of levels deep?); "
                "give a flat list of items")
    if isinstance(err, MemoryError):
        return "out of memory: use a smaller --batch-size or window, or a machine with more memory"
    if isinstance(err, OverflowError):
        return f"a number is out of range: {err}; check the input file for values beyond 64-bit integers"
    name = type(err).__name__
    text = str(err)
    if name == "SafetensorError":
        return f"a safetensors file cannot be read: {text}; the file is damaged or not a safetensors file"
    if isinstance(err, RuntimeError | ValueError | AssertionError) and ("CUDA" in text or "device" in text.lower()):
        return (f"device error: {text.splitlines()[0] if text else name}; check --device (cpu, cuda, cuda:0, mps) "
                "and that this machine has that device")
    return None


def _save_traceback(err: BaseException) -> Path | None:
    from .._cache import cache_dir

    try:
        folder = cache_dir() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"actstore {__version__}\n" + "".join(traceback.format_exception(err)))
        return path
    except OSError:  # the disk is what failed: the message still goes out
        return None


def _debug(ctx, param, value) -> bool:
    ctx.meta["actstore.debug"] = bool(value)
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="actstore")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_debug,
              help="Show the Python traceback of an unexpected error (it is saved to a file otherwise).")
def cli() -> None:
    """Sparse activation steering on a streaming-statistics activation store.

    \b
    Pipeline:  capture -> stats -> extract (enr: its alias)
      actstore capture --model M --data pairs.json --layers 6 --store acts.zarr
      actstore stats   --store acts.zarr
      actstore enr     --store acts.zarr --layer 6 --k 64 --out vec.safetensors
      actstore extract --store acts.zarr --layer 6 --method pca --out pca.safetensors
      actstore project --store test.zarr --vector vec.safetensors --out monitor/
      actstore steer   --model M --vector vec.safetensors --alpha 4 --prompt "..." --compare
      actstore eval    --model M --store acts.zarr --data-test test.json --layers 6 --out sweep/
    """


def _register() -> None:
    from .capture import capture
    from .enr import enr, extract
    from .evaluate import evaluate
    from .judge import judge
    from .models import models
    from .project import project
    from .stats import info, stats, verify
    from .steer import steer
    from .vectors import vector

    for command in (capture, stats, info, verify, enr, extract, project, steer, evaluate, vector, models):
        cli.add_command(command)
    cli.add_command(judge)
    cli.add_command(__import__("actstore.cli.serve", fromlist=["serve"]).serve)


_register()


def main() -> None:
    cli(prog_name="actstore")


if __name__ == "__main__":
    main()

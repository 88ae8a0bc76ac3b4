"""The ``actstore`` command: a click group of thin commands over the library."""

from __future__ import annotations

import re
import warnings

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

    def _subcommand(self, ctx) -> click.Command | None:
        name = ctx.invoked_subcommand
        return self.get_command(ctx, name) if name else None


def _with_flags(message: str, params: tuple[str, ...], command: click.Command | None) -> str:
    """The library names Python parameters (``offset=-1``); a CLI user reads the flag (``--offset -1``)."""
    if command is None:
        return message
    options = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    for param in params:
        flag = options.get(param)
        if flag is not None:
            # "offset=-1" -> "--offset -1"; "pass name= to" and "offset must" -> "--name", "--offset".
            message = re.sub(rf"(?<![\w-]){re.escape(param)}(?:(=)(?=\S)|=|\b)",
                             lambda m, flag=flag: flag + (" " if m.group(1) else ""), message)
    return message


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="actstore")
def cli() -> None:
    """Sparse activation steering on a streaming-statistics activation store.

    \b
    Pipeline:  capture -> stats -> enr
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
    from .models import models
    from .project import project
    from .stats import info, stats
    from .steer import steer
    from .vectors import vector

    for command in (capture, stats, info, enr, extract, project, steer, evaluate, vector, models):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="actstore")


if __name__ == "__main__":
    main()

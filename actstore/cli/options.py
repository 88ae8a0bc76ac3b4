"""Options several commands share, declared once, and click types that convert strings once.

The same option means the same thing in every command: ``--store`` the store,
``--model-group`` a group of it, ``--scheduler`` the Dask scheduler. Old spellings
stay as hidden aliases that warn.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools

import click

from ..stats import SCHEDULER_HELP


class ShardType(click.ParamType):
    """``I/N`` -> ``(I, N)`` with 0 <= I < N."""

    name = "I/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        index, sep, count = str(value).partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
            self.fail(f"{value!r}: expected I/N with 0 <= I < N, e.g. 0/4", param, ctx)
        return int(index), int(count)


class SchedulerType(click.ParamType):
    """A Dask scheduler name, ``local:N`` (N >= 1) or a scheduler address."""

    name = "scheduler"
    NAMES = ("threads", "processes", "synchronous", "sync")

    def convert(self, value, param, ctx):
        value = str(value)
        if value.startswith("local:"):
            workers = value.partition(":")[2]
            if not workers.isdigit() or int(workers) < 1:
                self.fail(f"{value!r}: expected local:N with N >= 1 workers, e.g. local:2", param, ctx)
        elif value not in self.NAMES and ":" not in value:
            self.fail(f"{value!r}: expected one of {', '.join(self.NAMES)}, local:N or an address "
                      "such as tcp://host:8786", param, ctx)
        return value


class EscapedText(click.ParamType):
    """Text with backslash escapes (``\\n``, ``\\t``) understood."""

    name = "text"

    def convert(self, value, param, ctx):
        return codecs.decode(str(value), "unicode_escape")


def store_option(help_text: str = "Store written by `actstore capture`."):
    return click.option("--store", "-s", required=True, metavar="PATH.zarr", help=help_text)


def scheduler_option(help_prefix: str = ""):
    return click.option("--scheduler", default=None, type=SchedulerType(), metavar="NAME|local:N|ADDRESS",
                        help=help_prefix + SCHEDULER_HELP)


def _deprecated_alias(old: str, new: str):
    def callback(ctx, param, value):
        if value is not None:
            click.echo(f"Warning: {old} is deprecated here; use {new} (same meaning)", err=True)
        return value

    return callback


def model_group_option(function):
    """``--model-group``: which group of the store (group name or model id), needed when it
    holds several models; ``--model``/``-m`` is its deprecated spelling in stats and enr."""

    @click.option("--model-group", "model_group", default=None, metavar="GROUP|MODEL_ID",
                  help="Model group or model id (needed when the store holds several models).")
    @click.option("--model", "-m", "model_group_alias", default=None, hidden=True,
                  callback=_deprecated_alias("--model", "--model-group"))
    @functools.wraps(function)
    def wrapper(*args, model_group=None, model_group_alias=None, **kwargs):
        return function(*args, model_group=model_group or model_group_alias, **kwargs)

    return wrapper


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def take_record(cls, values: dict):
    """Build the frozen record ``cls`` from the click values named after its fields (removing them
    from ``values``): a command's options map onto records by name, so a new option is a field
    of the record and a click option, nothing in between."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: values.pop(name) for name in names if name in values})

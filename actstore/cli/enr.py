"""``actstore extract`` (every method; ``actstore enr`` is its documented alias)."""

from __future__ import annotations

import click

from ..vectors.info import k_label
from ..vectors.methods import DEFAULT_METHOD, EXTRACTION_METHODS, methods_help
from ..vectors.operators import OPERATORS
from .options import model_group_option, scheduler_option, store_option


def _extract_options(function):
    for option in reversed([
        store_option(),
        click.option("--layer", "-l", required=True, type=int, help="Captured decoder block to build the vector for."),
        click.option("--method", type=click.Choice(EXTRACTION_METHODS), default=DEFAULT_METHOD, show_default=True,
                     help=methods_help()),
        click.option("--k", "-k", type=click.IntRange(min=1), default=None,
                     help="Keep the k best-ranked coordinates (ENR for enr/whitened, |u_i| for pca, |w_i| sd_i "
                          "for probe/lda; 1 <= k <= hidden). Omitted: dense."),
        click.option("--dense", is_flag=True, help="The dense vector (same as omitting --k)."),
        click.option("--whiten", is_flag=True,
                     help="Same as --method whitened: rank the coordinates of Sigma^-1/2 v (Sigma: Ledoit-Wolf-"
                          "shrunk pooled within-class covariance, one more pass over the layer) and export "
                          "Sigma^1/2 of the kept part."),
        click.option("--probe-c", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="Inverse L2 strength of the probe (scikit-learn's C; coordinates standardised first)."),
        click.option("--pos", default="pos", show_default=True, help="Class the vector points towards."),
        click.option("--neg", default="neg", show_default=True, help="Class the vector points away from."),
        model_group_option,
        scheduler_option("Used for the statistics and for the pass over the layer that "
                         "whitened/pca/probe/lda make. "),
        click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
                     help="Output vector file (.safetensors): tensors vector, indices, enr + metadata (the same "
                          "format for every method, 'method' in its metadata)."),
        click.option("--top", type=click.IntRange(0), default=5, show_default=True,
                     help="How many of the top coordinates to print."),
        click.option("--operator", type=click.Choice(OPERATORS), default=OPERATORS[0], show_default=True,
                     help="How steering applies the vector, recorded in the file: add (h + alpha v), project "
                          "(h - alpha (h.u)u: remove the component along u = v/|v|; directional ablation) or "
                          "clamp (h + alpha (c - h.u)u: set it to --clamp-value). A sparse vector's u lives on "
                          "its kept coordinates."),
        click.option("--clamp-value", default=None, metavar="C|CLASS",
                     help="With --operator clamp: the value of the component along u, a number or a class "
                          "of the store (its mean projection onto u, from the statistics)."),
        click.option("--apply-layers", default="", metavar="L|all|L1-L2",
                     help="Where steering applies the operator: the vector's own layer (default), 'all', a "
                          "layer, a range L1-L2 or a list L1,L2. 'project' at 'all' is Arditi et al.'s ablation "
                          "(embeddings and every block's attention and MLP output), what 'actstore vector bake' "
                          "writes into the weights."),
    ]):
        function = option(function)
    return function


@click.command()
@_extract_options
def extract(**flags):
    """Build a steering vector from one store by any method (the same file format for all).

    \b
    ENR_i = |mu_pos_i - mu_neg_i| / sqrt(var_pos_i/n_pos + var_neg_i/n_neg); with --method enr
    the top-k coordinates keep their difference of means, the rest are zero.
    Compare methods at matched damage with:
      actstore eval ... --methods enr,pca,probe,lda
    """
    from .._files import check_output_path
    from ..vectors.build import build_vector, with_operator
    from ..vectors.methods import refinement
    from ..vectors.operators import Operator
    from ..vectors.vector import save_vector

    if flags["dense"] and flags["k"] is not None:
        raise click.UsageError("--dense and --k exclude each other")
    method = refinement(flags["method"]) if flags["whiten"] else flags["method"]
    Operator(flags["operator"], 0.0 if flags["operator"] == "clamp" else flags["clamp_value"],
             flags["apply_layers"])  # a bad operator is refused before the store is read
    if flags["operator"] == "clamp" and flags["clamp_value"] is None:
        raise click.UsageError("--operator clamp needs --clamp-value (a number or a class of the store)")
    check_output_path(flags["out"])  # before the work: a FIFO or a device is refused, not replaced
    vector = build_vector(flags["store"], flags["layer"], method, None if flags["dense"] else flags["k"],
                          pos=flags["pos"], neg=flags["neg"], model=flags["model_group"],
                          scheduler=flags["scheduler"], probe_c=flags["probe_c"])
    vector = with_operator(vector, flags["operator"], clamp_value=flags["clamp_value"], layers=flags["apply_layers"],
                           store=flags["store"], model=flags["model_group"])
    path = save_vector(vector, flags["out"])
    _print_vector(vector, path, flags["top"], "" if method == DEFAULT_METHOD else f" {method}")


def _print_vector(vector, path, top: int, method_note: str) -> None:
    info = vector.info
    kind = (k_label(None) if info.k is None else f"k={info.k}") + method_note
    if not info.operator.additive or info.operator.layers:
        kind += f" ({info.operator.describe()})"
    details = "".join(f", {key} {value}" for key, value in info.details)
    norm = float((vector.vector.astype("float64") ** 2).sum() ** 0.5)
    click.echo(f"wrote {kind} vector for layer {vector.layer} ({vector.hidden_size} dims, norm {norm:.4g}{details}) "
               f"to {path}")
    values = vector.extra.get("vector_whitened", vector.vector)
    basis = "whitened coordinate" if "vector_whitened" in vector.extra else "coordinate"
    for rank, index in enumerate(vector.indices[:top], start=1):
        click.echo(f"  #{rank}: {basis} {int(index)}  ENR {float(vector.enr[index]):.3f}  "
                   f"v {float(values[index]):+.4f}")


# `actstore enr` is `actstore extract` under its first name (the README's `actstore enr --k 64`).
enr = click.Command(
    "enr", callback=extract.callback, params=extract.params,
    help="Alias of `actstore extract` (the same options; --method defaults to enr): rank coordinates by "
         "effect-to-noise ratio and export a sparse steering vector.\n\n"
         "ENR_i = |mu_pos_i - mu_neg_i| / sqrt(var_pos_i/n_pos + var_neg_i/n_neg); the top-k coordinates keep "
         "their difference of means, the rest are zero.")

"""``actstore enr``."""

from __future__ import annotations

import click

from ..vector_info import EXTRACTION_METHODS
from .options import model_group_option, scheduler_option, store_option


@click.command()
@store_option()
@click.option("--layer", "-l", required=True, type=int, help="Captured decoder block to build the vector for.")
@click.option("--k", "-k", type=int, default=None,
              help="Keep the k coordinates of largest ENR (1 <= k <= hidden). Omitted: dense vector.")
@click.option("--dense", is_flag=True, help="The dense difference of means (same as omitting --k).")
@click.option("--whiten", is_flag=True,
              help="Rank the coordinates of Sigma^-1/2 v (Sigma: Ledoit-Wolf-shrunk pooled within-class "
                   "covariance, one more pass over the layer) and export Sigma^1/2 of the kept part.")
@click.option("--pos", default="pos", show_default=True, help="Class whose mean is added.")
@click.option("--neg", default="neg", show_default=True, help="Class whose mean is subtracted.")
@model_group_option
@scheduler_option("Used if statistics (or, with --whiten, the covariance) must be computed first. ")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Output vector file (.safetensors): tensors vector, indices, enr + metadata.")
@click.option("--top", type=click.IntRange(0), default=5, show_default=True,
              help="How many of the top coordinates to print.")
def enr(store, layer, k, dense, whiten, pos, neg, model_group, scheduler, out, top):
    """Rank coordinates by effect-to-noise ratio and export a sparse steering vector.

    ENR_i = |mu_pos_i - mu_neg_i| / sqrt(var_pos_i/n_pos + var_neg_i/n_neg); the
    top-k coordinates keep their difference of means, the rest are zero.
    """
    from .._files import check_output_path
    from ..vectors import enr as build
    from ..vectors import save_vector

    if dense and k is not None:
        raise click.UsageError("--dense and --k exclude each other")
    check_output_path(out)  # before the work: a FIFO or a device is refused, not replaced
    vector = build(store, layer, None if dense else k, pos=pos, neg=neg, model=model_group, scheduler=scheduler,
                   whiten=whiten)
    path = save_vector(vector, out)
    kind = ("dense" if vector.k is None else f"k={vector.k}") + (" whitened" if whiten else "")
    norm = float((vector.vector.astype("float64") ** 2).sum() ** 0.5)
    click.echo(f"wrote {kind} vector for layer {layer} ({vector.hidden_size} dims, norm {norm:.4g}) to {path}")
    values = vector.extra.get("vector_whitened", vector.vector)
    basis = "whitened coordinate" if whiten else "coordinate"
    for rank, index in enumerate(vector.indices[:top], start=1):
        click.echo(f"  #{rank}: {basis} {int(index)}  ENR {float(vector.enr[index]):.3f}  "
                   f"v {float(values[index]):+.4f}")


@click.command()
@store_option()
@click.option("--layer", "-l", required=True, type=int, help="Captured decoder block to build the vector for.")
@click.option("--method", type=click.Choice(EXTRACTION_METHODS), default="enr",
              show_default=True,
              help="enr: difference of means, top-k by ENR. whitened: top-k by ENR of Sigma^-1/2 v. "
                   "pca: first principal axis of the pos-neg pair differences (repeng's pca_diff; pairs joined "
                   "by pair_id), pointing along v. probe: L2 logistic regression weights (on standardised "
                   "coordinates, mapped back). lda: Sigma^-1 v, Sigma the shrunk pooled within-class "
                   "covariance. pca/probe/lda are steered as (u.v)u, u their unit direction.")
@click.option("--k", "-k", type=int, default=None,
              help="Keep the k best-ranked coordinates (ENR for enr/whitened, |u_i| for pca, |w_i| sd_i for "
                   "probe/lda). Omitted: dense.")
@click.option("--probe-c", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Inverse L2 strength of the probe (scikit-learn's C; coordinates standardised first).")
@click.option("--pos", default="pos", show_default=True, help="Class the vector points towards.")
@click.option("--neg", default="neg", show_default=True, help="Class the vector points away from.")
@model_group_option
@scheduler_option("Used for the statistics and for the pass over the layer that pca/probe/lda/whitened make. ")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Output vector file (.safetensors): the same format for every method, 'method' in its metadata.")
def extract(store, layer, method, k, probe_c, pos, neg, model_group, scheduler, out):
    """Build a steering vector by any method from one store (same file format for all).

    \b
    Compare them at matched damage with:
      actstore eval ... --methods enr,pca,probe,lda
    """
    from ..methods import build_vector, describe
    from ..vectors import save_vector

    vector = build_vector(store, layer, method, k, pos=pos, neg=neg, model=model_group, scheduler=scheduler,
                          probe_c=probe_c)
    path = save_vector(vector, out)
    norm = float((vector.vector.astype("float64") ** 2).sum() ** 0.5)
    click.echo(f"wrote {describe(vector)} vector for layer {layer} ({vector.hidden_size} dims, norm {norm:.4g}) "
               f"to {path}")

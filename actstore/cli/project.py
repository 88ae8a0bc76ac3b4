"""``actstore project``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import model_group_option, scheduler_option, store_option


@click.command()
@store_option()
@click.option("--vector", "-v", "vectors", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="Vector file (.safetensors) to project onto, at its own layer; repeat to compare vectors.")
@click.option("--pos", default="pos", show_default=True, help="Class expected to project higher.")
@click.option("--neg", default="neg", show_default=True, help="Class expected to project lower.")
@model_group_option
@scheduler_option("Runs the projection pass. ")
@click.option("--out", "-o", default=None, type=click.Path(file_okay=False),
              help="Also write, into this folder, projections.zarr (one variable per vector, the store's sample coordinates), "
                   "separation.csv (AUROC and Cohen's d with 95% intervals) and projections.png (histograms); "
                   "without it the table is only printed.")
@click.option("--no-plot", is_flag=True, help="With --out: skip projections.png.")
def project(store, vectors, pos, neg, model_group, scheduler, out, no_plot):
    """Project every sample of a store onto vectors; say how well they separate the classes.

    The projection is h.v/|v| at the vector's layer. Run it on a store of
    held-out texts (e.g. the test split, captured like the training set) to
    see whether a vector tells the classes apart without generating anything:
    AUROC (0.5 = chance) and Cohen's d, each with a bootstrap interval over pairs.
    """
    from ..evaluation.monitor import monitor
    from ..vectors.vector import load_vector

    named = []
    for path in vectors:
        stem = Path(path).stem
        name, suffix = stem, 2
        while name in [n for n, _ in named]:
            name, suffix = f"{stem}-{suffix}", suffix + 1
        named.append((name, load_vector(path)))
    table = monitor(store, named, out, model=model_group, pos=pos, neg=neg, scheduler=scheduler, plot=not no_plot)
    for row in table.to_dict("records"):
        click.echo(f"{row['vector']}: layer {row['layer']} {row['method']} k={row['k']}  "
                   f"AUROC {row['auroc']:.3f} [{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}]  "
                   f"d {row['cohens_d']:.2f} [{row['d_ci_low']:.2f}, {row['d_ci_high']:.2f}]  "
                   f"(n {row['n_pos']}+{row['n_neg']}{', paired' if row['paired'] else ''})")
    if out is not None:
        click.echo(f"wrote {Path(out) / 'separation.csv'}, projections.zarr" + ("" if no_plot else ", projections.png"))

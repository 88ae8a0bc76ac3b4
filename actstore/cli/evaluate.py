"""``actstore eval``."""

from __future__ import annotations

from pathlib import Path

import click

from ..stats import SCHEDULER_HELP

_DEFAULT_TEXT = Path("..") / "shared" / "data" / "wikitext-2" / "test.txt"


@click.command(name="eval")
@click.option("--model", "-m", required=True, metavar="ID|PATH", help="The model the store was captured from.")
@click.option("--store", "-s", required=True, metavar="PATH.zarr", help="Store with the training activations.")
@click.option("--model-group", default=None, help="Model group in the store (stores with several models).")
@click.option("--data-test", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Held-out A/B items (pairs ending in '(A)'/'(B)', or CAA items), e.g. caa-pairs/refusal/test.json.")
@click.option("--layers", "-l", required=True, help="Layers to sweep, e.g. '4,6,8' (must be in the store).")
@click.option("--k", "ks", default="8,16,32,64,128,dense", show_default=True,
              help="Values of k to sweep; 'dense' is the dense difference of means.")
@click.option("--alpha", "alphas", default="1,2,4,8", show_default=True, help="Steering scales to sweep.")
@click.option("--normalize", is_flag=True,
              help="Make --alpha the norm of what is added (each vector scaled to unit norm first): "
                   "compares sparse and dense vectors at equal intervention size.")
@click.option("--methods", default="enr", show_default=True,
              help="Vector methods to compare: 'enr' (top-k by ENR), 'whitened' (top-k by ENR of "
                   "Sigma^-1/2 v), or 'enr,whitened'.")
@click.option("--text", type=click.Path(dir_okay=False), default=str(_DEFAULT_TEXT), show_default=True,
              help="Text for the perplexity (off-target damage).")
@click.option("--ppl-tokens", type=click.IntRange(16), default=4096, show_default=True,
              help="Tokens of --text to measure perplexity on (the paper used 50K of the Pile).")
@click.option("--max-items", type=click.IntRange(1), default=None, help="Use only the first N A/B items.")
@click.option("--behavior", default=None, help="Name in the tables (default: the folder of --data-test).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for results.csv, results.md, summary.json and the plots; a rerun resumes it.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=8, show_default=True)
@click.option("--scheduler", default=None, metavar="NAME|local:N|ADDRESS",
              help="Used if statistics (or covariances for 'whitened') must be computed first. "
                   + SCHEDULER_HELP)
@click.option("--force", is_flag=True, help="Use the store even if it was captured from other model weights.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate(model, store, model_group, data_test, layers, ks, alphas, normalize, methods, text, ppl_tokens,
             max_items, behavior, out, batch_size, scheduler, force, quiet):
    """Sweep layer x k x alpha: on-target A/B shift against perplexity inflation.

    Reuses the store's cached statistics, builds each vector, steers the model
    and measures both effects; writes a tidy results.csv (one row per
    configuration), results.md with the paper's summaries, and the plots
    retained_vs_k.png and inflation_vs_k.png.
    """
    from ..errors import ActstoreError
    from ..evaluate import read_ab_items, read_text_tokens
    from ..models import load_model, parse_layers
    from ..stores.zarr_store import open_root, select_group
    from ..sweep import parse_floats, parse_ks, run_sweep

    loaded = load_model(model)
    # Attributes only: opening the whole store would load every per-sample coordinate.
    attrs = dict(select_group(open_root(store), model_group, store).attrs)
    if attrs.get("model_fingerprint") != loaded.fingerprint and not force:
        raise ActstoreError(
            f"store {store!r} was captured from {attrs.get('model_id')!r} ({attrs.get('model_fingerprint')}), "
            f"not from {model!r} ({loaded.fingerprint}); pass --force to evaluate anyway"
        )
    items = read_ab_items(data_test)[:max_items]
    ppl_ids = read_text_tokens(loaded.tokenizer, text, ppl_tokens)
    results = run_sweep(
        loaded, store, out, items=items, ppl_ids=ppl_ids, layers=parse_layers(layers, loaded.num_layers),
        ks=parse_ks(ks), alphas=parse_floats(alphas, "--alpha"),
        methods=[m.strip() for m in methods.split(",") if m.strip()], normalize=normalize,
        behavior=behavior or Path(data_test).resolve().parent.name, model_group=model_group,
        batch_size=batch_size, scheduler=scheduler, progress=not quiet,
    )
    click.echo(f"{len(results)} configurations in {out}/results.csv; report: {out}/results.md, "
               f"plots: {out}/retained_vs_k.png, {out}/inflation_vs_k.png")

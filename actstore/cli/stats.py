"""``actstore stats`` and ``actstore info``."""

from __future__ import annotations

import json

import click

from .options import model_group_option, quiet_option, scheduler_option, store_option


@click.command()
@store_option()
@model_group_option
@scheduler_option()
@click.option("--force", is_flag=True, help="Recompute even if cached statistics are up to date.")
@quiet_option
def stats(store, model_group, scheduler, force, quiet):
    """Per class and layer: count, mean and unbiased variance (float64).

    One streaming Dask pass (Welford/Chan merges) over the store; the results
    are cached in the store and reused until new data is appended.
    """
    from ..stats import compute_stats

    result = compute_stats(store, model_group, scheduler=scheduler, force=force, progress=not quiet)
    counts = result["count"]
    click.echo(f"statistics of {store} group {result.attrs['group']!r} "
               f"({result.attrs['n_samples']} samples, layers {list(map(int, result['layer'].values))}):")
    for label in result["class"].values:
        n = int(counts.sel({"class": label}).max())
        click.echo(f"  class {str(label)!r}: n={n}")


@click.command()
@click.argument("store", metavar="PATH.zarr")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(store, as_json):
    """Models, layers, classes and counts, dtype and size on disk of a store."""
    from ..stores import store_info

    summary = store_info(store)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"store {summary['store']}")
    if not summary["models"]:
        click.echo("  (no models captured yet)")
    for m in summary["models"]:
        size = m["bytes_on_disk"]
        size_text = f"{size / 2**20:.1f} MiB" if size is not None else "unknown"
        source = f" (converted from {m['model_source']})" if m.get("model_source") else ""
        click.echo(f"  group {m['group']!r}: model {m['model_id']}{source}")
        click.echo(f"    layers {m['layers']}, hidden {m['hidden_size']}, position {m['position']}, site {m['site']}, "
                   f"dtype {m['dtype']}, {m['n_samples']} samples, {size_text} on disk")
        click.echo("    classes: " + ", ".join(f"{k}={v}" for k, v in m["classes"].items()))
        for r in m["runs"]:
            state = {"complete": "complete", "interrupted": "INTERRUPTED (use --resume)"}.get(
                r["state"], f"{r.get('merged')}/{r.get('shards')} shards merged (run the unfinished ones with "
                            "--shard I/N)")
            click.echo(f"    run {r['source']}: {r['texts_done']}/{r['n_texts']} texts, {state}")
        if m["stats_only"]:
            click.echo("    statistics only (captured with --stats-only: no activations stored)")
        else:
            click.echo(f"    statistics: {'cached' if m['has_stats'] else 'not computed'}")

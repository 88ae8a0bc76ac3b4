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
    from ..stats.streaming import compute_stats

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
        if m.get("problem"):
            click.echo(f"  group {m['group']!r}: cannot be read: {m['problem']}")
            continue
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
            twins = ", each pair with its option-swapped twin" if r.get("swap_options") else ""
            click.echo(f"    run {r['source']}: {r['texts_done']}/{r['n_texts']} texts{twins}, {state}")
        if m["stats_only"]:
            click.echo("    statistics only (captured with --stats-only: no activations stored)")
        else:
            click.echo(f"    statistics: {'cached' if m['has_stats'] else 'not computed'}")


@click.command()
@click.argument("store", metavar="PATH.zarr")
def verify(store):
    """Read every chunk of a store and say what is damaged and what is still good.

    Checks each chunk's checksum (stores written before checksums: that chunks are
    present and finite) and that it sits at its place (chunk files exchanged between
    places each pass their own checksum), that each group's attributes describe its
    arrays, and the statistics cache. Exit status 1 if anything is damaged.
    """
    from ..stores.verify import verify_store

    reports = verify_store(store)
    click.echo(f"store {store}: {len(reports)} group(s)" + ("" if reports else " (it holds no captured model yet)"))
    damaged = 0
    for report in reports:
        state = "ok" if report.ok else "DAMAGED"
        click.echo(f"  group {report.group!r}: {state}, {report.checked - len(report.damaged)} of "
                   f"{report.checked} chunks good")
        if report.problem:
            click.echo(f"    {report.problem}")
        for damage in report.damaged:
            click.echo(f"    {damage}")
        if not report.checksums and report.checked:
            click.echo("    no checksums (written by an older actstore): a changed bit inside a chunk cannot be "
                       "detected, only missing chunks and non-finite values")
        if not report.bound and report.checked:
            click.echo("    no record of each chunk's place (written by an older actstore): chunk files exchanged "
                       "between places cannot be detected")
        if report.stats.startswith("damaged"):
            click.echo(f"    statistics cache {report.stats} ('actstore stats' recomputes it)")
        damaged += not report.ok
    if damaged:
        raise click.ClickException(f"{damaged} of {len(reports)} group(s) of {store!r} are damaged; capture "
                                   "them again into a new store (or restore the store from a copy)")
    click.echo("no damage found")

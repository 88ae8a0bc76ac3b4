"""``actstore judge``: the judge of generated text, validated before it is believed.

``judge validate``: flags -> :func:`~actstore.evaluation.judges.make_judge`, labelled rows from
:func:`~actstore.evaluation.judges.read_labelled` -> one library call,
:func:`~actstore.evaluation.judges.validate_judge`; the per-item CSV and its JSON beside it."""

from __future__ import annotations

import click

from ..models.load import DTYPES
from .options import quiet_option


@click.group()
def judge():
    """Judges that rate generated text on AxBench's rubrics (concept, instruction, fluency)."""


@judge.command()
@click.option("--judge-model", default=None, metavar="ID|PATH",
              help="Local judge: a Hugging Face causal LM (hub id or folder). Default: the embedded "
                   "SmolLM2-135M-Instruct (`actstore models demo --instruct`).")
@click.option("--judge-url", default=None, metavar="URL",
              help="Instead of --judge-model: an OpenAI-compatible server (e.g. a vLLM server, `actstore serve`) "
                   "whose top log-probs rate each item.")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Labelled rows (prompt, response, label: positive, negative or hard negative) as JSON, JSONL, "
                   "CSV or Parquet, or an AxBench parquet file (input, output, category, concept_id), e.g. "
                   "axbench-concept10/prod_2b_l10_v1/latent_eval_data.parquet.")
@click.option("--concept", default=None,
              help="The concept's text the judge rates for. Default: with an AxBench --data and --concept-id, the "
                   "concept's text from metadata.jsonl beside it.")
@click.option("--concept-id", type=click.IntRange(0), default=None,
              help="With an AxBench --data: the concept whose rows are rated (needed when it holds several).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="CSV of one row per item (label, rating); the validation goes to <out>.json for reports.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=8, show_default=True,
              help="Prompts per forward pass of a local judge.")
@click.option("--max-items", type=click.IntRange(1), default=None,
              help="Rate only the first N items of each label (default: all).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--resamples", type=click.IntRange(1), default=2000, show_default=True,
              help="Bootstrap resamples of items (within each label) for the AUROC intervals.")
@click.option("--device", default="cpu", show_default=True, help="torch device of a local judge.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help="dtype a local judge runs in.")
@quiet_option
def validate(**flags):
    """Rate labelled responses on the concept rubric and print how well the ratings separate them.

    Prints `AUROC x [lo, hi]` of positive against negative and against hard negative (95%
    percentile bootstrap over items, resampled within each label). A judge whose AUROC is
    near 0.5 cannot tell the concept apart, and its ratings should not be believed; even a
    good small judge supports only orderings and paired differences within itself.
    """
    import time

    from ..evaluation.judges import JUDGE_CAVEAT, make_judge, read_labelled, validate_judge

    rows = read_labelled(flags["data"], flags["concept_id"])
    concept = flags["concept"] if flags["concept"] is not None else rows.attrs.get("concept")
    if concept is None:
        raise click.UsageError("--concept: give the concept's text (or an AxBench --data with --concept-id "
                               "and metadata.jsonl beside it)")
    if flags["max_items"] is not None:
        rows = rows.groupby("label", sort=False).head(flags["max_items"]).reset_index(drop=True)
    started = time.perf_counter()
    rater = make_judge("axbench", judge_model=flags["judge_model"], judge_url=flags["judge_url"],
                       batch_size=flags["batch_size"], progress=not flags["quiet"], device=flags["device"],
                       dtype=flags["dtype"])
    validation = validate_judge(rater, rows, concept, n_boot=flags["resamples"], seed=flags["seed"])
    json_path = validation.write(flags["out"])
    click.echo(f"judge {validation.judge} on {concept!r}: {validation.summary()}")
    click.echo(f"{len(rows)} items rated in {time.perf_counter() - started:.0f} s; per item: {flags['out']}, "
               f"summary: {json_path}. Note: {JUDGE_CAVEAT}.")

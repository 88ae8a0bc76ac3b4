"""``actstore capture``: flags -> a model spec, capture options and group options -> one library call."""

from __future__ import annotations

from pathlib import Path

import click

from ..capture import POSITIONS
from ..models.blocks import SITES
from ..stores.schema import AUTO_CODEC, CODEC_CHOICES, STORE_DTYPES
from .options import EscapedText, ShardType, model_options, quiet_option, scheduler_option, take_record


class DataPath(click.Path):
    """An existing file, or a folder that holds a dataset (Parquet files, or what save_to_disk wrote)."""

    def __init__(self):
        super().__init__(exists=True)

    def convert(self, value, param, ctx):
        from ..inputs.sources import is_dataset_folder

        path = super().convert(value, param, ctx)
        if Path(path).is_dir() and not is_dataset_folder(path):
            self.fail(f"{str(path)!r} is a directory that holds no dataset: expected a contrast-set file "
                      "(.json, .jsonl), a corpus (.txt), a .parquet file or folder of them, or a folder written "
                      "by save_to_disk", param, ctx)
        return path


class CallableType(click.ParamType):
    """``module:function``: a Python callable, imported."""

    name = "module:function"

    def convert(self, value, param, ctx):
        import importlib

        if callable(value):
            return value
        module, _, name = str(value).partition(":")
        try:
            found = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError, ValueError) as err:
            self.fail(f"{value!r}: no such callable ({err}); expected module:function, e.g. mypackage.filters:keep",
                      param, ctx)
        if not name or not callable(found):
            self.fail(f"{value!r} is not a callable; expected module:function", param, ctx)
        return found


_RESPOND = ("system_pos", "system_neg", "max_new_tokens", "temperature", "seed", "keep_if", "responses")


@click.command()
@model_options
@click.option("--data", "-d", required=True, type=DataPath(),
              help="Contrast set: A/B items (question, answer_matching_behavior, answer_not_matching_behavior), "
                   "pairs (positive, negative), chat exchanges (prompt, response, optional label, pair_id, system; "
                   "or prompt, positive, negative: two responses to one prompt, a pair) or labeled texts (text, "
                   "optional label), as a JSON list, JSONL or "
                   "a Hugging Face dataset on disk (a folder written by save_to_disk, an .arrow file, a .parquet "
                   "file or a folder of them): the same rows give the same store in every format. A labeled "
                   "dataset that is not an A/B set is read window by window whatever its size (see --text-column, "
                   "--label-column). Or a plain-text corpus (.txt) for a one-class capture, cut "
                   "into windows of --max-length tokens (default 512 for a corpus).")
@click.option("--layers", "-l", default="all", show_default=True,
              help="Decoder blocks to capture (0-based): one ('6'), several ('2,6,10') or 'all'.")
@click.option("--store", "-s", required=True, metavar="PATH.zarr",
              help="Zarr store to create or append to (one group per model).")
@click.option("--position", type=click.Choice(POSITIONS), default="last", show_default=True,
              help="last: last real token of each text; mean: mean over real tokens; "
                   "all: every real token as its own sample (for chat exchanges with its 'role': system, user, "
                   "assistant, template, and its 'response_index'). For chat exchanges (records with 'prompt' and "
                   "'response', or --respond): prompt-last, the last token before the assistant's response "
                   "starts; response-mean, the mean over the response's tokens; response-all, each of them.")
@click.option("--offset", type=click.IntRange(0), default=None,
              help="With --position last: capture the token this many before the last one. Default: 1 for "
                   "an A/B set (every text ends in '(A)', '(B)', ...: the answer letter, as CAA reads it), "
                   "else 0; --offset 0 takes the final ')' of an A/B set.")
@click.option("--site", type=click.Choice(SITES), default="resid", show_default=True,
              help="What to read in each block: resid, its output (the residual stream); attn, the output of "
                   "its attention module; mlp, the output of its MLP (what each adds to the residual stream, "
                   "before any post-norm the block applies). Recorded in the store; vectors from it steer there.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=8, show_default=True,
              help="Texts per forward pass (texts are batched by length to save padding).")
@click.option("--store-dtype", type=click.Choice(STORE_DTYPES), default="float32", show_default=True,
              help="dtype activations are stored in: float16 halves the store but refuses values beyond "
                   "+-65504 (gemma's massive coordinates exceed it); bfloat16 halves it with float32's range "
                   "(8 significant bits, relative error <= 2^-8 = 0.4%; stored as uint16 bits, read back as float32 by "
                   "open_store). Figures: benchmarks/RESULTS.md (bench_store_dtype.py).")
@click.option("--codec", type=click.Choice(CODEC_CHOICES), default=AUTO_CODEC, show_default=True,
              help="Compression of a new group's activations. auto: none for one row per text, lz4 for "
                   "--position all (texts sharing a prompt compress 1.6x there). none (fastest to read: about 2x "
                   "lz4; float32 activations of distinct texts compress only 1.04x with lz4, 1.10x with zstd), lz4 (Blosc LZ4 + "
                   "shuffle, fast to decode), zstd (smaller: 1.3x less than lz4 on A/B pairs with --position all, "
                   "slower to read). Every chunk carries a CRC32C checksum whatever the codec.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted capture of the same file and settings where it stopped.")
@click.option("--name", default=None,
              help="Store group name (default: derived from the model id or folder name).")
@click.option("--separator", type=EscapedText(), default="\\n", show_default=True,
              help="Joins an A/B question and its answer; escapes like \\n are understood.")
@click.option("--chat-template", is_flag=True,
              help="Format texts with the tokenizer's chat template: a chat exchange (records with 'prompt' and "
                   "'response'; or 'prompt', 'positive', 'negative': two responses to one prompt) and an A/B item "
                   "(question, answer) as a user turn and an assistant turn; other texts as one user turn with the "
                   "generation prompt. Without it an exchange reads prompt, a blank line, response; an A/B item "
                   "question, --separator, answer. The store records the template's hash.")
@click.option("--system", default=None, metavar="TEXT",
              help="A system prompt before each text: with --chat-template a system turn, without it a paragraph "
                   "before the text. Recorded in the store.")
@click.option("--max-length", type=click.IntRange(1), default=None,
              help="Longest text in tokens; longer texts keep their last tokens, with a warning "
                   "(default: the model's context length). A .txt corpus is cut into windows of this many "
                   "tokens, special tokens included (default 512).")
@click.option("--text-column", default=None, metavar="NAME",
              help="The column (dataset) or key (JSON) of texts (default: 'text'); naming it reads the rows as "
                   "labeled texts.")
@click.option("--label-column", default=None, metavar="NAME",
              help="The column (dataset) or key (JSON) of class labels (strings, integers or a ClassLabel, "
                   "whose names are used). Default: 'label' when the rows have it (the Hugging Face "
                   "convention), else none; --label-column '' reads no labels. Without labels every text is of "
                   "class 'text'. A missing label (null, NaN, ClassLabel -1) is refused with its row.")
@click.option("--new-run", is_flag=True,
              help="Capture a file this group already holds under other settings (e.g. another --system) as a run "
                   "of its own. Without it that is refused, naming what changed: its texts would be added again.")
@click.option("--no-swap-options", "swap_options", is_flag=True, flag_value=False, default=True,
              help="Capture an A/B set as written. By default each pair is followed by its option-swapped twin "
                   "(the texts of the matching and the other option exchanged, and the answer letters with them), "
                   "so every question shows its matching answer once under each letter and a vector cannot learn "
                   "the letter; the store's 'question' and 'order' coordinates say which row is which.")
@click.option("--no-early-exit", "stop_early", is_flag=True, flag_value=False, default=True,
              help="Run the whole model instead of stopping after the deepest captured block "
                   "(only useful to measure what early exit saves).")
@click.option("--shard", default=None, type=ShardType(), metavar="I/N",
              help="Capture only the I-th of N contiguous slices of --data (0-based), e.g. 0/4 .. 3/4, so that "
                   "N processes or GPUs of one machine capture one file into one store at once. Shards never "
                   "touch each other's data; each finished shard is merged in order (under a lock of this "
                   "machine: across machines use --scheduler), and once all are done the store equals a "
                   "single-process capture. Rerunning a shard continues it.")
@scheduler_option("Capture on a dask.distributed cluster instead: 'local:N' starts N worker processes, an "
                  "address (tcp://host:8786) uses a running cluster. Each worker loads the model once and "
                  "captures shards; --data, --model and --store must be reachable from every worker. ")
@click.option("--shards", type=click.IntRange(1), default=None,
              help="With --scheduler: number of shards (default: one per worker).")
@click.option("--stats-only", is_flag=True,
              help="Store no activations, only per-class count/mean/variance, reduced on --device during the "
                   "forward passes (float64) and committed after every window: for contrast sets whose "
                   "activations would not fit on disk (e.g. --position all --layers all). `actstore stats` and "
                   "`enr` then read them; --whiten needs the activations.")
@click.option("--respond", is_flag=True,
              help="On-policy capture (the persona-vectors recipe): --data is a file of questions (field 'prompt' "
                   "or 'question', or --text-column); the model answers each under --system-pos and under "
                   "--system-neg, and those exchanges are captured (pairs pos/neg by question; read them at "
                   "--position response-mean). The responses are in the store ('response') and in a JSONL file "
                   "(--responses); an interrupted run continues with --resume.")
@click.option("--system-pos", default=None, metavar="TEXT", help="With --respond: the positive system prompt.")
@click.option("--system-neg", default=None, metavar="TEXT", help="With --respond: the negative system prompt.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=None,
              help="With --respond: the longest response, in tokens (default 64).")
@click.option("--temperature", type=click.FloatRange(0), default=None,
              help="With --respond: 0 (the default) answers greedily; above 0 samples at this temperature.")
@click.option("--seed", type=int, default=None,
              help="With --respond and --temperature: the sampling seed (default 0; each batch is seeded from it, "
                   "so a rerun writes the same responses).")
@click.option("--keep-if", type=CallableType(), default=None,
              help="With --respond: module:function, called as function(question, response, label) -> bool; a "
                   "question is captured only if both its responses are kept (none is built in: scorers need "
                   "the evaluation package).")
@click.option("--responses", type=click.Path(dir_okay=False), default=None, metavar="PATH.jsonl",
              help="With --respond: where the responses are written (default: actstore's cache, named by the "
                   "model, the questions and the settings).")
@quiet_option
def capture(data, store, resume, shard, scheduler, shards, quiet, respond, **fields):
    """Run a causal LM over a contrast set and store residual activations.

    Chat exchanges (records with 'prompt' and 'response') are a user turn and an assistant turn:
    read them at --position prompt-last, response-mean or response-all.

    Layer L is the output of decoder block L (or, with --site, of its attention or MLP). Activations stream to the store
    window by window; an interrupted capture keeps everything committed and
    continues with --resume.
    """
    from ..capture import CaptureOptions, capture_on_cluster, capture_to_store
    from ..models.load import ModelSpec
    from ..stores.schema import GroupOptions

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if shards is not None and scheduler is None:
        raise click.UsageError("--shards goes with --scheduler (for one shard of a capture use --shard I/N)")
    if scheduler is not None and shard is not None:
        raise click.UsageError("--shard and --scheduler exclude each other: the cluster runs every shard")
    # Each option goes to the record with its name; every record is checked here, before a model
    # loads or a cluster starts.
    model_spec = take_record(ModelSpec, fields)
    responding = {name: fields.pop(name) for name in _RESPOND if fields.get(name) is not None}
    fields = {name: value for name, value in fields.items() if name not in _RESPOND}
    if responding and not respond:
        raise click.UsageError(f"--{sorted(responding)[0].replace('_', '-')} goes with --respond")
    if respond and (scheduler is not None or shard is not None):
        raise click.UsageError("--respond captures in one process: leave out --scheduler and --shard")
    fields["progress"] = not quiet
    options = take_record(CaptureOptions, fields)
    group = take_record(GroupOptions, fields)
    if fields:
        raise RuntimeError(f"capture options {sorted(fields)} belong to no record")
    if scheduler is not None:
        reports = capture_on_cluster(model_spec, data, store, scheduler=scheduler, shards=shards, options=options,
                                     group=group)
        click.echo(f"captured {sum(r.n_texts_captured for r in reports)} texts "
                   f"({sum(r.n_samples_written for r in reports)} samples) from {data} in {len(reports)} shards "
                   f"into {store} group {reports[0].group!r}; {reports[0].merged_shards}/{len(reports)} merged")
        return

    if respond:
        _capture_responses(model_spec, data, store, options, group, resume, responding)
        return
    loaded = model_spec.load()
    try:
        report = capture_to_store(loaded, data, store, options=options, group=group, resume=resume, shard=shard)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: everything committed so far is kept in {store}; "
                   "rerun the same command with --resume to continue", err=True)
        raise SystemExit(130) from None
    _print_report(report, data, store, shard, group)


def _capture_responses(model_spec, data, store, options, group, resume, responding: dict) -> None:
    from ..capture import RespondOptions, capture_responses

    for name in ("system_pos", "system_neg"):
        if name not in responding:
            raise click.UsageError(f"--respond needs --{name.replace('_', '-')}")
    respond = RespondOptions(**responding)
    loaded = model_spec.load()
    try:
        report = capture_responses(loaded, data, store, respond, options=options, group=group, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: the responses written so far and everything committed are kept in {store}; "
                   "rerun the same command with --resume to continue", err=True)
        raise SystemExit(130) from None
    kept, asked = report.kept
    click.echo(f"{data}: the model answered {asked} questions under both system prompts (responses in "
               f"{report.responses}); {kept} kept")
    _print_report(report, report.responses, store, None, group)


def _print_report(report, data, store, shard, group) -> None:
    if report.note:
        click.echo(f"{data} is an A/B set: captured at the answer letter (position {report.position}), as CAA "
                   "reads it; --offset 0 captures the final ')'")
    if report.twins:
        click.echo(f"{data}: each pair captured with its option-swapped twin (order 1 in the store); "
                   "--no-swap-options captures the texts as written")
    if shard is not None:
        merged = f"{report.merged_shards}/{shard[1]} shards merged into the group so far"
        click.echo(f"shard {shard[0]}/{shard[1]}: captured {report.n_texts_captured} of its {report.n_texts} "
                   f"texts ({report.n_samples_written} samples) into {store}; {merged}")
        return
    if report.skipped >= report.n_texts:
        click.echo(f"{data}: already captured completely in {store} (group {report.group}); nothing to do")
        return
    click.echo(
        f"captured {report.n_texts_captured} texts ({report.n_samples_written} samples, "
        f"{report.n_tokens} tokens) from {data} into {store} group {report.group!r} "
        f"in {report.seconds:.1f} s ({report.tokens_per_second:.0f} tokens/s)"
        + ("; statistics only, no activations stored" if group.stats_only else "")
    )

"""``actstore capture``."""

from __future__ import annotations

import codecs

import click

from ..capture import POSITIONS
from ..models import DTYPES
from ..stores.zarr_store import STORE_DTYPES


@click.command()
@click.option("--model", "-m", required=True, metavar="ID|PATH",
              help="Hugging Face hub id or local folder saved with save_pretrained "
                   "(`actstore models demo` prints the embedded gemma-3-270m folder).")
@click.option("--gguf-file", default=None, metavar="FILE",
              help="Name of a GGUF checkpoint inside --model to load (dequantised on load; slow).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option("--data", "-d", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Contrast set: JSON list or JSONL of A/B items (question, answer_matching_behavior, "
                   "answer_not_matching_behavior), pairs (positive, negative) or labeled texts (text, label).")
@click.option("--layers", "-l", default="all", show_default=True,
              help="Decoder blocks to capture (0-based): one ('6'), several ('2,6,10') or 'all'.")
@click.option("--store", "-s", required=True, metavar="PATH.zarr",
              help="Zarr store to create or append to (one group per model).")
@click.option("--position", type=click.Choice(POSITIONS), default="last", show_default=True,
              help="last: last real token of each text; mean: mean over real tokens; "
                   "all: every real token as its own sample.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="With --position last: capture the token this many before the last one. For A/B "
                   "texts ending in '(A)', --offset 1 takes the answer letter, as CAA does.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=8, show_default=True,
              help="Texts per forward pass (texts are batched by length to save padding).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help="dtype the model runs in.")
@click.option("--store-dtype", type=click.Choice(STORE_DTYPES), default="float32", show_default=True,
              help="dtype activations are stored in (float16 halves the store; overflow is refused).")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, mps.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted capture of the same file and settings where it stopped.")
@click.option("--name", default=None,
              help="Store group name (default: derived from the model id or folder name).")
@click.option("--blocks", default=None, metavar="ATTR.PATH",
              help="Dotted path of the decoder-block ModuleList for architectures actstore "
                   "does not know (e.g. model.layers).")
@click.option("--separator", default="\\n", show_default=True,
              help="Joins an A/B question and its answer; escapes like \\n are understood.")
@click.option("--chat-template", is_flag=True,
              help="Format texts with the tokenizer's chat template (A/B: question as the user turn, "
                   "answer as the assistant turn; other texts as one user turn).")
@click.option("--max-length", type=click.IntRange(1), default=None,
              help="Longest text in tokens; longer texts keep their last tokens, with a warning "
                   "(default: the model's context length).")
@click.option("--no-early-exit", is_flag=True,
              help="Run the whole model instead of stopping after the deepest captured block "
                   "(only useful to measure what early exit saves).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow model code from the hub repository to run (off by default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def capture(model, gguf_file, revision, data, layers, store, position, offset, batch_size, dtype,
            store_dtype, device, resume, name, blocks, separator, chat_template, max_length,
            no_early_exit, trust_remote_code, quiet):
    """Run a causal LM over a contrast set and store residual activations.

    Layer L is the output of decoder block L. Activations stream to the store
    window by window; an interrupted capture keeps everything committed and
    continues with --resume.
    """
    from ..models import load_model
    from ..pipeline import capture_to_store

    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    loaded = load_model(model, gguf_file=gguf_file, revision=revision, dtype=dtype, device=device,
                        blocks=blocks, trust_remote_code=trust_remote_code)
    try:
        report = capture_to_store(
            loaded, data, store, layers, position=position, offset=offset, batch_size=batch_size,
            store_dtype=store_dtype, model_dtype=dtype, name=name, resume=resume,
            separator=codecs.decode(separator, "unicode_escape"), chat_template=chat_template,
            max_length=max_length, stop_early=not no_early_exit, progress=not quiet,
        )
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: everything committed so far is kept in {store}; "
                   "rerun the same command with --resume to continue", err=True)
        raise SystemExit(130) from None
    if report.skipped >= report.n_texts:
        click.echo(f"{data}: already captured completely in {store} (group {report.group}); nothing to do")
        return
    click.echo(
        f"captured {report.n_texts_captured} texts ({report.n_samples_written} samples, "
        f"{report.n_tokens} tokens) from {data} into {store} group {report.group!r} "
        f"in {report.seconds:.1f} s ({report.tokens_per_second:.0f} tokens/s)"
    )

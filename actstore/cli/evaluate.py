"""``actstore eval``: flags -> a model spec and a :class:`~actstore.evaluation.request.SweepRequest` -> one
library call, :func:`~actstore.evaluation.sweep.run_sweep` (the rules live in the request)."""

from __future__ import annotations

import functools

import click

from ..evaluation.damage import DEFAULT_KL_PROMPTS, DEFAULT_KL_TOKENS
from ..evaluation.grid import DEFAULT_BUDGETS, DEFAULT_FRACTIONS, DEFAULT_PPL_TOKENS
from ..evaluation.intervals import N_RESAMPLES
from ..evaluation.perplexity import DEFAULT_PPL_DOCUMENTS, DEFAULT_PPL_WINDOW
from ..evaluation.protocols import SCORERS
from ..evaluation.request import DEFAULT_PROMPT_TEMPLATE, JUDGES
from ..evaluation.request_rules import MIN_RESAMPLES
from .options import (
    FloatListType,
    IntListType,
    KListType,
    chat_options,
    model_options,
    quiet_option,
    scheduler_option,
    store_option,
    take_record,
)


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


@click.command(name="eval")
@model_options
@store_option("Store with the training activations (from `actstore capture`).")
@click.option("--model-group", default=None, help="Model group in the store (stores with several models).")
@click.option("--data-test", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Held-out items: A/B pairs ending in '(A)'/'(B)' or CAA items (scored by the probability of "
                   "the matching letter), or free-text positive/negative pairs (scored by the per-token "
                   "log-likelihood preference for the positive text). The whole file unless --max-items.")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instead of --data-test: prompts (one a line, or JSON with 'prompt' fields) whose steered "
                   "continuations are scored by --scorer; distinct-2 and repeated 3-gram rates are reported "
                   "as a second off-target measure.")
@click.option("--scorer", type=click.Choice(sorted(SCORERS)), default="vader", show_default=True,
              help="With --prompts: how a continuation is scored (vader: VADER compound sentiment, offline; "
                   "refusal: 1 for a refusal or broken text, 0 for compliance).")
@click.option("--judge", type=click.Choice(JUDGES), default=None,
              help="With --prompts: rate each continuation on AxBench's three rubrics (concept, instruction, "
                   "fluency; 0-2 each) for --concept; the primary score is their harmonic mean (items.csv: the "
                   "three ratings and harmonic; results.csv: harmonic with its interval over the report prompts). "
                   "Replaces --scorer. Only orderings and paired differences within one judge mean anything.")
@click.option("--concept", default=None, metavar="TEXT",
              help="The concept steered toward (e.g. 'the Golden Gate Bridge'): what --judge rates and what the "
                   "prompting baseline's instruction names.")
@click.option("--judge-model", default=None, help="With --judge: the judge's model (a hub id or folder).")
@click.option("--judge-url", default=None, metavar="URL",
              help="With --judge: an OpenAI-compatible server to judge with.")
@click.option("--judge-validation", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --judge: the validation summary `actstore judge validate --out X.csv` wrote (X.csv.json), "
                   "printed atop results.md; without it, results.md says in words that the judge was not validated.")
@click.option("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE, show_default=True,
              help="The prompting baseline's instruction ({concept} is replaced): a system prompt with "
                   "--chat-template, else a paragraph before each prompt.")
@click.option("--select-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="AxBench's protocol: this share of the prompts (by a hash of each prompt's text) chooses each "
                   "vector's alpha (the highest mean score); every figure of it is reported on the others "
                   "(results.csv: selected; contrasts.csv: prompt minus each selected vector).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=40, show_default=True,
              help="With --prompts: tokens generated per prompt (greedy).")
@click.option("--server", default=None, metavar="URL",
              help="With --prompts: generate every continuation (unsteered and steered) through this vLLM server "
                   "started by `actstore serve` (its /v1/completions, greedy, the vector in vllm_xargs), so a "
                   "served vector is measured with the same intervals as a local one. It must run --model's "
                   "weights and actstore's plugin (both checked first). Perplexity, separation and the scoring "
                   "of the texts stay local. --positions: all, prompt, generated or from:N.")
@click.option("--server-vectors", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="With --server: the vectors folder the server was started with (`actstore serve --vectors "
                   "DIR`), reachable from here: each vector the sweep builds is saved there as "
                   "eval-L<layer>-<method>-<k>-<hash>.safetensors and named in the requests.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="SECONDS",
              help="With --server: seconds a generation request may go unanswered (default 600); the model "
                   "listing and the plugin handshake wait at most 15 and 60 s, and never longer than this.")
@click.option("--layers", "-l", required=True,
              help="Layers to sweep, e.g. '2,4,6,8', or 'all' (every layer in the store).")
@click.option("--k", "ks", type=KListType(), default="16,64,dense", show_default=True,
              help="Values of k to sweep; 'dense' is the dense difference of means.")
@click.option("--alpha", "alphas", type=FloatListType(), default=None,
              help="Explicit steering scales (or added norms with --normalize). Default: the added norm is each "
                   "of --fractions of the layer's residual norm.")
@click.option("--fractions", type=FloatListType(), default=_csv(DEFAULT_FRACTIONS), show_default=True,
              help="Without --alpha: added norms as fractions of the root-mean-square norm of the layer's "
                   "captured activations (from the store's statistics): the same grid means the same at "
                   "every layer and for every vector.")
@click.option("--normalize", is_flag=True,
              help="With --alpha: make alpha the norm of what is added (each vector scaled to unit norm first).")
@click.option("--methods", default="enr", show_default=True,
              help="Vector methods to compare, comma-separated: enr (top-k by ENR), whitened (top-k by ENR of "
                   "Sigma^-1/2 v), pca (first axis of the pair differences), probe (logistic regression), lda "
                   "(Sigma^-1 v); see 'actstore extract --help'. Controls: random (a random direction at the ENR "
                   "vector's norm, dense; a random support of size k carrying its values, sparse; one per "
                   "--control-seeds) and letter (the answer-letter direction of an option-swapped A/B capture). "
                   "Each is measured at every k and alpha, so they meet on the same frontier. The prompting "
                   "baseline: prompt (with --prompts and --concept), no vector: the unsteered model with "
                   "--prompt-template's instruction, one row (layer -1, k none, alpha 0), its perplexity read with "
                   "the instruction before each window, no KL damage.")
@click.option("--control-seeds", type=IntListType(0), default="0", show_default=True,
              help="Seeds of the random control, comma-separated (one random vector per seed and k).")
@click.option("--letter-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For --methods letter: the A/B file captured into --store with its twins (default: the "
                   "store's latest capture with option-swapped twins).")
@click.option("--train-resample", default=None, metavar="SPEC",
              help="Build every vector from a resample of the training pairs (the vectors' own noise): "
                   "bootstrap:SEED (pairs, or questions with their twins, drawn with replacement) or half:I/N (the "
                   "I-th of N disjoint parts). enr, whitened, lda and random (their covariance over the same "
                   "resampled rows); not pca, probe or letter. Combine the replicate folders with "
                   "actstore.evaluation.resampling.combine.")
@click.option("--contrasts", "contrasts", multiple=True, metavar="SPEC",
              help="A pre-specified primary contrast, NAME=LAYER:METHOD:K-REFLAYER:REFMETHOD:REFK@BUDGET (REFLAYER "
                   "'best': the best other layer, chosen again in each bootstrap resample); repeat the option for "
                   "each. They are Holm-corrected as a family. Default: every sparse vector minus dense and "
                   "whitened minus ENR at every budget.")
@click.option("--margin", type=click.FloatRange(0, min_open=True), default=None, metavar="M",
              help="A margin stated before the data are seen, on each contrast's own scale (log-odds for A/B, else "
                   "the score): every contrast also gets a non-inferiority verdict (its one-sided 95% lower bound "
                   "above -M) and an equivalence verdict (TOST: its 90% interval inside (-M, +M)) beside the "
                   "difference test (contrasts.csv: margin, ci90_low, ci90_high, non_inferior, equivalent).")
@click.option("--resamples", type=click.IntRange(MIN_RESAMPLES), default=N_RESAMPLES, show_default=True,
              help="Bootstrap resamples behind the frontier's, the contrasts' and the steerability's intervals and "
                   "p-values; contrasts.csv gives each p-value's Monte-Carlo standard error (p_mc_se), and results.md "
                   "calls a Holm verdict within two of them of 0.05 borderline.")
@click.option("--exclude-train-overlap", is_flag=True,
              help="Drop the --data-test questions whose text (without its choices) is in the training files the "
                   "store was captured from; results.md says how many. Without it they are kept, with a warning "
                   "that counts them.")
@click.option("--budgets", type=FloatListType(), default=_csv(DEFAULT_BUDGETS), show_default=True,
              help="Perplexity-inflation budgets of the frontier: for each, the largest shift within it.")
@click.option("--text", type=click.Path(dir_okay=False), default=None,
              help="Documents for the perplexity (off-target damage): a WikiText file (split at its ' = Title = ' "
                   "headings), a JSONL or Parquet file of documents (--text-column) or a plain file (one "
                   "document). Default: $ACTSTORE_TEXT, else ../shared/data/wikitext-2/test.txt beside the "
                   "package's repository (actstore.inputs.corpus.default_corpus).")
@click.option("--text-column", default=None, help="With a JSONL/Parquet --text: the column holding each document.")
@click.option("--ppl-tokens", type=click.IntRange(16), default=DEFAULT_PPL_TOKENS, show_default=True,
              help="Tokens of --text for the perplexity, in --ppl-window windows from --ppl-documents documents "
                   "(its interval is over documents).")
@click.option("--ppl-documents", type=click.IntRange(1), default=DEFAULT_PPL_DOCUMENTS, show_default=True,
              help="Documents the perplexity windows come from (a few windows each).")
@click.option("--ppl-window", type=click.IntRange(8), default=DEFAULT_PPL_WINDOW, show_default=True,
              help="Tokens per perplexity window (each starts with BOS); keep it within the model's context.")
@click.option("--damage", default="ppl", show_default=True, metavar="ppl[,kl]",
              help="Off-target damage measured per configuration, comma-separated: ppl (perplexity inflation on "
                   "--text; always: the frontier and the report read damage on it) and kl (KL divergence "
                   "KL(unsteered || steered) on the unsteered model's own greedy continuations of --kl-prompts, at "
                   "the first generated token and the mean over the continuation, t intervals over prompts; "
                   "per prompt in kl.csv).")
@click.option("--kl-prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --damage ppl,kl: the prompts the unsteered model continues (a JSON list of strings or of "
                   "objects with an 'instruction' or 'prompt' field, JSONL the same, or a text file of one prompt "
                   "a line), each formatted as a user turn of the model's chat template where it has one. Default: "
                   f"the first {DEFAULT_KL_PROMPTS} instructions of ../shared/data/refusal-direction/"
                   "harmless_val.json beside the package's repository.")
@click.option("--kl-tokens", type=click.IntRange(1), default=DEFAULT_KL_TOKENS, show_default=True,
              help="With --damage ppl,kl: tokens of each greedy continuation the KL is measured on (up to its end "
                   "of sequence).")
@click.option("--max-items", type=click.IntRange(1), default=None,
              help="Use only the first N held-out questions or prompts (default: all).")
@click.option("--no-swap-options", "swap_options", is_flag=True, flag_value=False, default=True,
              help="Score A/B questions only as written (default: each also with its options swapped, so the "
                   "behavior's answer is shown once under each letter).")
@click.option("--behavior", default=None, help="Name in the tables (default: the folder of --data-test).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for results.csv, items.csv, windows.csv, frontier.csv, results.md and the plots; "
                   "a rerun with the same settings resumes it.")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=8, show_default=True,
              help="Texts per forward pass.")
@click.option("--positions", default="all", show_default=True,
              help="Tokens that get the vector: all, prompt, generated (tokens produced by generation, with "
                   "--prompts) or from:N (token N on, counting real tokens from 0).")
@click.option("--pack", type=click.IntRange(1), default=None,
              help="Configurations measured together in one batch (each row steered by its own); 1: one at a "
                   "time. Default: 8, fewer where a packed batch's logits would pass the sweep's cache budget (4 GiB).")
@click.option("--no-replay", "replay", is_flag=True, flag_value=False, default=True,
              help="Run the whole model for every configuration instead of replaying each layer's cached "
                   "block outputs (same numbers, slower; for checking).")
@scheduler_option("Used for statistics, covariances (whitened, lda), pair differences (pca) and probe fits. ")
@click.option("--heldout-store", type=str, default=None,
              help="Store of held-out pos/neg texts at the sweep's layers (e.g. the test split captured like the "
                   "training set): each vector's AUROC and Cohen's d go to separation.csv. Default: with "
                   "--data-test, its texts are captured in memory at the training store's position.")
@click.option("--no-separation", "separation", is_flag=True, flag_value=False, default=True,
              help="Skip the held-out separation (AUROC, Cohen's d) per vector.")
@click.option("--force", is_flag=True, help="Use the store even if it was captured from other model weights.")
@chat_options
@quiet_option
def evaluate(chat, **flags):
    """Sweep layer x method x k x alpha: on-target shift against perplexity inflation, with intervals.

    Reuses the store's cached statistics, builds each vector, steers the model
    and measures both effects per item and per perplexity window. A/B questions
    are scored in both answer orders, on log-odds. Writes results.csv (one row
    per configuration, 95% intervals, p- and Benjamini-Hochberg q-values),
    items.csv and windows.csv (every per-item and per-window figure; with
    --damage ppl,kl also the KL damage, per prompt in kl.csv),
    frontier.csv (each vector's shift at exactly each budget, interpolated, and
    its difference from dense), contrasts.csv (Holm-corrected), steerability.csv,
    results.md and frontier_<behavior>.png; and, per vector, how well it
    separates held-out pos from neg texts (separation.csv).

    With --prompts --judge axbench --concept TEXT the continuations are rated
    on AxBench's rubrics; --select-split 0.5 chooses each vector's alpha on one
    half of the prompts and reports it on the other; --methods enr,prompt adds
    the prompting baseline on the same prompts, judge and intervals.
    """
    from ..evaluation.report import count_line
    from ..evaluation.request import SweepRequest
    from ..evaluation.sweep import run_sweep
    from ..models.load import ModelSpec

    timeout = flags.pop("timeout")
    spec = take_record(ModelSpec, flags)  # loaded by run_sweep once the request's checks pass
    # --chat-template and --system format the generation prompts (refused without --prompts)
    request = SweepRequest.from_flags({**flags, "chat_template": chat.template, "system": chat.system},
                                      connect=functools.partial(_connect, timeout=timeout))
    results, out = run_sweep(spec, request), request.out
    click.echo(f"{len(results)} configurations in {out}/results.csv: {count_line(results)}. Report: "
               f"{out}/results.md, frontier: {out}/frontier.csv, plot: {out}/frontier_{request.behavior_name}.png")


def _connect(server: str | None, server_vectors: str | None, positions: str, timeout: float | None = None):
    """--server and --server-vectors: the served engine, connected (its plugin checked) before the model loads."""
    from ..serve.generation import EvalServer

    return EvalServer.connect(server, server_vectors, positions, **({} if timeout is None else {"timeout": timeout}))

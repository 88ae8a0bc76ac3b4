"""The evaluation: what a steering vector does on target and off target, with honest intervals.

    request      SweepRequest: every setting of a sweep and its rules (what `actstore eval` asks)
    request_rules  the request's rules that need no file (inputs, counts, damage, margin and resamples)
    overlap      train and test kept apart: held-out questions found in the store's training files
    grid         the grid of layer, method, k and alpha; its vectors, controls included
    scoring      per-item A/B log-odds (both answer orders), free-text preference, perplexity windows
    scorers      scorers of generated text that need no model (refusal, with a degeneration rule)
    judges       judges of generated text on AxBench's rubrics (local LM, endpoint, callable), harmonic mean
    judge_validation  a judge's AUROC on labelled responses with bootstrap intervals, read_labelled, judge_note
    protocols    on-target protocols: one object per kind of held-out set
    perplexity   the perplexity text: windows from many documents
    damage       KL damage on the unsteered model's own continuations (first token and mean)
    vocab        the vocabulary pass in slices of tokens: NLL and KL from final hidden states, no full logits
    replay       fixed batches replayed from a layer's cached block output
    packing      several configurations measured in one batch, each row steered by its own (issue 32)
    effects      one configuration's effects against the unsteered model, per question
    intervals    paired intervals, bootstraps, p-values, Benjamini-Hochberg and Holm
    rows         the rows of a sweep folder's tables, each column defined once
    ledger       the files of one sweep folder, resume
    tables       reading a folder's tables back; the rows each configuration must have
    files        how each of them is written: replaced whole or appended, a failed write named
    monitor      vectors as monitors: projections of held-out texts, AUROC and Cohen's d
    selection    AxBench's select/report split, the selected alphas, prompt-minus-vector contrasts, the rules of a judged sweep
    sweep        run_sweep: a request measured into its folder
    paths        each vector's path (log inflation, shift) and the bootstrap draws behind every interval
    frontier     what is read off the paths: the frontier at each budget, contrasts, steerability
    resampling   replicate sweeps on resampled training sets: intervals with the vectors' own noise
    report       results.md, frontier.csv, contrasts.csv, steerability.csv
    report_text  results.md's markdown: figures, the contrasts' section (Monte-Carlo error, margins)
    plots        the folder's plots: the frontier with its bands, the separation bars
"""

from .grid import CONTROLS, Grid
from .perplexity import perplexity_windows
from .protocols import ABLetters, FreeTextPreference, GeneratedText, protocol_for_file
from .request import SweepRequest
from .scoring import ABItem, PerplexityWindows, read_ab_items
from .sweep import run_sweep

__all__ = ["ABItem", "ABLetters", "CONTROLS", "FreeTextPreference", "GeneratedText", "Grid", "PerplexityWindows",
           "SweepRequest", "perplexity_windows", "protocol_for_file", "read_ab_items", "run_sweep"]

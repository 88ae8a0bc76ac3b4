"""The evaluation: what a steering vector does on target and off target, with honest intervals.

    request      SweepRequest: every setting of a sweep and its rules (what `actstore eval` asks)
    grid         the grid of layer, method, k and alpha; its vectors, controls included
    scoring      per-item A/B log-odds (both answer orders), free-text preference, perplexity windows
    scorers      scorers of generated text that need no model (refusal, with a degeneration rule)
    judges       judges of generated text on AxBench's rubrics (local LM, endpoint, callable), harmonic mean
    judge_validation  a judge's AUROC on labelled responses with bootstrap intervals, read_labelled, judge_note
    protocols    on-target protocols: one object per kind of held-out set
    perplexity   the perplexity text: windows from many documents
    damage       KL damage on the unsteered model's own continuations (first token and mean)
    replay       fixed batches replayed from a layer's cached block output
    effects      one configuration's effects against the unsteered model, per question
    intervals    paired intervals, bootstraps, p-values, Benjamini-Hochberg and Holm
    rows         the rows of a sweep folder's tables, each column defined once
    ledger       the files of one sweep folder, resume
    files        how each of them is written: replaced whole or appended, a failed write named
    monitor      vectors as monitors: projections of held-out texts, AUROC and Cohen's d
    selection    AxBench's select/report split, the selected alphas, prompt-minus-vector contrasts, the rules of a judged sweep
    sweep        run_sweep: a request measured into its folder
    paths        each vector's path (log inflation, shift) and the bootstrap draws behind every interval
    frontier     what is read off the paths: the frontier at each budget, contrasts, steerability
    report       results.md, frontier.csv, contrasts.csv, steerability.csv
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

"""The evaluation: what a steering vector does on target and off target, with honest intervals.

    scoring      per-item A/B log-odds (both answer orders), free-text preference, perplexity windows
    protocols    on-target protocols: one object per kind of held-out set
    replay       fixed batches replayed from a layer's cached block output
    intervals    paired intervals, bootstraps, p-values, Benjamini-Hochberg and Holm
    ledger       the files of one sweep folder, resume
    files        how each of them is written: replaced whole or appended, a failed write named
    sweep        the grid and run_sweep
    paths        each vector's path (log inflation, shift) and the bootstrap draws behind every interval
    frontier     what is read off the paths: the frontier at each budget, contrasts, steerability
    report       results.md, frontier.csv, plots
"""

from .grid import CONTROLS, Grid
from .perplexity import perplexity_windows
from .protocols import ABLetters, FreeTextPreference, GeneratedText, protocol_for_file
from .scoring import ABItem, PerplexityWindows, read_ab_items
from .sweep import SweepOptions, run_sweep

__all__ = ["ABItem", "ABLetters", "CONTROLS", "FreeTextPreference", "GeneratedText", "Grid", "PerplexityWindows",
           "SweepOptions", "perplexity_windows", "protocol_for_file", "read_ab_items", "run_sweep"]


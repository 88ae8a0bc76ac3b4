"""Inputs: what comes in, read through one contract, whatever the file format.

* :mod:`.records`: one reader contract for every input file, a :class:`~.records.Table` of rows with named fields
  (JSON, JSONL, Parquet, Arrow, a Hugging Face dataset folder);
* :mod:`.fields`: the checks every value goes through (text, label, pair id), each refusal naming file and row;
* :mod:`.ab`: A/B items, the one answer-letter detector and the option-swapped twins;
* :mod:`.datasets`: contrast sets (pairs, labeled rows, A/B items) as labeled examples;
* :mod:`.sources`: inputs at dataset scale, read window by window (datasets, plain-text corpora);
* :mod:`.corpus`: perplexity text as documents, and windows drawn from many of them;
* :mod:`.chat`: chat exchanges: how a prompt and a response become the text a chat model reads.
"""

from .datasets import ContrastSet, Example, read_contrast_set
from .records import Table, open_table

__all__ = ["ContrastSet", "Example", "Table", "open_table", "read_contrast_set"]

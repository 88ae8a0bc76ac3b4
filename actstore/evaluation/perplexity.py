"""The perplexity text of a sweep: windows from many documents (:mod:`actstore.inputs.corpus`).

The perplexity's interval resamples documents, so it describes off-target text
in general rather than the two or three articles a few thousand tokens of one
file would cover: :func:`perplexity_windows` takes ``tokens`` tokens as windows
of ``window`` tokens from at least ``documents`` documents (a few windows each;
a corpus of fewer documents gives all it has, and the report says how many).
"""

from __future__ import annotations

from pathlib import Path

from .scoring import PerplexityWindows

# actstore.inputs.corpus's MIN_DOCUMENTS and DEFAULT_WINDOW (tested equal): 4096 tokens, one 128-token window from
# each of 32 documents. Kept here so that the CLI's options load without reading the corpus module.
DEFAULT_PPL_DOCUMENTS = 32
DEFAULT_PPL_WINDOW = 128


def check_text(text: str | Path | None) -> Path:
    """The perplexity corpus: ``text``, or by default the one :func:`actstore.inputs.corpus.default_corpus`
    finds; a clear error naming ``--text`` (``param="text"``) where there is none."""
    from ..errors import ActstoreError
    from ..inputs.corpus import default_corpus

    if text is None:
        return default_corpus()
    path = Path(text)
    if not path.exists():
        raise ActstoreError(f"text {str(text)!r} does not exist (the perplexity documents)", param="text")
    return path


def perplexity_windows(tokenizer, text: str | Path | None, tokens: int, *, window: int = DEFAULT_PPL_WINDOW,
                       documents: int = DEFAULT_PPL_DOCUMENTS, text_column: str | None = None, seed: int = 0,
                       batch_size: int = 2) -> PerplexityWindows:
    """``tokens // window`` windows of ``window`` tokens of ``text`` (the default corpus when None),
    each tagged with its document, from at least ``documents`` documents (all of them when the
    text holds fewer; a plain file is one document) drawn with ``seed``."""
    from ..inputs.corpus import document_windows, read_documents

    corpus = read_documents(check_text(text), text_column=text_column)
    chosen = document_windows(tokenizer, corpus, tokens, window=window, min_documents=min(documents, len(corpus)),
                              seed=seed)
    return PerplexityWindows.from_tagged(tokenizer, [(w.document, w.token_ids) for w in chosen], window, batch_size)

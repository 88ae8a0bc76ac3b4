"""The perplexity text of a sweep: windows from many documents (:mod:`actstore.corpus`).

The perplexity's interval resamples documents, so it describes off-target text
in general rather than the two or three articles a few thousand tokens of one
file would cover: :func:`perplexity_windows` takes ``tokens`` tokens as windows
of ``window`` tokens spread over ``documents`` documents (a few windows each).
"""

from __future__ import annotations

from pathlib import Path

from .scoring import PerplexityWindows

DEFAULT_PPL_DOCUMENTS = 32


def check_text(text: str | Path | None, text_column: str | None = None) -> Path:
    """The perplexity corpus: ``text``, or by default the one :func:`actstore.corpus.default_corpus`
    finds; a clear error naming ``--text`` (``param="text"``) where there is none."""
    from ..corpus import default_corpus
    from ..errors import ActstoreError

    if text is None:
        return default_corpus()
    path = Path(text)
    if not path.is_file():
        raise ActstoreError(f"text {str(text)!r} does not exist (the perplexity documents)", param="text")
    return path


def perplexity_windows(tokenizer, text: str | Path | None, tokens: int, *, window: int = 256,
                       documents: int = DEFAULT_PPL_DOCUMENTS, text_column: str | None = None,
                       batch_size: int = 2) -> PerplexityWindows:
    """About ``tokens`` tokens of ``text`` (default corpus when None) as windows of ``window`` tokens,
    each tagged with its document, from ``documents`` documents."""
    from ..corpus import document_windows

    path = check_text(text, text_column)
    tagged = document_windows(tokenizer, path, tokens=tokens, window=window, documents=documents,
                              text_column=text_column)
    return PerplexityWindows.from_tagged(tokenizer, tagged, window, batch_size)

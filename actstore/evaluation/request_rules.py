"""The rules of a :class:`~actstore.evaluation.request.SweepRequest` that need no file, checked when it is made.

Each function takes the request (they read its fields and raise
:class:`~actstore.errors.ActstoreError` naming the field and what was expected).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from ..errors import ActstoreError

# (field, smallest value) of the counts; the CLI's click.IntRange bounds are the same
COUNTS = (("max_new_tokens", 1), ("ppl_tokens", 16), ("ppl_documents", 1), ("ppl_window", 8), ("max_items", 1),
         ("batch_size", 1), ("kl_tokens", 1))
DAMAGES = ("ppl", "kl")  # the off-target measures a sweep can take; ppl always
MIN_RESAMPLES = 100  # the fewest bootstrap resamples a report may use


def check_inputs(request) -> None:
    """Exactly one on-target input; a served engine with prompts; perplexity text or windows, not both."""
    given = [name for name in ("data_test", "prompts", "on_target") if getattr(request, name) is not None]
    if len(given) != 1:
        built = " (or a protocol already built, on_target, alone)" if request.on_target is not None else ""
        raise ActstoreError(f"give exactly one of data_test (held-out items) and prompts (generation){built}; "
                            f"got {' and '.join(given) or 'neither'}", param=("data_test", "prompts"))
    check_served(request.prompts, request.server)
    if request.text is not None and request.perplexity is not None:
        raise ActstoreError("give text (the perplexity documents) or perplexity (windows already built), "
                            "not both", param=("text", "perplexity"))


def check_counts(request) -> None:
    """Each count an integer at least its smallest value (:data:`COUNTS`)."""
    for name, least in COUNTS:
        value = getattr(request, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < least):
            raise ActstoreError(f"{name}={value!r}: expected an integer >= {least}", param=name)


def check_damage(request) -> None:
    """``damage``: a comma list of :data:`DAMAGES` with ppl; ``kl_prompts`` only with kl."""
    asked = ",".join(request.damage)
    unknown = [d for d in request.damage if d not in DAMAGES]
    if unknown or not request.damage:
        raise ActstoreError(f"damage={asked!r}: expected a comma list of {', '.join(DAMAGES)}", param="damage")
    if "ppl" not in request.damage:
        raise ActstoreError(f"damage={asked!r}: ppl is required (the frontier, the contrasts and the report read "
                            "a vector's off-target cost as its perplexity inflation); ask for ppl,kl",
                            param="damage")
    if request.kl_prompts is not None and "kl" not in request.damage:
        raise ActstoreError("kl_prompts is for the KL measure: add kl to damage (ppl,kl)",
                            param=("kl_prompts", "damage"))


def check_served(prompts, server, server_vectors=None) -> None:
    """A served engine (``server``; on the command line its URL and ``server_vectors``) continues
    prompts: refused with anything else, and a vectors folder without a server."""
    if (server is not None or server_vectors is not None) and (prompts is None or server is None):
        raise ActstoreError("server (with server_vectors) generates the prompts continuations through a served "
                            "model: give prompts, server and server_vectors together",
                            param=("server", "server_vectors", "prompts"))


def check_analysis(request) -> None:
    """``margin``: a positive number (on the contrasts' own scale) or None; ``resamples``: an
    integer of at least 100 (a bootstrap's percentiles need draws beyond each tail)."""
    margin = request.margin
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, Real) or not margin > 0
                               or not math.isfinite(margin)):
        raise ActstoreError(f"margin={margin!r}: expected a positive number, stated before the data are seen, on "
                            "the contrasts' own scale (log-odds for A/B, else the score)", param="margin")
    value = request.resamples
    if isinstance(value, bool) or not isinstance(value, Integral) or value < MIN_RESAMPLES:
        raise ActstoreError(f"resamples={value!r}: expected an integer >= {MIN_RESAMPLES} (the bootstrap's draws)",
                            param="resamples")

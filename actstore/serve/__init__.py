"""Steering served by vLLM: the engine's own OpenAI-compatible server, a different vector per request.

* :mod:`actstore.serve.settings`: what a request may ask (``actstore_vector``, ``actstore_alpha``,
  ``actstore_positions`` in ``vllm_xargs``), checked against the allow-listed vectors folder, and
  the payload a worker applies (an addition, a projection or a clamp, where the vector's operator says);
* :mod:`actstore.serve.plugin`: the ``vllm.general_plugins`` entry point that applies it;
* :mod:`actstore.serve.step`: which rows of an engine step get which edit (no vLLM needed);
* :mod:`actstore.serve.client`: the HTTP client of an OpenAI-compatible engine (completions, token ids);
* :mod:`actstore.serve.launch`: ``actstore serve`` (starts ``vllm serve`` with the plugin);
* :mod:`actstore.serve.check`: ``actstore serve check`` (does the engine apply a vector as
  actstore's own hooks do?).
* :mod:`actstore.serve.generation`: ``actstore eval --prompts --server URL`` (continuations from
  the engine, measured with the same intervals as local ones).

Nothing here imports vLLM at module level: only the plugin runs inside the engine.
"""

from __future__ import annotations

from ..errors import ActstoreError


class ServeError(ActstoreError, RuntimeError):
    """A server cannot be started or reached, or does not apply steering as measured."""

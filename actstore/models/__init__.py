"""Models: load a causal LM, find its blocks, and hook them.

* :mod:`.load`: :class:`~.load.ModelSpec` and :func:`~.load.load_model` (hub id, local folder, GGUF),
  fingerprints, devices; where the decoder blocks and sites are (``resid``, ``attn``, ``mlp``);
* :mod:`.hooks`: forward hooks on decoder blocks that always remove themselves, shared by capture,
  steering and replay; the early exit after the deepest block;
* :mod:`.embedded`: the embedded default model (google/gemma-3-270m from PyPI), converted once.
"""

from .load import LoadedModel, ModelSpec, load_model

__all__ = ["LoadedModel", "ModelSpec", "load_model"]

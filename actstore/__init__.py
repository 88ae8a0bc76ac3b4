"""actstore: sparse activation steering on a streaming-statistics activation store.

Data flows one way: capture -> store -> stats -> vectors -> steering -> evaluation.
"""

from ._version import __version__
from .capture import CaptureOptions, CaptureReport, capture_on_cluster, capture_to_store
from .datasets import ContrastSet, read_contrast_set
from .errors import ActstoreError
from .evaluate import read_ab_items
from .interop import (
    from_repeng,
    from_steering_vectors,
    read_gguf_control_vector,
    to_repeng,
    to_steering_vectors,
    write_gguf_control_vector,
)
from .methods import build_vector
from .models import LoadedModel, ModelSpec, load_model
from .moments import Moments
from .monitor import project, separation
from .protocols import ABLetters, FreeTextPreference, GeneratedText
from .stats import compute_stats, moments, open_stats
from .steering import steer
from .stores import GroupOptions, StoreGroup, open_store, store_info, verify_store
from .sweep import run_sweep
from .vector_info import METHODS, VectorInfo
from .vectors import SteeringVector, enr, load_vector, save_vector, vector_from_stats

__all__ = [
    "ABLetters",
    "ActstoreError",
    "CaptureOptions",
    "CaptureReport",
    "ContrastSet",
    "FreeTextPreference",
    "GeneratedText",
    "GroupOptions",
    "LoadedModel",
    "METHODS",
    "ModelSpec",
    "Moments",
    "SteeringVector",
    "StoreGroup",
    "VectorInfo",
    "__version__",
    "build_vector",
    "capture_on_cluster",
    "capture_to_store",
    "compute_stats",
    "enr",
    "from_repeng",
    "from_steering_vectors",
    "load_model",
    "load_vector",
    "moments",
    "open_stats",
    "open_store",
    "project",
    "read_ab_items",
    "read_contrast_set",
    "read_gguf_control_vector",
    "run_sweep",
    "save_vector",
    "separation",
    "steer",
    "store_info",
    "to_repeng",
    "to_steering_vectors",
    "vector_from_stats",
    "verify_store",
    "write_gguf_control_vector",
]

# Names that were public and are not any more: still importable from the package (with a
# warning) and from the module that defines them, without a warning.
_MOVED = {
    "Example": "actstore.datasets",
    "SCHEMA_VERSION": "actstore._version",
    "ab_scores": "actstore.evaluate",
    "enr_scores": "actstore.directions",
    "find_decoder_blocks": "actstore.models",
    "perplexity": "actstore.evaluate",
    "top_k_indices": "actstore.directions",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"actstore.{name} is deprecated; import it from {_MOVED[name]}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'actstore' has no attribute {name!r}")

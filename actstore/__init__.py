"""actstore: sparse activation steering on a streaming-statistics activation store.

Data flows one way: capture -> store -> stats -> vectors -> steering -> evaluation.
"""

from ._version import SCHEMA_VERSION, __version__
from .capture import CaptureOptions
from .datasets import ContrastSet, Example, read_contrast_set
from .errors import ActstoreError
from .evaluate import ab_scores, perplexity, read_ab_items
from .interop import (
    from_repeng,
    from_steering_vectors,
    read_gguf_control_vector,
    to_repeng,
    to_steering_vectors,
    write_gguf_control_vector,
)
from .methods import build_vector
from .models import LoadedModel, ModelSpec, find_decoder_blocks, load_model
from .moments import Moments
from .monitor import project, separation
from .pipeline import CaptureReport, capture_on_cluster, capture_to_store
from .protocols import ABLetters, FreeTextPreference, GeneratedText
from .stats import compute_stats, moments, open_stats
from .steering import steer
from .stores import GroupOptions, open_store, store_info, verify_store
from .sweep import run_sweep
from .vector_info import METHODS, VectorInfo
from .vectors import SteeringVector, enr, enr_scores, load_vector, save_vector, top_k_indices, vector_from_stats

__all__ = [
    "ABLetters",
    "ActstoreError",
    "CaptureOptions",
    "CaptureReport",
    "ContrastSet",
    "Example",
    "FreeTextPreference",
    "GeneratedText",
    "GroupOptions",
    "LoadedModel",
    "METHODS",
    "ModelSpec",
    "Moments",
    "SCHEMA_VERSION",
    "SteeringVector",
    "VectorInfo",
    "__version__",
    "ab_scores",
    "build_vector",
    "capture_on_cluster",
    "capture_to_store",
    "compute_stats",
    "enr",
    "enr_scores",
    "find_decoder_blocks",
    "from_repeng",
    "from_steering_vectors",
    "load_model",
    "load_vector",
    "moments",
    "open_stats",
    "open_store",
    "perplexity",
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
    "top_k_indices",
    "vector_from_stats",
    "verify_store",
    "write_gguf_control_vector",
]

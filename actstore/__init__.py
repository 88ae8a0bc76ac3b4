"""actstore: sparse activation steering on a streaming-statistics activation store.

Data flows one way: capture -> store -> stats -> vectors.
"""

from ._version import SCHEMA_VERSION, __version__
from .datasets import ContrastSet, Example, read_contrast_set
from .errors import ActstoreError
from .models import LoadedModel, find_decoder_blocks, load_model
from .pipeline import CaptureReport, capture_to_store
from .stats import compute_stats, moments, open_stats
from .stores.zarr_store import open_store, store_info
from .vectors import SteeringVector, enr, enr_scores, load_vector, save_vector, top_k_indices, vector_from_stats

__all__ = [
    "ActstoreError",
    "CaptureReport",
    "ContrastSet",
    "Example",
    "LoadedModel",
    "SCHEMA_VERSION",
    "SteeringVector",
    "__version__",
    "capture_to_store",
    "compute_stats",
    "enr",
    "enr_scores",
    "find_decoder_blocks",
    "load_model",
    "load_vector",
    "moments",
    "open_stats",
    "open_store",
    "read_contrast_set",
    "save_vector",
    "store_info",
    "top_k_indices",
    "vector_from_stats",
]

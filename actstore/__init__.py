"""actstore: sparse activation steering on a streaming-statistics activation store.

Data flows one way, and so do the packages: ``inputs`` -> ``models`` -> ``capture`` -> ``stores``
-> ``stats`` -> ``vectors`` -> ``steering`` -> ``evaluation`` -> ``serve`` (``cli`` on top). The
names below are the public face, each imported from the module that defines it; everything else
is reached through its package (``actstore.vectors.interop``, ``actstore.evaluation.protocols``, ...).
"""

from ._version import __version__
from .capture.cluster import capture_on_cluster
from .capture.options import CaptureOptions
from .capture.run import capture_to_store
from .errors import ActstoreError
from .evaluation.monitor import project
from .evaluation.request import SweepRequest
from .evaluation.sweep import run_sweep
from .models.load import LoadedModel, ModelSpec, load_model
from .moments import Moments
from .stats.streaming import compute_stats, open_stats
from .steering import steer, steer_rows
from .stores.group import StoreGroup
from .stores.info import store_info
from .stores.reader import open_store
from .stores.schema import GroupOptions
from .stores.verify import verify_store
from .vectors.build import build_vector
from .vectors.info import VectorInfo
from .vectors.methods import METHODS
from .vectors.vector import SteeringVector, load_vector, save_vector

__all__ = [
    "ActstoreError",
    "CaptureOptions",
    "GroupOptions",
    "LoadedModel",
    "METHODS",
    "ModelSpec",
    "Moments",
    "SteeringVector",
    "StoreGroup",
    "SweepRequest",
    "VectorInfo",
    "__version__",
    "build_vector",
    "capture_on_cluster",
    "capture_to_store",
    "compute_stats",
    "load_model",
    "load_vector",
    "open_stats",
    "open_store",
    "project",
    "run_sweep",
    "save_vector",
    "steer",
    "steer_rows",
    "store_info",
    "verify_store",
]

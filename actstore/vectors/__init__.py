"""Vectors: directions from statistics, the steering vector and its file.

* :mod:`.directions`: the math of each extraction method (ENR and its top-k, whitened ENR, PCA, LDA);
* :mod:`.probe`: the logistic probe's direction;
* :mod:`.methods`: :data:`~.methods.METHODS`, the one registry of methods (a new method is an entry here);
* :mod:`.info`: each vector's provenance, typed and frozen (:class:`~.info.VectorInfo`), and ``k``'s one
  parse/label pair (None inside, "dense" at the edges);
* :mod:`.vector`: :class:`~.vector.SteeringVector` and its safetensors file;
* :mod:`.build`: :func:`~.build.build_vector`, the one door from a store to a vector;
* :mod:`.operators`: how a vector is applied (add, project, clamp; at which layers), recorded in its file;
* :mod:`.bake`: the weight-orthogonalised model (a projection at all layers written into the weights);
* :mod:`.controls`: random-direction and answer-letter control vectors;
* :mod:`.interop`: exchange with steering-vectors, repeng and llama.cpp's GGUF control vectors.
"""

from .build import build_vector
from .info import VectorInfo
from .methods import METHODS
from .vector import SteeringVector, load_vector, save_vector

__all__ = ["METHODS", "SteeringVector", "VectorInfo", "build_vector", "load_vector", "save_vector"]

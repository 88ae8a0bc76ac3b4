"""Exchange steering vectors with steering-vectors, repeng and llama.cpp.

Four conversions, each one direction per decoder block (a list of actstore
:class:`~actstore.vectors.vector.SteeringVector`, one layer each, on the actstore side):

* steering-vectors 0.12.2: :func:`to_steering_vectors` / :func:`from_steering_vectors`
  (its ``SteeringVector(layer_activations: dict[int, Tensor], layer_type="decoder_block")``);
* repeng 0.4.0: :func:`to_repeng` / :func:`from_repeng`
  (its ``ControlVector(model_type: str, directions: dict[int, np.ndarray])``);
* the GGUF control-vector file that repeng's ``ControlVector.export_gguf`` writes
  and llama.cpp reads with ``--control-vector``: :func:`write_gguf_control_vector` /
  :func:`read_gguf_control_vector`.

The peers are imported only by the functions that build their objects
(``to_*``); reading theirs (``from_*``) needs only the object.

Layer numbering (checked in each peer's source)
-----------------------------------------------
actstore layer ``L`` is the output of decoder block ``L`` (0-based). Every peer
below uses the same number for the same place, so no index is shifted:

* steering-vectors: with ``layer_type="decoder_block"``, ``layer_activations[L]`` is
  added by a forward hook on the ``L``-th module matched by its decoder-block
  pattern (e.g. ``model.layers.{num}``; ``steering_vector.py``, ``layer_matching.py``).
  It accepts negative keys (counted from the end); those are refused here since the
  number of blocks is not known without the model.
* repeng: ``ControlModel`` wraps ``model_layer_list(model)[L]`` and adds
  ``coeff * directions[L]`` to that block's output (``control.py``);
  ``read_representations`` reads ``hidden_states[L + 1]``, the same place except for
  the last block, whose ``hidden_states`` entry is after the final norm (``extract.py``).
* llama.cpp: tensor ``direction.N`` is added to the output of layer ``N`` of its
  0-based layer loop (``build_cvec(cur, il)`` after the layer's residual add;
  ``src/llama-adapter.cpp`` keeps the data of ``direction.N`` in ``tensors[N]``).
  It has no slot for layer 0: ``direction.0`` makes its loader refuse the file
  (``common/common.cpp``, which also wants every tensor 1-D F32 of one size), so
  :func:`write_gguf_control_vector` refuses layer 0. repeng's ``export_gguf`` writes
  ``direction.{L}`` from its keys unchanged. (llama.cpp's own ``cvector-generator``
  reads layer ``il`` and writes ``direction.{il + 1}``, so a vector made by that tool
  is applied one block after where it was read; this module does not shift it.)

Strength: actstore's ``steer(model, v, alpha)``, steering-vectors' ``apply(model,
multiplier=alpha)``, repeng's ``set_control(cv, coeff=alpha)`` and llama.cpp's
``--control-vector-scaled FILE alpha`` all add ``alpha * v`` at every position
(repeng skips left padding). ``scale`` multiplies the exported values once.
repeng's trained directions are unit-norm PCA axes; actstore's are mean differences;
nothing is renormalised here.

GGUF control-vector file (as llama.cpp and repeng read it)::

    general.architecture      str     "controlvector"
    controlvector.model_hint  str     model type, e.g. "gemma3" (repeng requires it)
    controlvector.layer_count uint32  number of direction tensors
    direction.{L}             float32 [hidden], one per layer, L >= 1

plus keys llama.cpp and repeng ignore, so that actstore reads back what it wrote::

    actstore.direction.{L}.metadata  str            the vector's metadata as JSON
    actstore.direction.{L}.indices   int32 array    kept coordinates, by decreasing ENR
    actstore.direction.{L}.enr       float32 array  ENR of every coordinate
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import VectorError
from .info import VectorInfo, k_label
from .vector import SteeringVector

GGUF_ARCHITECTURE = "controlvector"
STEERING_VECTORS_REQUIREMENT = "steering-vectors==0.12.2"
REPENG_REQUIREMENT = "repeng==0.4.0"


def _import_peer(module: str, requirement: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is not installed; `pip install {requirement}` (it pins older "
            "transformers/numpy than actstore's default environment: use a separate venv)"
        ) from err


def _as_list(vectors: SteeringVector | Sequence[SteeringVector]) -> list[SteeringVector]:
    return [vectors] if isinstance(vectors, SteeringVector) else list(vectors)


def _layer_directions(vectors: list[SteeringVector], target: str, scale: float = 1.0) -> dict[int, np.ndarray]:
    """``{layer: scale * vector}`` (float32, sorted by layer), after checking that the
    vectors fit one ``target`` object: one per layer, layers >= 0, one hidden size."""
    if not vectors:
        raise VectorError(f"no vectors to export to {target}")
    if not math.isfinite(scale):
        raise VectorError(f"scale must be a finite number, got {scale!r}")
    directions: dict[int, np.ndarray] = {}
    first_layer = None
    for vector in vectors:
        if not vector.info.operator.additive or vector.info.operator.layers:
            # a control vector is added at its own layer: reading a projection as an addition would
            # steer the wrong way with no error (antirez/ds4 PR #970)
            raise VectorError(f"{target} holds additive vectors only, one per layer; the vector for layer "
                              f"{vector.layer} is {vector.info.operator.describe()}: apply it with actstore "
                              "(actstore steer, actstore serve) or bake it (actstore vector bake)", param="operator")
        values = np.asarray(vector.vector, dtype=np.float64)
        layer = int(vector.layer)
        if values.ndim != 1:
            raise VectorError(f"vector for layer {layer} must be 1-D [hidden], got shape {values.shape}")
        if layer < 0:
            raise VectorError(
                f"vector has layer {layer} (no layer recorded?); set .layer to the decoder block it is for"
            )
        if layer in directions:
            raise VectorError(
                f"two vectors for layer {layer}; {target} holds one direction per layer: add them first"
            )
        if first_layer is not None and values.shape[0] != directions[first_layer].shape[0]:
            raise VectorError(
                f"vector for layer {layer} has {values.shape[0]} dimensions but the one for layer "
                f"{first_layer} has {directions[first_layer].shape[0]}; one {target} is for one model"
            )
        if not np.all(np.isfinite(values)):
            raise VectorError(f"vector for layer {layer} has non-finite values")
        site = vector.info.site
        if site != "resid":
            raise VectorError(f"vector for layer {layer} is for the {site} site; {target} adds directions to the "
                              "residual stream (decoder-block outputs) only: export resid vectors")
        directions[layer] = (values * scale).astype(np.float32)
        first_layer = layer if first_layer is None else first_layer
    return dict(sorted(directions.items()))


def _checked_layer(layer: Any, where: str) -> int:
    try:
        number = int(layer)
    except (TypeError, ValueError):
        raise VectorError(f"{where}: layer {layer!r} is not an integer") from None
    if number < 0:
        raise VectorError(
            f"{where}: layer {number} counts from the end; actstore needs the 0-based decoder block "
            "(number of blocks + layer)"
        )
    return number


def _checked_values(values: Any, where: str) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    if vector.ndim != 1:
        raise VectorError(f"{where}: expected a 1-D [hidden] vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise VectorError(f"{where}: the vector has non-finite values")
    return vector


def _dense_vector(vector: np.ndarray, info: VectorInfo) -> SteeringVector:
    # Nothing ranked the coordinates of a peer's vector: keep its non-zeros, ENR unknown.
    indices = np.flatnonzero(vector).astype(np.int64)
    return SteeringVector(vector, indices, np.full_like(vector, np.nan), info)


def _peer_info(source: str, layer: int, hidden: int, extra: Mapping[str, str] | None) -> VectorInfo:
    """The info of a vector made by a peer: method and ``source`` the peer, dense; ``extra``
    (the caller's metadata, e.g. ``model`` and ``model_fingerprint``) wins."""
    metadata = {"k": k_label(None), "method": source, "source": source, "hidden_size": str(hidden),
                "actstore_version": __version__, **{str(key): str(value) for key, value in (extra or {}).items()}}
    return VectorInfo.from_metadata({key: value for key, value in metadata.items() if key != "layer"},
                                    f"{source} metadata").replace(layer=layer)


def _sorted_one_size(vectors: list[SteeringVector], where: str) -> list[SteeringVector]:
    sizes = {vector.layer: vector.hidden_size for vector in vectors}
    if len(set(sizes.values())) > 1:
        raise VectorError(f"{where}: the layers have different sizes {sizes}; expected one hidden size")
    return sorted(vectors, key=lambda vector: vector.layer)


# steering-vectors


def to_steering_vectors(vectors: SteeringVector | Sequence[SteeringVector], scale: float = 1.0):
    """A ``steering_vectors.SteeringVector`` (``layer_type="decoder_block"``) adding
    ``scale * vector`` at each vector's layer. Tensors: ``(hidden,) float32`` on CPU."""
    import torch

    directions = _layer_directions(_as_list(vectors), "a steering-vectors SteeringVector", scale)
    steering_vectors = _import_peer("steering_vectors", STEERING_VECTORS_REQUIREMENT)
    layer_activations = {layer: torch.from_numpy(values) for layer, values in directions.items()}
    return steering_vectors.SteeringVector(layer_activations, layer_type="decoder_block")


def from_steering_vectors(sv, metadata: Mapping[str, str] | None = None) -> list[SteeringVector]:
    """One dense actstore vector per layer of a ``steering_vectors.SteeringVector``,
    sorted by layer. ``metadata`` is added to each (e.g. ``model`` and
    ``model_fingerprint``, so that :func:`actstore.steer` can check the model)."""
    activations = getattr(sv, "layer_activations", None)
    if not isinstance(activations, Mapping):
        raise VectorError(f"expected a steering_vectors.SteeringVector, got {type(sv).__name__}")
    layer_type = getattr(sv, "layer_type", None)
    if layer_type != "decoder_block":
        raise VectorError(
            f"steering-vectors vector has layer_type {layer_type!r}; actstore steers decoder-block "
            "outputs only (layer_type='decoder_block')"
        )
    if not activations:
        raise VectorError("steering-vectors vector has no layer_activations")
    vectors = []
    for key, tensor in activations.items():
        where = f"steering-vectors layer_activations[{key!r}]"
        layer = _checked_layer(key, where)
        values = _checked_values(tensor.detach().to("cpu").float().numpy(), where)
        vectors.append(_dense_vector(values, _peer_info("steering-vectors", layer, len(values), metadata)))
    return _sorted_one_size(vectors, "steering-vectors layer_activations")


# repeng


def to_repeng(vectors: SteeringVector | Sequence[SteeringVector], model_type: str, scale: float = 1.0):
    """A ``repeng.ControlVector(model_type, {layer: scale * vector})`` (float32
    arrays). ``model_type`` is the model's ``config.model_type`` (repeng's
    ``model_hint``); repeng's ``ControlModel`` needs a direction for every layer it controls."""
    directions = _layer_directions(_as_list(vectors), "a repeng ControlVector", scale)
    repeng = _import_peer("repeng", REPENG_REQUIREMENT)
    return repeng.ControlVector(model_type=str(model_type), directions=directions)


def from_repeng(cv, metadata: Mapping[str, str] | None = None) -> list[SteeringVector]:
    """One dense actstore vector per layer of a ``repeng.ControlVector``, sorted by
    layer; its ``model_type`` is kept as metadata ``model_hint``."""
    directions = getattr(cv, "directions", None)
    if not isinstance(directions, Mapping):
        raise VectorError(f"expected a repeng.ControlVector, got {type(cv).__name__}")
    if not directions:
        raise VectorError("repeng ControlVector has no directions")
    extra = {"model_hint": str(getattr(cv, "model_type", "")), **(metadata or {})}
    vectors = []
    for key, direction in directions.items():
        where = f"repeng directions[{key!r}]"
        layer = _checked_layer(key, where)
        values = _checked_values(direction, where)
        vectors.append(_dense_vector(values, _peer_info("repeng", layer, len(values), extra)))
    return _sorted_one_size(vectors, "repeng directions")


# GGUF control vector (llama.cpp --control-vector, repeng export_gguf/import_gguf)


def write_gguf_control_vector(vectors: SteeringVector | Sequence[SteeringVector], path: str | Path,
                              model_hint: str, *, scale: float = 1.0) -> Path:
    """Write a GGUF control-vector file (format in the module docstring) holding
    ``scale * vector`` as ``direction.{layer}``. ``model_hint`` is the model type
    (``config.model_type``, e.g. ``"gemma3"``). Layer 0 is refused: llama.cpp has
    no slot for it."""
    from gguf import GGUFWriter

    from .._files import atomic_output

    vectors = _as_list(vectors)
    directions = _layer_directions(vectors, "a GGUF control vector", scale)
    if 0 in directions:
        raise VectorError(
            "llama.cpp has no control-vector slot for layer 0 (its loader refuses 'direction.0'); "
            "steer a later layer"
        )
    if not str(model_hint):
        raise VectorError("model_hint is empty; pass the model type, e.g. 'gemma3' (repeng requires it)")
    by_layer = {int(vector.layer): vector for vector in vectors}
    path = Path(path)
    with atomic_output(path) as tmp:  # a kill mid-write leaves the previous file whole
        writer = GGUFWriter(str(tmp), GGUF_ARCHITECTURE)
        try:
            writer.add_string(f"{GGUF_ARCHITECTURE}.model_hint", str(model_hint))
            writer.add_uint32(f"{GGUF_ARCHITECTURE}.layer_count", len(directions))
            for layer, values in directions.items():
                _add_actstore_keys(writer, by_layer[layer], scale)
                writer.add_tensor(f"direction.{layer}", values)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def _add_actstore_keys(writer, vector: SteeringVector, scale: float) -> None:
    """The ``actstore.direction.{layer}.*`` keys (ignored by llama.cpp and repeng)."""
    key = f"actstore.direction.{vector.layer}"
    metadata = vector.info.to_metadata()
    if scale != 1.0:
        metadata["export_scale"] = repr(float(scale))
    writer.add_string(f"{key}.metadata", json.dumps(metadata, sort_keys=True))
    # GGUF arrays take their type from the first element: an empty one cannot be written.
    if len(vector.indices):
        writer.add_array(f"{key}.indices", [int(i) for i in vector.indices])
    writer.add_array(f"{key}.enr", [float(x) for x in np.asarray(vector.enr, dtype=np.float32)])


def _field(reader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_gguf_control_vector(path: str | Path) -> list[SteeringVector]:
    """Read a GGUF control-vector file (llama.cpp's, repeng's or actstore's): one
    dense vector per ``direction.{layer}`` tensor, sorted by layer. What
    :func:`write_gguf_control_vector` wrote comes back whole (metadata, indices,
    ENR); from other writers ``model_hint`` and ``source`` are recorded and the ENR
    is unknown (NaN)."""
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    if not path.is_file():
        raise VectorError(f"control-vector file {str(path)!r} does not exist")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, OSError, KeyError) as err:
        raise VectorError(f"{str(path)!r} is not a GGUF file ({err}); expected a GGUF control vector") from None
    architecture = _field(reader, "general.architecture")
    if architecture != GGUF_ARCHITECTURE:
        raise VectorError(
            f"{str(path)!r} has general.architecture {architecture!r}; a control vector has "
            f"{GGUF_ARCHITECTURE!r} (is this a model file?)"
        )
    model_hint = _field(reader, f"{GGUF_ARCHITECTURE}.model_hint") or ""
    vectors = []
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction":
            continue
        where = f"{str(path)!r} tensor {tensor.name!r}"
        if not number.isdigit():
            raise VectorError(f"{where}: expected 'direction.<layer>' with a non-negative integer layer")
        if tensor.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            raise VectorError(f"{where}: type {tensor.tensor_type.name}; expected F32 (llama.cpp reads only F32)")
        if len(tensor.shape) != 1:
            raise VectorError(f"{where}: shape {list(tensor.shape)}; expected 1-D [hidden]")
        layer = int(number)
        values = _checked_values(tensor.data, where)
        vectors.append(_vector_from_gguf(reader, values, layer, model_hint, path))
    if not vectors:
        raise VectorError(f"{str(path)!r} has no 'direction.<layer>' tensors; expected a GGUF control vector")
    return _sorted_one_size(vectors, f"{str(path)!r} direction tensors")


def _vector_from_gguf(reader, values: np.ndarray, layer: int, model_hint: str, path: Path) -> SteeringVector:
    key = f"actstore.direction.{layer}"
    saved = _field(reader, f"{key}.metadata")
    if saved is None:
        extra = {"model_hint": model_hint, "source": f"gguf:{path.name}"}
        return _dense_vector(values, _peer_info("gguf", layer, len(values), extra))
    try:
        metadata = {str(name): str(value) for name, value in json.loads(saved).items()}
    except (ValueError, AttributeError):
        raise VectorError(f"{str(path)!r}: {key}.metadata is not a JSON object: {saved[:80]!r}") from None
    metadata.pop("layer", None)
    vector = _dense_vector(values, VectorInfo.from_metadata(metadata, f"{str(path)!r} {key}").replace(layer=layer))
    enr = _field(reader, f"{key}.enr")
    if enr is not None and len(enr) == len(values):
        vector = vector.replace(enr=np.asarray(enr, dtype=np.float32),
                                indices=np.asarray(_field(reader, f"{key}.indices") or [], dtype=np.int64))
    return vector

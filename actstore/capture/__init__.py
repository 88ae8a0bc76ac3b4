"""Capture: run a causal LM over texts and store what its decoder blocks output.

One module per job, data flowing down the list:

* :mod:`.positions`: where each text is read (:class:`Position`: ``last``, ``last-N``, ``mean``, ``all``, and
  relative to a chat exchange's turns ``prompt-last``, ``response-mean``, ``response-all``);
* :mod:`.options`: :class:`CaptureOptions`, the one record of how texts become rows (layers included);
* :mod:`.hooks`: forward hooks on decoder blocks that always remove themselves; early exit;
* :mod:`.windows`: texts -> activations window by window (:class:`WindowReader`, :func:`iter_windows`);
* :mod:`.ingest`: the writer thread that overlaps the model with the store (:class:`~.ingest.OrderedWriter`);
* :mod:`.planning`: a capture resolved against its model and data (texts, layers, offset, group spec);
* :mod:`.run`: :func:`capture_to_store`, its commit loop and capture-time statistics; shards;
* :mod:`.cluster`: :func:`capture_on_cluster` on dask.distributed, from a :class:`~actstore.models.load.ModelSpec`;
* :mod:`.respond`: on-policy capture, :func:`capture_responses`: the model writes its own responses under
  two system prompts (:class:`RespondOptions`), then they are captured (the persona-vectors recipe).

The forward pass stops after the deepest requested block: later blocks and the LM head never run.
"""

from ..models.hooks import block_output, forward_blocks, position_ids, record_blocks
from .cluster import capture_on_cluster
from .options import CaptureOptions
from .planning import answer_letter_reason, format_texts
from .positions import POSITIONS, Position, reduce_positions
from .respond import RespondOptions, capture_responses
from .run import CaptureReport, CaptureRequest, capture_request, capture_to_store
from .windows import CaptureError, Window, WindowReader, iter_windows, tokenize

__all__ = [
    "POSITIONS",
    "CaptureError",
    "CaptureOptions",
    "CaptureReport",
    "CaptureRequest",
    "Position",
    "RespondOptions",
    "Window",
    "WindowReader",
    "answer_letter_reason",
    "block_output",
    "capture_on_cluster",
    "capture_request",
    "capture_responses",
    "capture_to_store",
    "format_texts",
    "forward_blocks",
    "iter_windows",
    "position_ids",
    "record_blocks",
    "reduce_positions",
    "tokenize",
]

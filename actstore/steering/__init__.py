"""Steering at inference: vectors added (or projected, clamped) where they were made, at chosen tokens.

    core      steer: one configuration for the whole batch; Positions (which tokens), the edits a
              vector makes (vector_addition, DirectionEdit) shared with the vLLM plugin
    per_row   steer_rows: one configuration per batch row (the sweep's packed batches)
"""

from .core import (
    DirectionEdit,
    Edit,
    Positions,
    VectorAddition,
    check_vector,
    direction_edit,
    steer,
    vector_addition,
    vector_site,
)
from .per_row import RowSteering, steer_rows

__all__ = ["DirectionEdit", "Edit", "Positions", "RowSteering", "VectorAddition", "check_vector", "direction_edit",
           "steer", "steer_rows", "vector_addition", "vector_site"]

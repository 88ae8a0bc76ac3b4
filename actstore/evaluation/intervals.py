"""The evaluation's intervals live in :mod:`actstore.intervals` (below the evaluation in the flow:
the monitors use them too); this name is the same module."""

import sys

import actstore.intervals as _module

sys.modules[__name__] = _module

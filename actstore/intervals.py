"""Moved to :mod:`actstore.evaluation.intervals` (this name stays importable for old code)."""

import sys

from .evaluation import intervals as _module

sys.modules[__name__] = _module

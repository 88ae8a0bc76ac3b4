"""Moved to :mod:`actstore.evaluation.sweep` (this name stays importable for old code)."""

import sys

from .evaluation import sweep as _module

sys.modules[__name__] = _module

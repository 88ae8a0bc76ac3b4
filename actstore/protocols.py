"""Moved to :mod:`actstore.evaluation.protocols` (this name stays importable for old code)."""

import sys

from .evaluation import protocols as _module

sys.modules[__name__] = _module

"""Moved to :mod:`actstore.evaluation.replay` (this name stays importable for old code)."""

import sys

from .evaluation import replay as _module

sys.modules[__name__] = _module

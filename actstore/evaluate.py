"""Moved to :mod:`actstore.evaluation.scoring` (this name stays importable for old code)."""

import sys

from .evaluation import scoring as _module

sys.modules[__name__] = _module

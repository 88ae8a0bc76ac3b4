"""Moved to :mod:`actstore.evaluation.report` (this name stays importable for old code)."""

import sys

from .evaluation import report as _module

sys.modules[__name__] = _module

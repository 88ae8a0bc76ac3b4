"""Moved to :mod:`actstore.evaluation.ledger` (this name stays importable for old code)."""

import sys

from .evaluation import ledger as _module

sys.modules[__name__] = _module

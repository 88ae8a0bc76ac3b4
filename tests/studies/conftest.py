"""The study scripts (studies/*.py) import each other by module name, as `python studies/<script>.py` runs
them: their folder goes on the path before the tests here import them."""

from __future__ import annotations

import sys
from pathlib import Path

STUDIES = Path(__file__).resolve().parents[2] / "studies"
if str(STUDIES) not in sys.path:
    sys.path.insert(0, str(STUDIES))

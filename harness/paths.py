"""Where the checkout is and which interpreter starts the parts."""

from __future__ import annotations

import sys
from pathlib import Path

#: The checkout: ``celery -A worker`` and ``python -m sandbox`` run from here.
ROOT = Path(__file__).resolve().parent.parent
#: The interpreter running the tests or the benchmarks (the project's venv).
PYTHON = sys.executable

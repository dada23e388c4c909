"""Shared set-up of the course-hub tests: the repository on ``sys.path`` (for ``deploy``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

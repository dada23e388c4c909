"""Read a submitted notebook and scan its answer cells — in a bounded subprocess of the grader.

:func:`autograder.grade.grade_submission` never parses a submission in its own process: it
pipes the notebook's bytes to ``python -I -c "…analysis.main()"`` under a memory and CPU
limit and a wall timeout, and reads back JSON (the solution cells, the cells too long to run,
the integrity findings).  A notebook built to be slow or huge to parse (deep nesting, one
enormous cell, thousands of cells) costs at most those limits.  This module imports only
what that needs (no assignment, no virtcore beyond its errors): the subprocess starts fast.

>>> import json
>>> nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
...     {"cell_type": "code", "source": "import os\\nos.system('x')", "outputs": [],
...      "execution_count": None,
...      "metadata": {"nbgrader": {"solution": True, "grade_id": "p1"}}}]}
>>> out = analyse(json.dumps(nb).encode(), [], [])
>>> [c["grade_id"] for c in out["cells"]], [f[0] for f in out["findings"]["p1"]]
(['p1'], ['process'])
>>> analyse(b"[" * 100_000, [], [])["error"].startswith("corrupt")
True
"""

from __future__ import annotations

import json
import sys
from typing import Any

from autograder import extract, integrity

__all__ = ["MAX_CELL_CHARS", "analyse", "main"]

#: A solution cell longer than this (characters) is not run; its part scores 0 (``error``).
MAX_CELL_CHARS = 200_000


def _cells(text: str) -> list[extract.Cell]:
    """The solution cells: plain JSON for nbformat 4 (no nbformat import), else nbformat."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise extract.SubmissionError("corrupt: nested too deeply to be a notebook") from None
    except ValueError:
        data = None
    if (isinstance(data, dict) and data.get("nbformat") == 4
            and isinstance(data.get("cells"), list)):
        return extract.solution_cells(data)
    return extract.solution_cells(extract._parse(text))


def analyse(raw: bytes, forbidden: list[str], preamble: list[str]) -> dict[str, Any]:
    """Parse the notebook, take its solution cells, scan them; JSON data (or ``{"error"}``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return {"error": f"corrupt: not UTF-8 text ({e.reason} at byte {e.start})"}
    try:
        cells = _cells(text)
    except extract.SubmissionError as e:
        return {"error": e.reason}
    except RecursionError:
        return {"error": "corrupt: nested too deeply to be a notebook"}
    kept = [c for c in cells if len(c.source) <= MAX_CELL_CHARS]
    found = integrity.scan_cells([(c.grade_id, c.source) for c in kept],
                                 forbidden=forbidden, preamble=preamble)
    return {"cells": [{"grade_id": c.grade_id, "source": c.source, "index": c.index}
                      for c in cells],
            "too_large": [c.grade_id for c in cells if len(c.source) > MAX_CELL_CHARS],
            "findings": {gid: [[f.rule, str(f)] for f in fs] for gid, fs in found.items()}}


def main() -> None:
    """Entry point of the subprocess: notebook bytes on stdin, arguments (JSON) in argv[2]."""
    args = json.loads(sys.argv[2])
    out = analyse(sys.stdin.buffer.read(), args["forbidden"], args["preamble"])
    sys.stdout.write(json.dumps(out))

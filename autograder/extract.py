"""Read notebooks: the student's solution cells, and the set-up code of the instructor's source.

Only two things are ever taken from a notebook:

- from the **submission**: the code of its *solution cells* (nbgrader metadata
  ``nbgrader.solution == true``) keyed by ``grade_id``, in source order
  (:func:`read_submission`).  Test cells, outputs, markdown and everything else in the
  student's copy are ignored, so editing or deleting test cells changes nothing;
- from the **source** notebook (the instructor's, never the student's copy): the *preamble*
  (:func:`read_preamble`) — the code cells that are neither solution nor test cells, such as
  the imports the solution cells rely on.

A missing file raises :class:`SubmissionError` with ``reason == "missing"``; a file that is not
a notebook (bad JSON, wrong structure, too large, not UTF-8) raises it with
``reason == "corrupt: …"``.  Schema details that do not matter here (a missing cell id, an
unknown metadata key) are tolerated: a student is not failed for what Jupyter forgives.

>>> import json, tempfile, pathlib
>>> cell = {"cell_type": "code", "source": "x = 1", "execution_count": None, "outputs": [],
...         "metadata": {"nbgrader": {"solution": True, "grade": False, "grade_id": "p1",
...                                   "locked": False, "schema_version": 3}}}
>>> nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.ipynb").write_text(json.dumps(nb))
>>> [(c.grade_id, c.source) for c in read_submission(d / "a.ipynb")]
[('p1', 'x = 1')]
>>> read_submission(d / "nope.ipynb")
Traceback (most recent call last):
...
autograder.extract.SubmissionError: missing
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autograder.spec import GradingError

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "PREAMBLE_TAG",
    "SKIP_TAG",
    "Cell",
    "SubmissionError",
    "read_notebook",
    "read_preamble",
    "read_submission",
    "solution_cells",
]

#: Larger notebooks are refused as corrupt (a submission is a few hundred KiB at most).
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
#: Cell tag: when any cell of the source carries it, only such cells form the preamble.
PREAMBLE_TAG = "autograder:preamble"
#: Cell tag: never part of the preamble (demos, plots, visible checks).
SKIP_TAG = "autograder:skip"


class SubmissionError(Exception):
    """A submitted notebook cannot be read; ``reason`` is ``"missing"`` or ``"corrupt: …"``.

    >>> SubmissionError("corrupt: not JSON").reason
    'corrupt: not JSON'
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def status(self) -> str:
        """``"missing"`` or ``"corrupt"`` (a :class:`~autograder.grade.NotebookResult` status)."""
        return "missing" if self.reason == "missing" else "corrupt"


@dataclass(frozen=True)
class Cell:
    """A solution cell: its nbgrader ``grade_id``, its code, its index in the notebook.

    >>> Cell("handlers_io", "pass", 3).grade_id
    'handlers_io'
    """

    grade_id: str
    source: str
    index: int


def read_notebook(path: Path | str | None) -> dict[str, Any]:
    """The notebook at ``path`` as nbformat 4 (a plain dict tree); raises :class:`SubmissionError`.

    Uses :mod:`nbformat` to parse and upgrade older versions; validation problems that leave
    the cells readable are tolerated (see the module docstring).
    """
    if path is None:
        raise SubmissionError("missing")
    p = Path(path)
    try:
        if not p.is_file():
            raise SubmissionError("missing")
        size = p.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise SubmissionError(f"corrupt: {size} bytes, more than a notebook can be"
                                  f" ({MAX_NOTEBOOK_BYTES} bytes)")
        raw = p.read_bytes()
    except OSError as e:
        raise SubmissionError(f"corrupt: cannot read the file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"corrupt: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return _parse(text)


def _parse(text: str) -> dict[str, Any]:
    import nbformat
    from nbformat.reader import NotJSONError

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"corrupt: not JSON (line {e.lineno}, column {e.colno}:"
                              f" {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells", data.get("worksheets")),
                                                     list):
        raise SubmissionError("corrupt: not a notebook (no list of cells)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4, capture_validation_error={})
    except (NotJSONError, Exception) as e:  # nbformat raises many kinds, jsonschema's too
        raise SubmissionError(f"corrupt: not a notebook nbformat can read"
                              f" ({type(e).__name__}: {str(e)[:200]})") from None
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise SubmissionError("corrupt: not a notebook (no list of cells)")
    return nb  # type: ignore[no-any-return]


def _nbgrader(cell: Any) -> dict[str, Any]:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    nbg = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nbg if isinstance(nbg, dict) else {}


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _tags(cell: Any) -> list[str]:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def solution_cells(nb: dict[str, Any]) -> list[Cell]:
    """The code solution cells of a parsed notebook, in source order.

    A cell counts when it is a code cell with ``nbgrader.solution`` true and a non-empty
    string ``grade_id``.  If two cells claim one grade id (a copied cell), the first wins.
    """
    out: list[Cell] = []
    seen: set[str] = set()
    for i, cell in enumerate(nb.get("cells") or []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        nbg = _nbgrader(cell)
        gid = nbg.get("grade_id")
        if nbg.get("solution") is not True or not isinstance(gid, str) or not gid:
            continue
        if gid in seen:
            continue
        seen.add(gid)
        out.append(Cell(gid, _source(cell), i))
    return out


def read_submission(path: Path | str | None) -> list[Cell]:
    """The solution cells of the submitted notebook at ``path`` (see :func:`solution_cells`).

    Raises
    ------
    SubmissionError
        ``"missing"`` or ``"corrupt: …"``.
    """
    return solution_cells(read_notebook(path))


def _strip_magics(source: str) -> str:
    """IPython-only lines (``%matplotlib``, ``!pip``) become comments, so plain Python runs it."""
    lines = []
    for line in source.splitlines():
        s = line.lstrip()
        if s.startswith(("%", "!")):
            lines.append(line[: len(line) - len(s)] + "# " + s)
        else:
            lines.append(line)
    return "\n".join(lines)


def preamble_cells(nb: dict[str, Any]) -> list[str]:
    """The preamble of a parsed *source* notebook: code cells that are neither solution nor test.

    Skipped: cells tagged :data:`SKIP_TAG`, cells that mention ``autograder`` (visible-check
    helpers have no business in the worker).  If any cell is tagged :data:`PREAMBLE_TAG`,
    exactly the tagged cells are the preamble.  IPython magics are commented out.

    >>> setup = {"cell_type": "code", "metadata": {}, "source": "%matplotlib inline\\nimport math"}
    >>> test = {"cell_type": "code", "metadata": {"nbgrader": {"grade": True}},
    ...         "source": "assert 1"}
    >>> nb = {"cells": [setup, test]}
    >>> preamble_cells(nb)
    ['# %matplotlib inline\\nimport math']
    """
    cells = [c for c in (nb.get("cells") or []) if isinstance(c, dict)
             and c.get("cell_type") == "code"]
    tagged = [c for c in cells if PREAMBLE_TAG in _tags(c)]
    chosen: Iterable[Any] = tagged if tagged else cells
    out = []
    for c in chosen:
        nbg = _nbgrader(c)
        if nbg.get("solution") is True or nbg.get("grade") is True:
            continue
        if SKIP_TAG in _tags(c):
            continue
        src = _source(c)
        if "autograder" in src or not src.strip():
            continue
        out.append(_strip_magics(src))
    return out


def read_preamble(source_notebook: Path | str) -> list[str]:
    """The preamble of the instructor's source notebook (see :func:`preamble_cells`).

    Raises
    ------
    GradingError
        If the source notebook cannot be read — an instructor's problem, never a student's.
    """
    try:  # plain JSON for nbformat 4, as the grader's analysis does (nbformat costs seconds)
        data = json.loads(Path(source_notebook).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        data = None
    if (isinstance(data, dict) and data.get("nbformat") == 4 and isinstance(data.get("cells"), list)
            and all(isinstance(c, dict) for c in data["cells"])):
        return preamble_cells(data)
    try:
        nb = read_notebook(source_notebook)
    except SubmissionError as e:
        raise GradingError(f"the source notebook {source_notebook} cannot be used:"
                           f" {e.reason}") from None
    return preamble_cells(nb)

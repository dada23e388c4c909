"""Helpers for the autograder tests: solutions as cells, notebooks built from them, grading.

A solution file (``solutions/*.py``, never imported: they are student code) holds one block
per graded cell, each starting with ``# %% <grade_id>``.  A *variant* file holds only the
cells it changes; :func:`submission_cells` lays them over the assignment's correct solution.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from autograder.grade import NotebookResult, grade_notebook

collect_ignore_glob = ["solutions/*"]

SOLUTIONS = Path(__file__).resolve().parent / "solutions"
SECRET = "test-course-secret-0123456789"

#: The set-up cells of the source notebooks (what the students' cells may rely on).
PREAMBLE = {
    "a1_trap_and_emulate": (
        "from virtcore.vmm import Action, Insn\n"
        "from virtcore.hw import CR, Privilege, TrapCause\n"
        "from virtcore.hw.isa import CR0_PG, ESTATUS_USER, FLAG_IF, MASK32\n"),
    "a2_credit_scheduler": "from virtcore.sched import IDLE, Decision, Domain, Scheduler\n",
}
_SHORT = {"a1_trap_and_emulate": "a1", "a2_credit_scheduler": "a2"}


def cells_of(name_or_text: str) -> dict[str, str]:
    """The ``# %% <grade_id>`` blocks of a solution file (by name) or of a text, in order."""
    path = SOLUTIONS / name_or_text
    text = path.read_text(encoding="utf-8") if path.suffix == ".py" else name_or_text
    parts = re.split(r"^# %% (\w+)\n", text, flags=re.M)
    return {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts), 2)}


def submission_cells(assignment: str, *variants: str, **replace: str) -> dict[str, str]:
    """The correct solution with the cells of ``variants`` (files) and ``replace`` laid over."""
    cells = cells_of(f"{_SHORT[assignment]}_correct.py")
    for v in variants:
        cells.update(cells_of(v))
    cells.update(replace)
    return cells


def solution_cell(grade_id: str, source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": grade_id,
                                 "locked": False, "schema_version": 3}
    return cell


def graded_test_cell(grade_id: str, source: str, points: float = 1) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": False, "grade": True, "grade_id": grade_id,
                                 "locked": True, "points": points, "schema_version": 3}
    return cell


def notebook(assignment: str, cells: dict[str, str] | Iterable[tuple[str, str]], *,
             tests: bool = True, preamble: str | None = None) -> nbformat.NotebookNode:
    """A notebook: markdown, the set-up cell, then each solution cell followed by a test cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {assignment}"))
    nb.cells.append(nbformat.v4.new_code_cell(PREAMBLE[assignment] if preamble is None
                                              else preamble))
    items = cells.items() if isinstance(cells, dict) else cells
    for gid, src in items:
        nb.cells.append(nbformat.v4.new_markdown_cell(f"## {gid}"))
        nb.cells.append(solution_cell(gid, src))
        if tests:
            nb.cells.append(graded_test_cell(f"test_{gid}", f"assert callable(globals())  # {gid}"))
    return nb


class Course:
    """A temporary course folder: source notebooks and submissions, graded with one secret."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: dict[str, Path] = {}
        for assignment in PREAMBLE:
            path = root / "source" / assignment / f"{assignment}.ipynb"
            path.parent.mkdir(parents=True)
            nbformat.write(notebook(assignment, submission_cells(assignment)), path)
            self.sources[assignment] = path

    def submit(self, assignment: str, name: str, nb: nbformat.NotebookNode) -> Path:
        path = self.root / "submitted" / name / assignment / f"{assignment}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        return path

    def grade(self, assignment: str, path: Path | None, student: str = "alice", *,
              secret: str = SECRET, timeout: float = 60.0) -> NotebookResult:
        return grade_notebook(path, assignment, student, secret,
                              source_notebook=self.sources[assignment], timeout=timeout)

    def grade_cells(self, assignment: str, cells: dict[str, str] | Iterable[tuple[str, str]],
                    student: str = "alice", **kw: object) -> NotebookResult:
        path = self.submit(assignment, student, notebook(assignment, cells))
        return self.grade(assignment, path, student, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Course:
    """A course folder shared by a test module."""
    return Course(tmp_path_factory.mktemp("course"))


def scores(result: NotebookResult) -> dict[str, tuple[float, str]]:
    """grade id → (score, status)."""
    return {p.grade_id: (p.score, p.status) for p in result.parts}


@pytest.fixture(scope="session")
def ag() -> SimpleNamespace:
    """The helpers of this file, for the test modules (conftest is not importable by name)."""
    return SimpleNamespace(cells_of=cells_of, submission_cells=submission_cells,
                           notebook=notebook, solution_cell=solution_cell,
                           graded_test_cell=graded_test_cell, scores=scores, SECRET=SECRET,
                           PREAMBLE=PREAMBLE, SOLUTIONS=SOLUTIONS, Course=Course)

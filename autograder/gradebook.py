"""The autograder's scores in nbgrader's gradebook (``nbgrader.api.Gradebook``).

nbgrader keeps one database per course — SQLite ``course/gradebook.db`` by
default, any SQLAlchemy URL on a shared deployment — with the assignments, their
notebooks and *grade cells* (the autograder test cells, with their points), the
students, and per submission one ``Grade`` row per grade cell and one
``Comment`` row per solution cell.  formgrader, ``nbgrader export`` and
``nbgrader generate_feedback`` all read it.

This module writes the external scores of ``python -m autograder grade`` there:

- each **part** of an :class:`~autograder.spec.AssignmentSpec` is one solution
  cell (``grade_id`` = the part's ``grade_id``) followed by its test cell, whose
  ``grade_id`` is :func:`part_test_cell` (``test_<part>``) and whose points are
  the part's points;
- :meth:`CourseGradebook.record` stores a part's score as the test cell's
  ``auto_score`` (``needs_manual_grade`` off) and the per-check messages as the
  solution cell's ``auto_comment``.  A human grader can still override a score
  in formgrader (``manual_score`` wins over ``auto_score`` in nbgrader).

Every write of one result is **one transaction**: either the whole submission
(student, submission row, every part's grade and comment) is committed, or —
on any error or interruption — nothing of it is, and what earlier calls
committed stays.  Recording the same result twice leaves the same rows
(idempotent), so an interrupted ``grade`` run can simply be run again.

The configuration (course id, database URL) comes from the course's
``nbgrader_config.py``, so nbgrader and the autograder always use the same
gradebook.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autograder.grade import NotebookResult
    from autograder.spec import AssignmentSpec

__all__ = [
    "COURSE_ID",
    "CourseConfig",
    "CourseGradebook",
    "GradebookError",
    "NotebookCells",
    "check_spec_against_notebook",
    "course_config",
    "notebook_cells",
    "part_comment",
    "part_test_cell",
]

#: The course id when the course's nbgrader_config.py sets none.
COURSE_ID = "virtcore"

#: Columns of nbgrader's own CSV export, first in ours (then one column per part).
EXPORT_KEYS = (
    "assignment",
    "duedate",
    "timestamp",
    "student_id",
    "last_name",
    "first_name",
    "email",
    "raw_score",
    "late_submission_penalty",
    "score",
    "max_score",
)


class GradebookError(RuntimeError):
    """The gradebook does not match the assignment (or cannot be written)."""


def part_test_cell(part_grade_id: str) -> str:
    """The ``grade_id`` of the autograder test cell that belongs to a part.

    >>> part_test_cell("handlers_io")
    'test_handlers_io'
    """
    return f"test_{part_grade_id}"


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CourseConfig:
    """What the autograder needs from ``nbgrader_config.py``.

    >>> CourseConfig(Path("/c"), "virtcore", "sqlite:////c/gradebook.db").course_id
    'virtcore'
    """

    root: Path
    course_id: str
    db_url: str


def course_config(course: Path, db_url: str | None = None) -> CourseConfig:
    """Read the course id and the gradebook URL from ``course/nbgrader_config.py``.

    ``db_url`` (e.g. from ``--db-url``) wins over the file; the file may itself
    read ``VIRTCORE_GRADEBOOK_URL``.  Without a config file: course id
    :data:`COURSE_ID` and ``sqlite:///<course>/gradebook.db``.
    """
    root = Path(course).resolve()
    course_id, url = COURSE_ID, f"sqlite:///{root / 'gradebook.db'}"
    cfg_file = root / "nbgrader_config.py"
    if cfg_file.is_file():
        from traitlets.config.loader import PyFileConfigLoader

        cfg = PyFileConfigLoader(cfg_file.name, path=str(root)).load_config()
        section = cfg.get("CourseDirectory", {})
        if isinstance(section.get("course_id"), str) and section["course_id"]:
            course_id = section["course_id"]
        if isinstance(section.get("db_url"), str) and section["db_url"]:
            url = section["db_url"]
    return CourseConfig(root, course_id, db_url or url)


# -- the source notebook's cells ------------------------------------------------------------------


@dataclass(frozen=True)
class NotebookCells:
    """The nbgrader cells of a source notebook: grade cells with points, solution cells.

    >>> NotebookCells("nb", {"test_a": 5.0}, ("a",), ()).max_score
    5.0
    """

    name: str  # notebook name without .ipynb, as nbgrader stores it
    grade_cells: dict[str, float]  # grade_id -> points (autograder test cells)
    solution_cells: tuple[str, ...]
    source_cells: tuple[tuple[str, str, bool, str, str], ...]  # name, type, locked, source, sum

    @property
    def max_score(self) -> float:
        """Sum of the grade cells' points."""
        return float(sum(self.grade_cells.values()))


def notebook_cells(path: Path) -> NotebookCells:
    """Read the nbgrader metadata of ``path`` (a source or released notebook)."""
    import nbformat
    from nbgrader.utils import compute_checksum, is_grade, is_locked, is_solution

    nb = nbformat.read(str(path), as_version=4)
    grades: dict[str, float] = {}
    solutions: list[str] = []
    sources: list[tuple[str, str, bool, str, str]] = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if not meta or "grade_id" not in meta:
            continue
        gid = meta["grade_id"]
        if is_grade(cell):
            grades[gid] = float(meta.get("points", 0))
        if is_solution(cell):
            solutions.append(gid)
        sources.append((gid, cell.cell_type, is_locked(cell), cell.source, compute_checksum(cell)))
    return NotebookCells(Path(path).stem, grades, tuple(solutions), tuple(sources))


def check_spec_against_notebook(spec: AssignmentSpec, cells: NotebookCells) -> list[str]:
    """Mismatches between the autograder's parts and the notebook's cells ([] when they agree).

    Each part needs a solution cell named like it and a test cell
    :func:`part_test_cell` worth the part's points.
    """
    problems = []
    for part in spec.parts:
        if part.grade_id not in cells.solution_cells:
            problems.append(f"no solution cell with grade_id {part.grade_id!r}")
        tname = part_test_cell(part.grade_id)
        if tname not in cells.grade_cells:
            problems.append(f"no autograder test cell with grade_id {tname!r}")
        elif abs(cells.grade_cells[tname] - part.points) > 1e-9:
            problems.append(f"test cell {tname!r} is worth {cells.grade_cells[tname]:g} points,"
                            f" the part {part.grade_id!r} {part.points:g}")
    return problems


# -- comments -------------------------------------------------------------------------------------


def part_comment(part: Any) -> str:
    """The comment stored for one part: score, status, one line per check (no test code).

    ``part`` is a :class:`~autograder.grade.PartResult`.
    """
    lines = [f"{part.grade_id}: {part.score:g} / {part.max_score:g} ({part.status})"]
    if part.reason:
        lines.append(f"  {part.reason}")
    for ch in part.checks:
        mark = "pass" if ch.passed else "FAIL"
        kind = "hidden" if ch.hidden else "visible"
        line = f"  [{mark}] {ch.name} ({kind}) {ch.points:g}/{ch.max_points:g}"
        if ch.message:
            line += f" — {ch.message}"
        lines.append(line)
    return "\n".join(lines)


def _parse_timestamp(value: str | _dt.datetime | None) -> _dt.datetime | None:
    if value is None or isinstance(value, _dt.datetime):
        return value
    from nbgrader.utils import parse_utc

    try:
        return parse_utc(value.strip())
    except (ValueError, TypeError, OverflowError):
        return None


# -- the gradebook ---------------------------------------------------------------------------------


class CourseGradebook:
    """The course's nbgrader gradebook, with the writes the autograder needs.

    Parameters
    ----------
    db_url : str
        Any SQLAlchemy URL (``sqlite:///course/gradebook.db``,
        ``postgresql://user@host/db``); tables are created when missing.
    course_id : str

    Use as a context manager (closes the connection).
    """

    def __init__(self, db_url: str, course_id: str = COURSE_ID) -> None:
        from nbgrader.api import Gradebook

        self.db_url = db_url
        self.course_id = course_id
        self.gb = Gradebook(db_url, course_id=course_id)

    @classmethod
    def for_course(cls, course: Path, db_url: str | None = None) -> CourseGradebook:
        """Open the gradebook configured in ``course/nbgrader_config.py``."""
        cfg = course_config(course, db_url)
        return cls(cfg.db_url, cfg.course_id)

    def __enter__(self) -> CourseGradebook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection."""
        self.gb.close()

    @property
    def session(self) -> Any:
        """The SQLAlchemy session (for advanced queries)."""
        return self.gb.db

    # -- students ------------------------------------------------------------------------------
    def ensure_student(self, student_id: str, **fields: str | None) -> None:
        """Add the student if missing; fill in names/e-mail given (never blank them)."""
        kwargs = {k: v for k, v in fields.items() if v}
        self.gb.update_or_create_student(student_id, **kwargs)

    def import_students(self, csv_path: Path) -> int:
        """Add or update students from a CSV (``id,first_name,last_name,email``; ``id`` needed).

        The format of ``nbgrader db student import``; ``student_id`` is accepted for ``id``.
        Returns the number of rows imported.
        """
        n = 0
        with open(csv_path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                sid = (row.get("id") or row.get("student_id") or "").strip()
                if not sid:
                    continue
                self.ensure_student(sid, first_name=row.get("first_name"),
                                    last_name=row.get("last_name"), email=row.get("email"))
                n += 1
        return n

    def student_ids(self) -> list[str]:
        """All student ids, sorted."""
        return sorted(s.id for s in self.gb.students)

    # -- assignments ---------------------------------------------------------------------------
    def has_assignment(self, name: str) -> bool:
        """Whether ``name`` is in the gradebook."""
        from nbgrader.api import MissingEntry

        try:
            self.gb.find_assignment(name)
        except MissingEntry:
            return False
        return True

    def ensure_assignment(self, spec: AssignmentSpec, source_notebook: Path) -> NotebookCells:
        """Make sure the assignment, its notebook and cells are recorded, as in ``source_notebook``.

        ``nbgrader generate_assignment`` records them already; this adds what is
        missing (e.g. in a new database) and checks the test cells' points agree
        with the parts (:class:`GradebookError` if not).  It never deletes cells.
        """
        cells = notebook_cells(source_notebook)
        problems = check_spec_against_notebook(spec, cells)
        if problems:
            raise GradebookError(f"{source_notebook.name} does not match the autograder's parts"
                                 f" of {spec.name}: " + "; ".join(problems))
        from nbgrader.api import MissingEntry

        gb = self.gb
        try:
            gb.find_assignment(spec.name)
        except MissingEntry:
            gb.add_assignment(spec.name)
        db = gb.db
        try:
            try:
                nb = gb.find_notebook(cells.name, spec.name)
            except MissingEntry:
                nb = gb.add_notebook(cells.name, spec.name)
            existing = {c.name: c for c in nb.grade_cells}
            for name, points in cells.grade_cells.items():
                cell = existing.get(name)
                if cell is None:
                    gb.add_grade_cell(name, cells.name, spec.name, max_score=points,
                                      cell_type="code")
                elif abs((cell.max_score or 0.0) - points) > 1e-9:
                    cell.max_score = points
                    db.commit()
            have = {c.name for c in nb.solution_cells}
            for name in cells.solution_cells:
                if name not in have:
                    gb.add_solution_cell(name, cells.name, spec.name)
            have_src = {c.name for c in nb.source_cells}
            for name, ctype, locked, source, checksum in cells.source_cells:
                if name not in have_src:
                    gb.add_source_cell(name, cells.name, spec.name, cell_type=ctype,
                                       locked=locked, source=source, checksum=checksum)
        except Exception:
            db.rollback()
            raise
        # submissions made before a cell was added lack its Grade/Comment rows: record() adds them
        return cells

    # -- results -------------------------------------------------------------------------------
    def record(self, spec: AssignmentSpec, result: NotebookResult, *,
               timestamp: str | _dt.datetime | None = None) -> None:
        """Write one graded submission: every part's score and comment, in one transaction.

        The student and the submission are created if missing.  A part missing
        from ``result.parts`` (a corrupt or missing notebook) scores 0 with the
        notebook's reason as its comment.
        """
        from nbgrader.api import (
            Comment,
            Grade,
            Notebook,
            Student,
            SubmittedAssignment,
            SubmittedNotebook,
        )

        gb = self.gb
        db = gb.db
        nb_name = Path(spec.notebook).stem
        when = _parse_timestamp(timestamp)
        try:
            assignment = gb.find_assignment(spec.name)
            notebook = db.query(Notebook).filter(Notebook.name == nb_name,
                                                 Notebook.assignment == assignment).one_or_none()
            if notebook is None:
                raise GradebookError(f"notebook {nb_name!r} of {spec.name!r} is not in the"
                                     " gradebook: run `python -m autograder release` first")
            student = db.get(Student, result.student)
            if student is None:
                student = Student(id=result.student)
                db.add(student)
            sub = (db.query(SubmittedAssignment)
                   .filter(SubmittedAssignment.assignment == assignment,
                           SubmittedAssignment.student == student).one_or_none())
            if sub is None:
                sub = SubmittedAssignment(assignment=assignment, student=student)
                db.add(sub)
            if when is not None:
                sub.timestamp = when
            snb = next((n for n in sub.notebooks if n.notebook is notebook), None)
            if snb is None:
                snb = SubmittedNotebook(notebook=notebook, assignment=sub)
                db.add(snb)
            grades = {g.cell_id: g for g in snb.grades}
            comments = {c.cell_id: c for c in snb.comments}
            for cell in notebook.grade_cells:
                if cell.id not in grades:
                    grades[cell.id] = Grade(cell_id=cell.id, notebook=snb)
                    db.add(grades[cell.id])
            for cell in notebook.solution_cells:
                if cell.id not in comments:
                    comments[cell.id] = Comment(cell_id=cell.id, notebook=snb)
                    db.add(comments[cell.id])
            by_part = {p.grade_id: p for p in result.parts}
            gcells = {c.name: c for c in notebook.grade_cells}
            scells = {c.name: c for c in notebook.solution_cells}
            for part in spec.parts:
                got = by_part.get(part.grade_id)
                if got is not None:
                    score = max(0.0, min(float(got.score), float(part.points)))
                    comment = part_comment(got)
                else:
                    score = 0.0
                    why = result.reason or result.status
                    comment = f"{part.grade_id}: 0 / {part.points:g} ({result.status}) — {why}"
                gcell = gcells.get(part_test_cell(part.grade_id))
                if gcell is None:
                    raise GradebookError(f"no grade cell {part_test_cell(part.grade_id)!r} in"
                                         f" the gradebook for {spec.name!r}")
                grade = grades[gcell.id]
                grade.auto_score = score
                grade.needs_manual_grade = False
                scell = scells.get(part.grade_id)
                if scell is not None:
                    comments[scell.id].auto_comment = comment
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def part_scores(self, assignment: str, student: str) -> dict[str, float]:
        """Test-cell name → score recorded for one submission ({} when there is none)."""
        from nbgrader.api import MissingEntry

        try:
            sub = self.gb.find_submission(assignment, student)
        except MissingEntry:
            return {}
        return {g.name: float(g.score) for nb in sub.notebooks for g in nb.grades}

    # -- export ---------------------------------------------------------------------------------
    def rows(self, assignments: Sequence[str] = ()) -> Iterator[dict[str, object]]:
        """One dict per (assignment, student), as ``nbgrader export`` plus a column per part.

        Students without a submission get a score of 0 (as in nbgrader's export).
        """
        from nbgrader.api import MissingEntry

        gb = self.gb
        for assignment in sorted(gb.assignments, key=lambda a: a.name):
            if assignments and assignment.name not in assignments:
                continue
            cell_names = sorted({c.name for nb in assignment.notebooks for c in nb.grade_cells})
            for student in sorted(gb.students, key=lambda s: s.id):
                row: dict[str, object] = {
                    "assignment": assignment.name,
                    "duedate": assignment.duedate or "",
                    "student_id": student.id,
                    "last_name": student.last_name or "",
                    "first_name": student.first_name or "",
                    "email": student.email or "",
                    "max_score": assignment.max_score,
                }
                try:
                    sub = gb.find_submission(assignment.name, student.id)
                except MissingEntry:
                    row.update(timestamp="", raw_score=0.0, late_submission_penalty=0.0,
                               score=0.0)
                    row.update({f"part:{n}": "" for n in cell_names})
                else:
                    penalty = float(sub.late_submission_penalty or 0.0)
                    raw = float(sub.score)
                    row.update(timestamp=sub.timestamp or "", raw_score=raw,
                               late_submission_penalty=penalty, score=max(0.0, raw - penalty))
                    scores = {g.name: float(g.score) for nb in sub.notebooks for g in nb.grades}
                    row.update({f"part:{n}": scores.get(n, 0.0) for n in cell_names})
                yield row

    def export_csv(self, dest: Path, assignments: Sequence[str] = ()) -> int:
        """Write :meth:`rows` to ``dest`` (atomically); returns the number of rows."""
        rows = list(self.rows(assignments))
        part_cols = sorted({k for r in rows for k in r if k.startswith("part:")})
        keys = [*EXPORT_KEYS, *part_cols]
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, restval="")
            w.writeheader()
            for r in rows:
                w.writerow({k: _csv_value(r.get(k, "")) for k in keys})
        os.replace(tmp, dest)
        return len(rows)


def _csv_value(v: object) -> object:
    if isinstance(v, float):
        return f"{v:g}"
    return v

"""nbgrader's own ``autograde`` (and formgrader's *Autograde* button) through the safe grader.

nbgrader's :class:`nbgrader.converters.Autograde` converts each submitted notebook in two
passes (nbgrader 0.9, ``converters/autograde.py``):

- ``sanitize_preprocessors`` on ``submitted/`` → ``autograded/``: ``ClearOutput``,
  ``DeduplicateIds``, ``OverwriteKernelspec``, ``OverwriteCells`` (test and locked cells
  restored from the gradebook), ``CheckCellMetadata``;
- ``autograde_preprocessors`` on that copy: ``Execute`` (**runs the whole notebook, the
  student's code and the tests, in one kernel** — which can patch the checks, write the
  gradebook and the course's ``source/``), ``IgnorePattern``, ``ClearMetadataPreprocessor``,
  ``LimitOutput``, ``SaveAutoGrades`` (a test cell scores its points unless its outputs hold
  an error or stderr; an ``execute_result`` holding a number is partial credit —
  ``nbgrader.utils.determine_grade``), ``AssignLatePenalties``, ``CheckCellMetadata``.

formgrader's button calls ``NbGraderAPI.autograde``, which runs the same ``Autograde`` app
with the server's configuration — this course's ``nbgrader_config.py``.  That file replaces
the preprocessor lists with the ones here (:data:`SANITIZE_PREPROCESSORS`,
:data:`AUTOGRADE_PREPROCESSORS`), so **no kernel is ever started and nothing the student
wrote runs outside the grader's sandbox**:

- :class:`RestoreMetadata` (first, before ``OverwriteCells``): every cell's ``nbgrader``
  metadata comes from the *source* notebook by ``grade_id``; a cell whose id the source does
  not have loses its nbgrader metadata (so a student cannot add a grade cell, claim 4000
  points, or turn an answer cell into a test cell);
- :class:`NeutralizeMarkdown`: the student's unlocked markdown and raw cells keep no HTML
  (:func:`autograder.sanitize.escape_markdown`), attachments keep images only — formgrader
  renders ``autograded/`` in the instructor's browser;
- :class:`SafeGrade` (instead of ``Execute``): grades the submitted file with the course's
  grader — the same :class:`~autograder.grade.GradeTask` through the same
  :func:`~autograder.grade.grade_submission` as ``python -m autograder grade`` (sandboxed
  workers, hidden cases keyed by the file's SHA-256, results compared in the grader) — then
  writes each test cell's outputs: the part's comment
  as text (hidden seeds redacted: ``nbgrader generate_feedback`` shows it to the student) and
  its score as an ``execute_result`` number, which ``SaveAutoGrades`` records as
  partial credit (``repr`` of the float, so the gradebook holds exactly the grader's score);
  every other code cell's outputs stay empty;
- :class:`SaveComments` (after ``SaveAutoGrades``, which blanks the answer cells'
  comments): each answer cell's ``auto_comment`` is the grader's per-check text, as
  ``python -m autograder grade`` writes it.

So ``nbgrader autograde <a>`` and the button record the same points as ``python -m
autograder grade`` and are as safe.  If ``autograder`` cannot be imported, nbgrader fails
on the class name instead of falling back to ``Execute``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from nbgrader.preprocessors import NbGraderPreprocessor
from nbgrader.utils import is_grade, is_locked, is_solution
from traitlets import Float, Unicode

__all__ = [
    "AUTOGRADE_PREPROCESSORS",
    "SANITIZE_PREPROCESSORS",
    "HideTestTracebacks",
    "NeutralizeMarkdown",
    "RestoreMetadata",
    "SafeGrade",
    "SaveComments",
    "grade_for_nbgrader",
]

from autograder.nbgrader_names import AUTOGRADE_PREPROCESSORS, SANITIZE_PREPROCESSORS

_RESULT_KEY = "virtcore_result"


class _CourseAware(NbGraderPreprocessor):
    course_dir = Unicode("", help="The course directory (source/, the secret).").tag(
        config=True)

    def _course(self) -> Path:
        if not self.course_dir:
            raise RuntimeError(f"{type(self).__name__}.course_dir is not configured")
        return Path(self.course_dir)

    def _spec(self, resources: Any) -> Any:
        from autograder import assignments

        name = resources["nbgrader"]["assignment"]
        if name not in assignments.REGISTRY:
            raise RuntimeError(f"the autograder does not know the assignment {name!r}")
        return assignments.get(name)

    def _source_meta(self, spec: Any) -> dict[str, dict[str, Any]]:
        import nbformat

        src = self._course() / "source" / spec.name / spec.notebook
        nb = nbformat.read(str(src), as_version=4)
        out = {}
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if isinstance(meta, dict) and meta.get("grade_id"):
                out[meta["grade_id"]] = dict(meta)
        return out


class RestoreMetadata(_CourseAware):
    """Every cell's nbgrader metadata from the source notebook (by ``grade_id``), or none."""

    def preprocess(self, nb: Any, resources: Any) -> tuple[Any, Any]:
        source = self._source_meta(self._spec(resources))
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta is None:
                continue
            gid = meta.get("grade_id") if isinstance(meta, dict) else None
            if isinstance(gid, str) and gid in source:
                fresh = copy.deepcopy(source[gid])
                fresh.pop("checksum", None)
                cell.metadata["nbgrader"] = fresh
            else:
                del cell.metadata["nbgrader"]
        return nb, resources


class NeutralizeMarkdown(NbGraderPreprocessor):
    """The student's markdown/raw cells keep no HTML; attachments keep images only.

    Locked cells were just restored from the gradebook by ``OverwriteCells`` (the
    instructor's text) and stay as they are.
    """

    def preprocess_cell(self, cell: Any, resources: Any, index: int) -> tuple[Any, Any]:
        from autograder.sanitize import escape_markdown

        if cell.cell_type in ("markdown", "raw") and not is_locked(cell):
            cell.source = escape_markdown(cell.source)
            cell.metadata.pop("raw_mimetype", None)
            cell.metadata.pop("format", None)
            att = cell.get("attachments")
            if att:
                keep = {}
                for name, bundle in att.items():
                    imgs = {m: v for m, v in bundle.items()
                            if m in ("image/png", "image/jpeg", "image/gif")}
                    if imgs:
                        keep[name] = imgs
                cell["attachments"] = keep
        return cell, resources


def _read_submitted(path: Path) -> bytes:
    """The submitted notebook's bytes: a regular file, never through a symlink, capped."""
    from autograder.extract import MAX_NOTEBOOK_BYTES

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeError(f"{path} is not a regular file: not graded")
        chunks, n = [], 0
        while n <= MAX_NOTEBOOK_BYTES:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
            n += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def grade_for_nbgrader(path: Path, assignment: str, student: str, course: Path,
                       timeout: float, budget: float | None = None) -> Any:
    """Grade the submitted notebook at ``path`` exactly as ``python -m autograder grade`` does.

    The same :class:`~autograder.grade.GradeTask` (the file's bytes, the source's preamble,
    the hidden-case key from the secret, the student and the file's SHA-256) through the
    same :func:`~autograder.grade.grade_submission`, so the hidden cases and the scores are
    the same.  An outcome with unresolved infrastructure faults is not a grade: it raises,
    and nbgrader records nothing for that notebook (as ``grade`` does not cache it).
    Returns a :class:`~autograder.grade.NotebookResult`.
    """
    from autograder import extract, grade
    from autograder.cli import load_secret
    from autograder.sandbox import sandbox_problem

    problem = sandbox_problem()  # as `grade` does: no sandbox, no grading (never unconfined)
    if problem:
        raise RuntimeError(f"cannot grade without a sandbox: {problem}")
    spec = grade._resolve(assignment)[0]
    source = course / "source" / spec.name / spec.notebook
    raw = _read_submitted(path)
    sha = hashlib.sha256(raw).hexdigest()
    task = grade.GradeTask(student, spec.name, raw, tuple(extract.read_preamble(source)),
                           grade.hidden_seed_key(load_secret(course), student, spec.name, sha),
                           sha, part_timeout=timeout,
                           budget_seconds=budget if budget is not None else grade.STUDENT_BUDGET)
    outcome = grade.grade_submission(task)
    if outcome.faults:
        raise RuntimeError(f"{student} not graded (infrastructure fault, run again):"
                           f" {'; '.join(outcome.faults)[:500]}")
    return grade.NotebookResult.from_json(outcome.result)


class SafeGrade(_CourseAware):
    """Instead of ``Execute``: grade in the sandbox, report each part in its test cell."""

    timeout = Float(60.0, help="Wall-clock limit per graded part, seconds.").tag(config=True)
    budget = Float(300.0, help="Wall-clock budget per submission, seconds.").tag(config=True)

    def preprocess(self, nb: Any, resources: Any) -> tuple[Any, Any]:
        import nbformat

        from autograder.feedback import student_view
        from autograder.gradebook import part_comment, part_test_cell

        spec = self._spec(resources)
        info = resources["nbgrader"]
        student = info["student"]
        # the submitted file itself (not nbgrader's in-memory copy): the same bytes, so the
        # same SHA-256 and the same hidden cases as `python -m autograder grade`
        path = (self._course() / "submitted" / student / spec.name
                / f"{info.get('notebook') or Path(spec.notebook).stem}.ipynb")
        result = grade_for_nbgrader(path, spec.name, student, self._course(), self.timeout,
                                    self.budget)
        resources[_RESULT_KEY] = result
        view = student_view(result)
        by_test = {part_test_cell(p.grade_id): p for p in spec.parts}
        got = {p.grade_id: p for p in result.parts}
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cell.outputs = []
            cell.execution_count = None
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if not (is_grade(cell) and not is_solution(cell) and gid in by_test):
                continue
            part = by_test[gid]
            pr = got.get(part.grade_id)
            score = min(max(float(pr.score), 0.0), float(part.points)) if pr else 0.0
            # what `nbgrader generate_feedback` may show the student: no hidden seed
            text = part_comment(view.part(part.grade_id)) if pr else (
                f"{part.grade_id}: 0 / {part.points:g} ({result.status}) —"
                f" {result.reason or result.status}")
            cell.outputs = [
                nbformat.v4.new_output("stream", name="stdout", text=text + "\n"),
                nbformat.v4.new_output("execute_result", data={"text/plain": repr(score)}),
            ]
        self.log.info("graded by virtcore's grader: %s %s %g/%g (%s)", student, spec.name,
                      result.score, result.max_score, result.status)
        return nb, resources


class SaveComments(NbGraderPreprocessor):
    """Each answer cell's ``auto_comment``: the grader's per-check text for its part."""

    def preprocess(self, nb: Any, resources: Any) -> tuple[Any, Any]:
        from nbgrader.api import Gradebook, MissingEntry

        from autograder.gradebook import part_comment

        result = resources.get(_RESULT_KEY)
        if result is None:
            return nb, resources
        info = resources["nbgrader"]
        by_part = {p.grade_id: p for p in result.parts}
        with Gradebook(info["db_url"]) as gb:
            for cell in nb.cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if not is_solution(cell) or gid not in by_part:
                    continue
                try:
                    comment = gb.find_comment(gid, info["notebook"], info["assignment"],
                                              info["student"])
                except MissingEntry:
                    continue
                comment.auto_comment = part_comment(by_part[gid])
            gb.db.commit()
        return nb, resources


class HideTestTracebacks(NbGraderPreprocessor):
    """Reduce every autograder test cell's outputs to the grader's text and error lines.

    nbgrader's feedback shows the test cells with their outputs; an IPython
    traceback quotes the failing source lines, so a failing *hidden* test would
    leak its code even after ``ClearHiddenTests`` removed it from the cell
    (nbgrader issues #917, #1363).  On this course no test cell is executed
    (``SafeGrade``): its outputs are the grader's per-check text for the part (hidden
    seeds redacted), kept on stdout, and its score, dropped.  Anything else — stderr,
    rich outputs, a traceback's code — is dropped or reduced to the error line.
    """

    def preprocess_cell(self, cell: Any, resources: Any, cell_index: int) -> tuple[Any, Any]:
        if cell.cell_type == "code" and is_grade(cell) and not is_solution(cell):
            kept = []
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    line = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".rstrip(": ")
                    out["traceback"] = [line + "  (test code hidden)"]
                    kept.append(out)
                elif out.get("output_type") == "stream" and out.get("name") == "stdout":
                    kept.append(out)
            cell["outputs"] = kept
        return cell, resources

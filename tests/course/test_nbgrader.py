"""nbgrader's own pipeline on the course: autograde (through the course's grader, see
autograder/nbgrader_bridge.py) gives the source full marks, the stub 0; generated feedback
shows no hidden test (nbgrader issues #917, #1363) with our config.

The course's scores come from ``python -m autograder grade`` (test_pipeline.py); these tests
keep the notebooks honest for instructors who also use formgrader and ``nbgrader autograde``:
the hidden tests in the source are informational, but they must pass on the solution, fail
on the stub, and never reach a student.
"""

from __future__ import annotations

import html
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest


def _load_helpers() -> Any:
    name = "_virtcore_course_helpers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_helpers.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


H = _load_helpers()
A1, A2, NOTEBOOK = H.A1, H.A2, H.NOTEBOOK

def _scores(course: Path) -> dict[tuple[str, str], tuple[float, bool]]:
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id="virtcore") as gb:
        for a in gb.assignments:
            for sub in gb.assignment_submissions(a.name):
                out[(a.name, sub.student.id)] = (float(sub.score), bool(sub.needs_manual_grade))
    return out


def _text(page: str) -> str:
    """What a browser shows of an HTML page: tags dropped (code is split into highlighted
    spans), entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _hidden_lines(source: Path) -> set[str]:
    """Lines only the hidden-test regions have (a visible check may share a line with them)."""
    hidden, visible, inside = set(), set(), False
    for cell in H.read_nb(source).cells:
        for ln in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in ln:
                inside = True
            elif "END HIDDEN TESTS" in ln:
                inside = False
            elif len(ln.strip()) > 8:
                (hidden if inside else visible).add(ln.strip())
    return hidden - visible


@pytest.fixture(scope="module")
def autograded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A course where nbgrader itself generated, collected (by hand) and autograded."""
    course = H.copy_course(tmp_path_factory.mktemp("nbgrader") / "course")
    for a in (A1, A2):
        H.run_nbgrader(course, "generate_assignment", a, "--force")
        src = course / "source" / a / NOTEBOOK[a]
        rel = course / "release" / a / NOTEBOOK[a]
        H.write_nb(H.read_nb(src), course / "submitted" / "sol" / a / NOTEBOOK[a])
        H.write_nb(H.read_nb(rel), course / "submitted" / "stub" / a / NOTEBOOK[a])
    src1 = course / "source" / A1 / NOTEBOOK[A1]
    good = H.solved(course / "release" / A1 / NOTEBOOK[A1], src1)
    H.write_nb(H.without_test_cells(good), course / "submitted" / "deleted" / A1 / NOTEBOOK[A1])
    ns = H.notebook_namespace(A2, ("imports", "helpers"))
    visible = {d["cap"] for s in ns["PUBLIC_SEEDS"]["caps"]
               for d in ns["public_case"]("caps", s)["domains"]}
    H.write_nb(H.solved(course / "release" / A2 / NOTEBOOK[A2],
                        course / "source" / A2 / NOTEBOOK[A2],
                        credit_caps=H.hardcoded_caps(visible, [
                            [{k: d[k] for k in ("name", "weight", "cap")} for d in
                             ns["public_case"]("caps", s)["domains"]]
                            for s in ns["PUBLIC_SEEDS"]["caps"]])),
               course / "submitted" / "hardcoder" / A2 / NOTEBOOK[A2])
    for a in (A1, A2):
        H.run_nbgrader(course, "autograde", a, "--force")
    return course


def test_autograde_source_full_marks_stub_zero(autograded: Path) -> None:
    scores = _scores(autograded)
    for a in (A1, A2):
        assert scores[(a, "sol")] == (45.0, False)
    assert scores[(A2, "stub")] == (0.0, False)
    # a1's stub: what the course's grader gives it (its popf checks include cases whose guest
    # never calls the stub); tests/course/test_nbgrader_path.py compares with `grade`
    assert scores[(A1, "stub")][0] <= 2.0 and not scores[(A1, "stub")][1]


def test_deleted_test_cells_are_put_back(autograded: Path) -> None:
    # c.OverwriteCells.add_missing_cells: not "needs manual grading", full marks
    assert _scores(autograded)[(A1, "deleted")] == (45.0, False)


def test_hidden_tests_catch_hard_coded_answers(autograded: Path) -> None:
    score, manual = _scores(autograded)[(A2, "hardcoder")]
    assert 35.0 <= score < 45.0  # only the caps part loses points, on its hidden checks
    assert not manual


def test_generated_feedback_shows_no_hidden_test(autograded: Path) -> None:
    course = autograded
    H.run_nbgrader(course, "generate_feedback", A2, "--force")
    page = _text((course / "feedback" / "hardcoder" / A2 / "credit_scheduler.html").read_text())
    hidden = _hidden_lines(course / "source" / A2 / NOTEBOOK[A2])
    assert hidden
    leaked = [ln for ln in hidden if ln in page]
    assert not leaked, f"hidden test code in nbgrader's feedback: {leaked[:3]}"
    assert "[FAIL] caps_hidden (hidden)" in page  # the failing check's line is kept
    hidden_lines = [ln for ln in page.splitlines() if "(hidden)" in ln]
    assert hidden_lines
    assert not any(re.search(r"seeds?\s*[=:]\s*\(?\d", ln) for ln in hidden_lines)
    assert "BEGIN HIDDEN" not in page
    assert "Traceback (most recent call last)" not in page
    assert "Cell In[" not in page
    # without our preprocessors nbgrader would have shown them: the fix is needed
    H.run_nbgrader(course, "generate_feedback", A2, "--force",
                   "--GenerateFeedback.preprocessors=nbgrader.preprocessors.GetGrades",
                   "--GenerateFeedback.preprocessors="
                   "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor")
    raw = _text((course / "feedback" / "hardcoder" / A2 / "credit_scheduler.html").read_text())
    assert any(ln in raw for ln in hidden), "the control run should show nbgrader's leak"

"""nbgrader's own ``autograde`` and formgrader's Autograde button go through the safe grader.

A real ``nbgrader autograde`` (the course's CLI environment) on assignments 1, 2 and 3, for
the source notebook (full marks), the released stub (0) and a hostile notebook: the stub plus
code that writes the gradebook and source/, edited test cells claiming 4000 points and
printing it, an extra "grade" cell worth 4000, a plain code cell that would leave a file if
any kernel ran it, and ``<script>`` in markdown and in an output.  The hostile notebook
scores no more than the stub, source/ and nbgrader_config.py stay byte-identical, the other
students' grades are untouched, nothing ran in a kernel, and the ``autograded/`` copy
formgrader renders holds no script.  formgrader's button is ``NbGraderAPI.autograde`` with
the server's configuration (this course's ``nbgrader_config.py``): called in-process here,
it grades through the same preprocessors.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import nbformat
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
NB = {"a1_trap_and_emulate": "trap_and_emulate.ipynb",
      "a2_credit_scheduler": "credit_scheduler.ipynb",
      "a3_userspace_vmm": "userspace_vmm.ipynb"}
ROOT = os.geteuid() == 0
#: An answer cell that is close but wrong: `cli` does not step over the instruction.
LAZY_CLI = '''
def handle_cli(vcpu, insn):
    vcpu.interrupts_enabled = False
    return Action.CONTINUE


def handle_sti(vcpu, insn):
    vcpu.interrupts_enabled = True
    vcpu.pc += 4
    return Action.CONTINUE


def handle_hlt(vcpu, insn):
    vcpu.pc += 4
    return Action.HALT
'''


def _attack(course: Path, marker: Path) -> str:
    return f'''
import glob as _g, os as _o, sqlite3 as _s
_c = {str(course)!r}
try:
    _db = _s.connect(_o.path.join(_c, "gradebook.db"))
    _db.execute("UPDATE grade SET auto_score = 4000, manual_score = 4000")
    _db.commit()
except Exception:
    pass
for _p in _g.glob(_o.path.join(_c, "source", "*", "*.ipynb")):
    try:
        open(_p, "a").write(" ")
    except Exception:
        pass
try:
    open(_o.path.join(_c, "source", "PWNED.txt"), "w").write("x")
    open({str(marker)!r}, "w").write("solution cell ran with write access")
except Exception:
    pass
'''


def hostile(release: Path, course: Path, marker: Path, bonus_cell: bool = True) -> Any:
    """The released stub turned against the grader (see the module docstring)."""
    nb = H.read_nb(release)
    first = True
    for cell in nb.cells:
        meta = H.nbg(cell)
        if meta.get("solution") and first:
            cell.source = _attack(course, marker) + "\n" + cell.source
            first = False
        elif meta.get("grade") and not meta.get("solution"):
            cell.source = "print(4000)\n4000"
            cell.metadata["nbgrader"]["points"] = 4000
    extra = nbformat.v4.new_code_cell("4000")
    extra.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                  "points": 4000, "grade_id": "test_bonus",
                                  "schema_version": 3}
    kernel = nbformat.v4.new_code_cell(f"open({str(marker) + '.kernel'!r}, 'w').write('ran')")
    md = nbformat.v4.new_markdown_cell("Nice work <script>alert('xss-md')</script>")
    out = nbformat.v4.new_code_cell("1")
    out.outputs = [nbformat.v4.new_output(
        "display_data", data={"text/html": "<script>alert('xss-out')</script>",
                              "text/plain": "1"})]
    nb.cells[1:1] = [md, extra, kernel, out] if bonus_cell else [md, kernel, out]
    return nb


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _grades(course: Path) -> dict[tuple[str, str, str], tuple[Any, Any]]:
    con = sqlite3.connect(course / "gradebook.db")
    try:
        rows = con.execute("""
            SELECT assignment.name, submitted_assignment.student_id, base_cell.name,
                   grade.auto_score, grade.manual_score
            FROM grade
            JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
            JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
            JOIN assignment ON submitted_assignment.assignment_id = assignment.id
            JOIN base_cell ON grade.cell_id = base_cell.id""").fetchall()
    finally:
        con.close()
    return {(a, s, c): (v, m) for a, s, c, v, m in rows}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("nbgrader-path")
    course = H.copy_course(tmp / "course")
    marker = tmp / "attack-ran"
    logs: dict[str, str] = {}
    for a in NB:
        H.run_nbgrader(course, "generate_assignment", a, "--force")
        src, rel = course / "source" / a / NB[a], course / "release" / a / NB[a]
        H.write_nb(H.read_nb(src), course / "submitted" / "sol" / a / NB[a])
        H.write_nb(H.read_nb(rel), course / "submitted" / "blank" / a / NB[a])
        H.write_nb(hostile(rel, course, marker), course / "submitted" / "hostile" / a / NB[a])
    before = {"source": _tree_hash(course / "source"),
              "config": (course / "nbgrader_config.py").read_bytes()}
    a1 = "a1_trap_and_emulate"
    H.write_nb(H.solved(course / "release" / a1 / NB[a1], course / "source" / a1 / NB[a1],
                        handlers_interrupt_flag=LAZY_CLI),
               course / "submitted" / "lazy" / a1 / NB[a1])
    # one run per assignment, in nbgrader's order (blank, hostile, lazy, sol): the hostile
    # notebook is graded before the others, so a write to the gradebook would show
    for a in NB:
        proc = H.run_nbgrader(course, "autograde", a, "--force", ok=False)
        logs[a] = proc.stdout + proc.stderr
    nbgrader_grades = _grades(course)
    # the course's own command on the same files (not the solutions: their full marks are
    # checked above, and they are the slowest to grade), for the comparison
    logs["grade a1"] = H.run_cli(course, "grade", a1, "--student", "lazy", "--student", "blank",
                                 "--student", "hostile").stdout
    return {"course": course, "marker": marker, "before": before, "logs": logs,
            "nbgrader_grades": nbgrader_grades}


def test_solution_full_marks_blank_nothing(run: dict[str, Any]) -> None:
    from autograder.assignments import get

    grades = run["nbgrader_grades"]
    for a in NB:
        spec = get(a)
        blank = 0.0
        for part in spec.parts:
            cell = f"test_{part.grade_id}"
            assert grades[(a, "sol", cell)] == (part.points, None), (a, cell)
            blank += grades[(a, "blank", cell)][0]
        assert "graded by virtcore's grader: sol" in run["logs"][a]
        # the released stub: 0 (a1's popf checks have cases whose guest never calls the
        # stub — a grader question, asked; the comparison with `grade` is below)
        assert blank <= (2.0 if a == "a1_trap_and_emulate" else 0.0), (a, blank)


def test_same_scores_as_autograder_grade(run: dict[str, Any]) -> None:
    a = "a1_trap_and_emulate"
    for student in ("lazy", "blank", "hostile"):
        res = H.result_json(run["course"], student, a)["result"]
        ours = {f"test_{p['grade_id']}": p["score"] for p in res["parts"]}
        theirs = {c: v for (aa, s, c), (v, _) in run["nbgrader_grades"].items()
                  if aa == a and s == student}
        assert theirs == ours, student
    lazy = H.result_json(run["course"], "lazy", a)["result"]
    assert 0 < lazy["score"] < 45  # a partly wrong notebook: the parts differ


def test_hostile_notebook_scores_no_more_than_blank(run: dict[str, Any]) -> None:
    grades = run["nbgrader_grades"]
    for a in NB:
        mine = {c: v for (aa, s, c), v in grades.items() if aa == a and s == "hostile"}
        assert mine, run["logs"][a][-2000:]
        assert "test_bonus" not in mine
        for cell, (auto, manual) in mine.items():
            assert manual is None
            assert auto <= grades[(a, "blank", cell)][0], (a, cell, auto)


def test_hostile_notebook_changes_nothing_of_the_instructors(run: dict[str, Any]) -> None:
    course = run["course"]
    assert _tree_hash(course / "source") == run["before"]["source"]
    assert not (course / "source" / "PWNED.txt").exists()
    assert (course / "nbgrader_config.py").read_bytes() == run["before"]["config"]
    grades = _grades(course)
    assert {s for _, s, _ in grades} >= {"sol", "blank", "hostile"}
    assert all(manual is None for _, manual in grades.values())
    assert max(v for v, _ in grades.values()) <= 20  # no cell is worth more than 20


def test_nothing_ran_in_a_kernel(run: dict[str, Any]) -> None:
    marker = run["marker"]
    assert not Path(str(marker) + ".kernel").exists()  # nbgrader's Execute would have run it
    if ROOT:  # the sandbox's worker ran the attack as nobody: it could write nothing
        assert not marker.exists()


def test_autograded_copies_hold_no_script(run: dict[str, Any]) -> None:
    from autograder.sanitize import is_active

    for a in NB:
        path = run["course"] / "autograded" / "hostile" / a / NB[a]
        text = path.read_text()
        assert "<script" not in text
        assert "xss-md" in text  # the text is kept, as text
        assert is_active(json.loads(text)) == []


# nbgrader's in-process API trips SQLAlchemy's and its own warnings (errors under our pytest
# config); the CLI runs above print them on stderr instead.
@pytest.mark.filterwarnings("ignore::Warning")
def test_formgrader_button_goes_through_the_same_grader(run: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """formgrader's POST /formgrader/api/submission/<a>/<s>/autograde handler returns
    ``NbGraderAPI.autograde(a, s)``; the API is built with the server's config."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    course = run["course"]
    monkeypatch.setenv("PATH", f"{H.BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.chdir(course)
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    app = Autograde(coursedir=api.coursedir, parent=api)
    assert not any("Execute" in str(p) for p in app.autograde_preprocessors)
    assert any("SafeGrade" in str(p) for p in app.autograde_preprocessors)
    a = "a1_trap_and_emulate"
    sub = course / "submitted" / "button" / a
    sub.mkdir(parents=True)
    (sub / NB[a]).write_bytes((course / "submitted" / "hostile" / a / NB[a]).read_bytes())
    res = api.autograde(a, "button")
    assert res["success"], res.get("error")
    assert "graded by virtcore's grader: button" in res["log"]
    grades = _grades(course)
    button = {c: v for (aa, s, c), v in grades.items() if aa == a and s == "button"}
    cli = {c: v for (aa, s, c), v in run["nbgrader_grades"].items()
           if aa == a and s == "hostile"}
    assert button == cli  # the same notebook, the same path, the same scores
    assert _tree_hash(course / "source") == run["before"]["source"]


def test_partial_credit_reaches_the_gradebook_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """SafeGrade's test-cell outputs give nbgrader's determine_grade the grader's exact
    score (a repr'd float), clamped to the cell's points; a missing part scores 0."""
    from nbgrader.utils import determine_grade

    from autograder import nbgrader_bridge
    from autograder.assignments import get
    from autograder.grade import CheckResult, NotebookResult, PartResult

    a = "a1_trap_and_emulate"
    spec = get(a)
    scores = {p.grade_id: p.points / 3 for p in spec.parts}
    scores[spec.parts[-1].grade_id] = 0.0
    parts = [PartResult(gid, s, p.points, "ok",
                        [CheckResult("c", s, p.points, False, "1/3 cases passed", True, 9)], "")
             for p, (gid, s) in zip(spec.parts, scores.items(), strict=True)][:-1]
    result = NotebookResult("zoe", a, sum(scores.values()), 45.0, "ok", parts, "", 0.1)
    monkeypatch.setattr(nbgrader_bridge, "grade_for_nbgrader", lambda *args: result)
    nb = H.read_nb(H.COURSE / "source" / a / NB[a])
    pre = nbgrader_bridge.SafeGrade(course_dir=str(H.COURSE))
    out, res = pre.preprocess(copy.deepcopy(nb), {"nbgrader": {"student": "zoe",
                                                               "assignment": a}})
    got = {}
    for cell in out.cells:
        gid = H.nbg(cell).get("grade_id", "")
        if cell.cell_type == "code" and not gid.startswith("test_"):
            assert cell.outputs == []
        elif gid.startswith("test_"):
            got[gid[5:]] = determine_grade(cell)[0]
    assert got == scores
    assert res["virtcore_result"] is result

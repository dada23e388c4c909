"""Assignments 3 and 4 through the instructor's workflow, for real, in a temporary course:
``init``, ``release <a> --validate`` (nbgrader generates the student version and validates the
source — every test cell passes — and the release — none does), ``import`` a folder of
submissions, ``grade``: the source notebook and a solved release score full marks, the released
stub 0 with every part "not implemented", and the gradebook holds those scores.

(a1 and a2 go through the same workflow, with more students, in ``test_pipeline.py``.)"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Assignment:
    """One assignment's name, notebook, parts (grade_id -> points) and a line of its solution."""

    name: str
    notebook: str
    parts: dict[str, int]
    solution_line: str  # appears in the source's answers, never in the release


ASSIGNMENTS = [
    Assignment("a3_userspace_vmm", "userspace_vmm.ipynb",
               {"vmm_setup": 15, "vmm_run_loop": 20, "vmm_errors": 10}, "run.set_io_data"),
    Assignment("a4_virtual_mmu", "virtual_mmu.ipynb",
               {"mmu_translate": 20, "mmu_validate": 25},
               "get_page_type(mfn, PGT_writable_page)"),
]


@pytest.fixture(scope="module", params=ASSIGNMENTS, ids=[a.name for a in ASSIGNMENTS])
def graded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A course after init, release --validate, import (a folder) and grade of one assignment."""
    a: Assignment = request.param
    name, notebook = a.name, a.notebook
    tmp = tmp_path_factory.mktemp(f"{a.name}-pipeline")
    course = H.copy_course(tmp / "course")
    roster = tmp / "students.csv"
    roster.write_text("id,first_name,last_name,email\n" + "".join(
        f"{s},{s.title()},Student,{s}@example.edu\n" for s in ("source", "alice", "stub")))
    logs = {"init": H.run_cli(course, "init", "--students", str(roster)).stdout,
            "release": H.run_cli(course, "release", name, "--validate").stdout}
    src, rel = course / "source" / name / notebook, course / "release" / name / notebook
    folder = tmp / "downloads"
    H.write_nb(H.read_nb(src), folder / "source" / notebook)
    H.write_nb(H.solved(rel, src), folder / "alice" / notebook)
    H.write_nb(H.read_nb(rel), folder / "stub" / notebook)
    logs["import"] = H.run_cli(course, "import", name, str(folder)).stdout
    logs["grade"] = H.run_cli(course, "grade", name, "--jobs", "3").stdout
    return {"course": course, "logs": logs, "assignment": a}


def test_release_hides_solutions_and_validates(graded: dict[str, Any]) -> None:
    course, logs, a = graded["course"], graded["logs"], graded["assignment"]
    name, notebook, parts = a.name, a.notebook, a.parts
    assert "validate: the source passes every test cell, the release none" in logs["release"]
    assert f"{len(parts)} graded parts, 45 points" in logs["release"]
    text = (course / "release" / name / notebook).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    assert H.SECRET not in text
    nb = H.read_nb(course / "release" / name / notebook)
    answers = {H.nbg(c)["grade_id"]: c.source for c in nb.cells if H.nbg(c).get("solution")}
    assert set(answers) == set(parts)
    assert all("raise NotImplementedError()" in s for s in answers.values())
    assert a.solution_line in (course / "source" / name / notebook).read_text()
    assert a.solution_line not in "".join(answers.values())
    assert "Grading happens **outside** your notebook" in nb.cells[0].source  # the header


def test_source_and_solved_release_score_full_marks_stub_zero(graded: dict[str, Any]) -> None:
    course, a = graded["course"], graded["assignment"]
    name, parts = a.name, a.parts
    for student in ("source", "alice"):
        res = H.result_json(course, student, name)["result"]
        assert res["status"] == "ok" and res["score"] == res["max_score"] == 45, res["reason"]
        assert {p["grade_id"]: (p["score"], p["status"]) for p in res["parts"]} == {
            gid: (pts, "ok") for gid, pts in parts.items()}
        assert all(c["passed"] for p in res["parts"] for c in p["checks"])
    stub = H.result_json(course, "stub", name)["result"]
    assert stub["score"] == 0
    for p in stub["parts"]:
        assert p["status"] == "not implemented", (p["grade_id"], p["reason"])
        assert all("NotImplementedError" in c["message"] for c in p["checks"])
    lines = {ln.split()[0]: ln for ln in graded["logs"]["grade"].splitlines()
             if ln.startswith("  ")}
    assert "45 / 45" in lines["source"] and "45 / 45" in lines["alice"]


def test_gradebook_holds_the_part_scores(graded: dict[str, Any]) -> None:
    name, parts = graded["assignment"].name, graded["assignment"].parts
    con = sqlite3.connect(graded["course"] / "gradebook.db")
    try:
        rows = con.execute("""
            SELECT submitted_assignment.student_id, base_cell.name, grade.auto_score
            FROM grade
            JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
            JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
            JOIN assignment ON submitted_assignment.assignment_id = assignment.id
            JOIN base_cell ON grade.cell_id = base_cell.id
            WHERE assignment.name = ?""", (name,)).fetchall()
    finally:
        con.close()
    got = {(s, c): v for s, c, v in rows}
    for gid, pts in parts.items():
        assert got[("source", f"test_{gid}")] == pts
        assert got[("alice", f"test_{gid}")] == pts
        assert got[("stub", f"test_{gid}")] == 0

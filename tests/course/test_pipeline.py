"""The instructor's workflow, for real, in a temporary course: release → import → grade → export.

One module-scoped run (:func:`graded`) does what an instructor does on a fresh course —
``init`` with a roster, ``release`` both assignments, ``import`` submissions from a folder
and from a zip of LMS downloads, ``grade`` both assignments — with a class whose students
cover the catalogue of submissions that must reach the CLI intact: correct, the source
notebook itself, the released stub, close-but-wrong, hard-coded visible answers, deleted and
edited test cells, a corrupt notebook, a missing one, and submissions that try to write the
gradebook (openly, and disguised from the static scan).  The tests then check the scores,
the gradebook, the re-grade, the export, the feedback and the report.  (How each kind of
bad submission is *graded* is tested at the function level in tests/autograder.)
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import os
import re
import sqlite3
import struct
import sys
import zipfile
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
ROOT = os.geteuid() == 0

LAZY_CLI = '''
def handle_cli(vcpu, insn):
    """cli: forgets to step over the instruction."""
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

NO_CAPS_ENFORCED = '''
def cap_peak(cap):
    return -(-cap * CREDITS_PER_TSLICE // 100)


def enforce_cap(sched, unit, unit_cap):
    """Close but wrong: never parks anybody, so a capped domain runs on."""
'''

def _io_cell(good: str, attack: str) -> str:
    return good + "\n\n" + attack


def _open_attack(course: Path) -> str:
    """Writes the gradebook in plain sight: the static scan refuses to run the cell."""
    return f'''
import sqlite3

try:
    con = sqlite3.connect("{course}/gradebook.db")
    con.execute("UPDATE grade SET auto_score = 1000")
    con.commit()
except Exception:
    pass
'''


def _sneaky_attack(course: Path) -> str:
    """The same, disguised from the scan and without imports: the sandbox must stop it.

    (Importing a module the worker did not load before dropping to uid nobody fails by
    itself, so this attack writes the SQLite file with plain ``open``.)
    """
    return f'''
_base = "{course}" + "/"
try:
    with open(_base + "grade" + "book.db", "r+b") as _fh:
        _fh.seek(100)
        _fh.write(b"all my grades are 1000" * 64)
except Exception:
    pass
try:
    with open(_base + "pwned.txt", "w") as _fh:
        _fh.write("the course directory is writable")
except Exception:
    pass
try:
    STOLEN = open(_base + ".course" + "_secret").read()
except Exception:
    STOLEN = None
'''


#: Expected outcome per (assignment, student): total score, notebook status.
EXPECTED: dict[tuple[str, str], tuple[float | None, str]] = {
    (A1, "source"): (45, "ok"),
    (A1, "alice"): (45, "ok"),
    (A1, "stub"): (0, "ok"),
    (A1, "lazy"): (None, "ok"),  # loses part of handlers_interrupt_flag only
    (A1, "deleted"): (45, "ok"),
    (A1, "edited"): (45, "ok"),
    (A1, "corrupt"): (0, "corrupt"),
    (A1, "missing"): (0, "missing"),
    (A1, "gbwrite"): (35, "ok"),  # handlers_io: integrity
    (A2, "source"): (45, "ok"),
    (A2, "alice"): (45, "ok"),
    (A2, "stub"): (0, "ok"),
    (A2, "nocaps"): (None, "ok"),  # loses part of credit_caps only
    (A2, "hardcoder"): (None, "ok"),  # keeps the visible caps checks, loses hidden ones
}
if ROOT:
    EXPECTED[(A1, "gbsneak")] = (45, "ok")


def _lms_name(student: str, stamp: str) -> str:
    return f"{A1}_{student}_attempt_{stamp}_{NOTEBOOK[A1]}"


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A course after init, release, import (folder + zip) and grade of both assignments."""
    tmp = tmp_path_factory.mktemp("pipeline")
    course = H.copy_course(tmp / "course")
    roster = tmp / "students.csv"
    students = sorted({s for _, s in EXPECTED} | {"nosub"})
    roster.write_text("id,first_name,last_name,email\n" + "".join(
        f"{s},{s.title()},Student,{s}@example.edu\n" for s in students))
    out: dict[str, Any] = {"course": course, "logs": {}}
    out["logs"]["init"] = H.run_cli(course, "init", "--students", str(roster)).stdout
    for a in (A1, A2):
        out["logs"][f"release {a}"] = H.run_cli(course, "release", a).stdout

    def paths(a: str) -> tuple[Path, Path]:
        return course / "source" / a / NOTEBOOK[a], course / "release" / a / NOTEBOOK[a]

    # -- assignment 1: a folder of per-student folders, and a zip of LMS downloads
    src1, rel1 = paths(A1)
    good = H.solved(rel1, src1)
    io_good = next(c.source for c in good.cells if H.nbg(c).get("grade_id") == "handlers_io")
    folder = tmp / "downloads-a1"
    H.write_nb(H.read_nb(src1), folder / "source" / NOTEBOOK[A1])
    H.write_nb(good, folder / "alice" / NOTEBOOK[A1])
    H.write_nb(H.read_nb(rel1), folder / "stub" / A1 / NOTEBOOK[A1])  # nbgrader-style nesting
    H.write_nb(H.solved(rel1, src1, handlers_interrupt_flag=LAZY_CLI),
               folder / "lazy" / "my work (1).ipynb")  # renamed by the browser
    H.write_nb(H.without_test_cells(good), folder / "deleted" / NOTEBOOK[A1])
    H.write_nb(H.with_edited_test_cells(good), folder / "edited" / NOTEBOOK[A1])
    (folder / "missing").mkdir(parents=True)
    (folder / "missing" / "notes.txt").write_text("I forgot the notebook")
    archive = tmp / "lms-a1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        text = json.dumps(H.read_nb(src1))
        zf.writestr(_lms_name("corrupt", "2024-03-01-10-00-00"), text[: len(text) // 2])
        zf.writestr(_lms_name("gbwrite", "2024-03-01-09-00-00"), rel1.read_text())  # older
        attack = H.solved(rel1, src1, handlers_io=_io_cell(io_good, _open_attack(course)))
        zf.writestr(_lms_name("gbwrite", "2024-03-01-11-00-00"), json.dumps(attack))
        if ROOT:
            sneak = H.solved(rel1, src1, handlers_io=_io_cell(io_good, _sneaky_attack(course)))
            zf.writestr(_lms_name("gbsneak", "2024-03-01-12-00-00"), json.dumps(sneak))
    out["logs"]["import folder"] = H.run_cli(course, "import", A1, str(folder)).stdout
    out["logs"]["import zip"] = H.run_cli(course, "import", A1, str(archive)).stdout

    # -- assignment 2: a folder
    src2, rel2 = paths(A2)
    folder2 = tmp / "downloads-a2"
    H.write_nb(H.read_nb(src2), folder2 / "source" / NOTEBOOK[A2])
    H.write_nb(H.solved(rel2, src2), folder2 / "alice" / NOTEBOOK[A2])
    H.write_nb(H.read_nb(rel2), folder2 / "stub" / NOTEBOOK[A2])
    H.write_nb(H.solved(rel2, src2, credit_caps=NO_CAPS_ENFORCED),
               folder2 / "nocaps" / NOTEBOOK[A2])
    from autograder.assignments import a2_credit_scheduler as a2mod

    visible = {d["cap"] for s in a2mod.PUBLIC_SEEDS["caps_public"]
               for d in a2mod.generated_case("caps", s)["domains"]}
    doms = [[{k: d[k] for k in ("name", "weight", "cap")}
             for d in a2mod.generated_case("caps", s)["domains"]]
            for s in a2mod.PUBLIC_SEEDS["caps_public"]]
    H.write_nb(H.solved(rel2, src2, credit_caps=H.hardcoded_caps(visible, doms)),
               folder2 / "hardcoder" / NOTEBOOK[A2])
    out["logs"]["import a2"] = H.run_cli(course, "import", A2, str(folder2)).stdout

    # -- grade: the gradebook after nbgrader's release, before grading, as a baseline
    for a in (A1, A2):
        proc = H.run_cli(course, "grade", a, "--jobs", "2")
        out["logs"][f"grade {a}"] = proc.stdout
        out["logs"][f"grade {a} stderr"] = proc.stderr
    return out


def _db_scores(course: Path) -> dict[tuple[str, str, str], float]:
    """(assignment, student, grade cell) → auto_score, read with plain sqlite3."""
    con = sqlite3.connect(course / "gradebook.db")
    try:
        rows = con.execute("""
            SELECT assignment.name, submitted_assignment.student_id, base_cell.name,
                   grade.auto_score
            FROM grade
            JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
            JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
            JOIN assignment ON submitted_assignment.assignment_id = assignment.id
            JOIN base_cell ON grade.cell_id = base_cell.id""").fetchall()
    finally:
        con.close()
    return {(a, s, c): v for a, s, c, v in rows}


def _part(result: dict[str, Any], gid: str) -> dict[str, Any]:
    return next(p for p in result["result"]["parts"] if p["grade_id"] == gid)


# -- release ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment", [A1, A2])
def test_release_has_no_solutions_hidden_tests_or_secret(graded: dict[str, Any],
                                                         assignment: str) -> None:
    course = graded["course"]
    rel = course / "release" / assignment / NOTEBOOK[assignment]
    text = rel.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    assert H.SECRET not in text
    nb = H.read_nb(rel)
    answers = [c for c in nb.cells if H.nbg(c).get("solution")]
    from autograder.assignments import REGISTRY

    parts = {p.grade_id for p in REGISTRY[assignment].parts}
    assert {H.nbg(c)["grade_id"] for c in answers} == parts  # a1's design cell is a part too
    assert len(answers) == len(parts)
    assert all("raise NotImplementedError()" in c.source for c in answers)
    src = H.read_nb(course / "source" / assignment / NOTEBOOK[assignment])
    solution_lines = {ln.strip() for c in src.cells if H.nbg(c).get("solution")
                      for ln in H.strip_markers(c.source).splitlines() if len(ln.strip()) > 25}
    leaked = [ln for ln in solution_lines if ln in text and not ln.startswith(("def ", '"""'))]
    assert not leaked, f"solution code in the release: {leaked[:3]}"
    assert "Grading happens **outside** your notebook" in nb.cells[0].source  # the header
    assert "released" in graded["logs"][f"release {assignment}"]


def test_nbgrader_validate_source_passes_release_fails(graded: dict[str, Any]) -> None:
    course = graded["course"]
    ok = H.run_nbgrader(course, "validate", *(f"source/{a}/{NOTEBOOK[a]}" for a in (A1, A2)))
    assert ok.stdout.count("Success! Your notebook passes all the tests.") == 2, ok.stdout
    inv = H.run_nbgrader(course, "validate", "--invert",
                         *(f"release/{a}/{NOTEBOOK[a]}" for a in (A1, A2)))
    assert inv.stdout.count("Success! The notebook does not pass any tests.") == 2, inv.stdout


# -- import ----------------------------------------------------------------------------------------


def test_import_collects_folder_and_zip(graded: dict[str, Any]) -> None:
    course = graded["course"]
    logs = graded["logs"]
    assert "renamed my work (1).ipynb" in logs["import folder"]
    assert "no notebook" in logs["import folder"]
    sub = course / "submitted"
    for student in ("source", "alice", "stub", "lazy", "deleted", "edited", "corrupt",
                    "gbwrite"):
        assert (sub / student / A1 / NOTEBOOK[A1]).is_file(), student
    assert not (sub / "missing" / A1 / NOTEBOOK[A1]).exists()
    assert (sub / "missing" / A1).is_dir()
    # the zip had two attempts by gbwrite: the later one (the attack) wins
    assert "sqlite3" in (sub / "gbwrite" / A1 / NOTEBOOK[A1]).read_text()
    assert (sub / "gbwrite" / A1 / "timestamp.txt").read_text().strip() == "2024-03-01 11:00:00"


# -- grade -----------------------------------------------------------------------------------------


def test_catalogue_scores_through_the_cli(graded: dict[str, Any]) -> None:
    course = graded["course"]
    for (assignment, student), (score, status) in EXPECTED.items():
        r = H.result_json(course, student, assignment)
        res = r["result"]
        assert res["status"] == status, (student, res["status"], res["reason"])
        if score is not None:
            assert res["score"] == score, (assignment, student, res["score"],
                                           [(p["grade_id"], p["score"], p["status"], p["reason"])
                                            for p in res["parts"]])
        assert res["max_score"] == 45


def test_solutions_score_full_marks_stubs_fail_only_as_not_implemented(
        graded: dict[str, Any]) -> None:
    course = graded["course"]
    for assignment in (A1, A2):
        for student in ("source", "alice"):
            res = H.result_json(course, student, assignment)["result"]
            assert res["score"] == 45
            assert all(c["passed"] for p in res["parts"] for c in p["checks"])
        stub = H.result_json(course, "stub", assignment)["result"]
        assert stub["score"] == 0
        for p in stub["parts"]:
            assert p["status"] == "not implemented", (p["grade_id"], p["status"], p["reason"])
            for c in p["checks"]:
                assert not c["passed"]
                assert "NotImplementedError" in c["message"], c["message"]


def test_close_but_wrong_and_hardcoded_lose_only_their_part(graded: dict[str, Any]) -> None:
    course = graded["course"]
    lazy = H.result_json(course, "lazy", A1)
    flag = _part(lazy, "handlers_interrupt_flag")
    assert flag["score"] < 5
    assert any("did not advance pc" in c["message"] for c in flag["checks"])
    assert lazy["result"]["score"] == 40 + flag["score"]
    nocaps = H.result_json(course, "nocaps", A2)
    caps = _part(nocaps, "credit_caps")
    assert caps["score"] < 10
    assert any("more than its cap" in c["message"] or "cap allows" in c["message"]
               for c in caps["checks"])
    assert nocaps["result"]["score"] == 35 + caps["score"]
    hard = H.result_json(course, "hardcoder", A2)
    caps = {c["name"]: c for c in _part(hard, "credit_caps")["checks"]}
    assert caps["caps_public"]["passed"]
    assert not caps["caps_hidden"]["passed"]
    assert caps["caps_hidden"]["points"] < caps["caps_hidden"]["max_points"]


def test_faults_are_reported_per_student(graded: dict[str, Any]) -> None:
    log = graded["logs"][f"grade {A1}"]
    lines = {ln.split()[0]: ln for ln in log.splitlines() if ln.startswith("  ")}
    assert "corrupt" in lines["corrupt"]
    assert "notebook missing" in lines["missing"]
    assert "handlers_io: integrity" in lines["gbwrite"]
    assert "no submission" in lines["nosub"]
    assert "45 / 45" in lines["alice"]
    assert "grade a1_trap_and_emulate [" in graded["logs"][f"grade {A1} stderr"]  # progress bar


def test_gradebook_holds_the_external_scores_and_nothing_else(graded: dict[str, Any]) -> None:
    course = graded["course"]
    scores = _db_scores(course)
    for (assignment, student), _ in EXPECTED.items():
        if student == "missing":
            continue
        res = H.result_json(course, student, assignment)["result"]
        for part in res["parts"]:
            assert scores[(assignment, student, f"test_{part['grade_id']}")] == part["score"]
    assert max(scores.values()) <= 15, "a submission wrote a score into the gradebook"
    gbwrite = H.result_json(course, "gbwrite", A1)
    io = _part(gbwrite, "handlers_io")
    assert io["status"] == "integrity"
    assert io["score"] == 0
    assert not (course / "pwned.txt").exists()


@pytest.mark.skipif(not ROOT, reason="the worker drops to uid nobody only when run as root")
def test_disguised_gradebook_write_is_stopped_by_the_sandbox(graded: dict[str, Any]) -> None:
    course = graded["course"]
    res = H.result_json(course, "gbsneak", A1)["result"]
    assert res["score"] == 45
    assert all(p["status"] == "ok" for p in res["parts"])
    assert not (course / "pwned.txt").exists()
    assert max(_db_scores(course).values()) <= 15


def test_per_student_hidden_cases_differ(graded: dict[str, Any]) -> None:
    course = graded["course"]
    # every hidden check of the correct students passes: no failing seed is kept, so compare
    # the seeds a failing hidden check reports — the two stubs fail on their own cases
    seeds = {}
    for student in ("stub", "nocaps"):
        res = H.result_json(course, student, A2)["result"]
        caps = {c["name"]: c for c in next(p for p in res["parts"]
                                           if p["grade_id"] == "credit_caps")["checks"]}
        hidden = caps["caps_hidden"]
        # the student's message names no seed; the instructor's field does
        assert hidden["seed"] is None and "seed=" not in hidden["message"]
        seeds[student] = hidden["instructor"].split("seed=")[1].split(")")[0]
    assert None not in seeds.values()
    assert seeds["stub"] != seeds["nocaps"]


def test_regrade_is_resumable_deterministic_and_forced(graded: dict[str, Any]) -> None:
    course = graded["course"]
    before = {s: H.result_json(course, s, A1) for s in ("alice", "lazy", "corrupt")}
    again = H.run_cli(course, "grade", A1)
    assert "already graded" in again.stderr
    assert "grade a1_trap_and_emulate [" not in again.stderr  # nothing left to grade
    for s, r in before.items():
        assert H.result_json(course, s, A1) == r  # untouched cache
    forced = H.run_cli(course, "grade", A1, "--force", "--student", "alice", "--student", "lazy")
    assert "2 graded" in forced.stdout
    for s in ("alice", "lazy"):
        now = H.result_json(course, s, A1)
        assert now["graded_at"] != before[s]["graded_at"]  # really graded again
        # same cases, same messages, same scores
        assert now["result"]["parts"] == before[s]["result"]["parts"]
        assert now["result"]["score"] == before[s]["result"]["score"]
    # a new submission is graded without --force, and only it
    late = course / "submitted" / "latecomer" / A1
    late.mkdir(parents=True)
    (late / NOTEBOOK[A1]).write_text((course / "submitted" / "alice" / A1 / NOTEBOOK[A1])
                                     .read_text())
    third = H.run_cli(course, "grade", A1)
    assert "1/1" in third.stderr
    assert H.result_json(course, "latecomer", A1)["result"]["score"] == 45


def test_export_csv_from_the_gradebook(graded: dict[str, Any], tmp_path: Path) -> None:
    course = graded["course"]
    dest = tmp_path / "grades.csv"
    H.run_cli(course, "export", "--to", str(dest))
    with dest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by = {(r["assignment"], r["student_id"]): r for r in rows}
    assert {a for a, _ in by} == {A1, A2}
    for (assignment, student), _ in EXPECTED.items():
        res = H.result_json(course, student, assignment)["result"]
        row = by[(assignment, student)]
        assert float(row["score"]) == res["score"]
        assert float(row["max_score"]) == 45
        assert row["first_name"] == student.title()
    assert float(by[(A1, "nosub")]["score"]) == 0
    assert float(by[(A1, "gbwrite")]["part:test_handlers_io"]) == 0
    assert float(by[(A1, "gbwrite")]["part:test_handlers_control"]) == 15


def test_feedback_has_every_check_and_no_hidden_test_code(graded: dict[str, Any]) -> None:
    course = graded["course"]
    for assignment in (A1, A2):
        H.run_cli(course, "feedback", assignment)
        src = H.read_nb(course / "source" / assignment / NOTEBOOK[assignment])
        hidden, visible = set(), set()
        for c in src.cells:
            inside = False
            for ln in c.source.splitlines():
                if "BEGIN HIDDEN TESTS" in ln:
                    inside = True
                elif "END HIDDEN TESTS" in ln:
                    inside = False
                elif ln.strip():
                    (hidden if inside else visible).add(ln.strip())
        hidden -= visible
        assert hidden
        for student in ("alice", "stub"):
            raw = (course / "feedback" / student / assignment / "feedback.html").read_text()
            page = html.unescape(re.sub(r"<[^>]+>", "", raw))
            res = H.result_json(course, student, assignment)["result"]
            for p in res["parts"]:
                for c in p["checks"]:
                    assert c["name"] in page
            for ln in hidden:
                assert ln not in page, f"hidden test line in feedback: {ln!r}"
            assert H.SECRET not in page
            assert "BEGIN HIDDEN" not in page


def test_report_writes_png_plots(graded: dict[str, Any], tmp_path: Path) -> None:
    course = graded["course"]
    out = tmp_path / "plots"
    H.run_cli(course, "report", A2, "--out", str(out))
    for name in (f"{A2}-scores.png", f"{A2}-checks.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 400
        assert height >= 300

"""The submission catalogue of assignment 1 (trap and emulate), graded by the real pipeline.

Each submission is a notebook built from ``solutions/`` and graded with
:func:`autograder.grade.grade_notebook` (worker subprocesses, resource limits, the reference
computed in the grader).  Several faults that hit *different* parts share one notebook: each
part must get exactly its own outcome, which is the point of per-part isolation.
"""

from __future__ import annotations

import re
import stat
import tempfile
from pathlib import Path

import nbformat

from autograder.assignments import a1_trap_and_emulate as a1
from autograder.grade import feedback_text

A1 = "a1_trap_and_emulate"
FULL = {"design_treatment": 5.0, "handlers_interrupt_flag": 5.0, "handlers_io": 10.0,
        "handlers_control": 15.0, "popf_binary_translation": 10.0}


def test_correct_solution_scores_full_marks_whatever_the_test_cells(course, ag):
    cells = ag.submission_cells(A1)
    nb = ag.notebook(A1, cells)
    # the student deletes one test cell and rewrites another: test cells are never read
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    nb.cells.remove(tests[0])
    tests[1].source = "assert True  # edited by the student"
    result = course.grade(A1, course.submit(A1, "alice", nb))
    assert result.status == "ok"
    assert ag.scores(result) == {gid: (pts, "ok") for gid, pts in FULL.items()}
    assert result.score == result.max_score == 45
    assert all(c.passed and c.seed is None for p in result.parts for c in p.checks)


def test_close_but_wrong_and_crashes_cost_only_their_parts(course, ag, monkeypatch):
    # the segfault needs a deep repr first: ~3 s on a loaded machine, so a wider case budget
    monkeypatch.setattr(a1, "CASE_TIMEOUT", 10.0)
    cells = ag.submission_cells(A1, "a1_forgets_pc.py", "a1_os_exit.py", "a1_segfault.py")
    result = course.grade_cells(A1, cells)
    got = ag.scores(result)
    flag = result.part("handlers_interrupt_flag")
    assert flag.status == "ok" and flag.score < 5
    hidden = next(c for c in flag.checks if c.hidden)
    # hidden: the student reads the divergence, never the seed; the instructor gets both
    assert not hidden.passed and hidden.seed is None and "seed=" not in hidden.message
    assert "seed=" in hidden.instructor and "hidden guest #" in hidden.instructor
    assert "the cli handler did not advance pc (vcpu.pc += 4)" in hidden.message
    assert got["handlers_io"] == (0.0, "crashed")
    assert "exited with code 0" in result.part("handlers_io").reason
    assert got["handlers_control"] == (15.0, "ok")
    assert got["popf_binary_translation"] == (0.0, "crashed")
    assert "SIGSEGV" in result.part("popf_binary_translation").reason


def test_memory_hog_infinite_loop_kill_and_recursion_cost_only_their_parts(course, ag,
                                                                         monkeypatch):
    monkeypatch.setattr(a1, "CASE_TIMEOUT", 1.0)  # the per-case budget sent to the worker
    cells = ag.submission_cells(A1, "a1_memory_hog.py", "a1_infinite_loop.py", "a1_kill9.py",
                                "a1_recursion.py")
    result = course.grade_cells(A1, cells)
    got = ag.scores(result)
    assert got["handlers_interrupt_flag"] == (0.0, "crashed")
    assert "memory" in result.part("handlers_interrupt_flag").reason
    assert got["handlers_io"] == (0.0, "timeout")
    assert "longer than 1 s (an infinite loop?)" in result.part("handlers_io").reason
    assert got["handlers_control"] == (0.0, "crashed")
    assert "SIGKILL" in result.part("handlers_control").reason
    popf = result.part("popf_binary_translation")
    assert (popf.score, popf.status) == (0.0, "ok")  # RecursionError is a value, not a crash
    assert all("RecursionError" in c.message for c in popf.checks)


def test_integrity_violations_score_zero_on_their_part(course, ag):
    cells = ag.submission_cells(A1, "a1_patches_hypervisor.py", "a1_reference_at_runtime.py",
                                "a1_imports_reference.py")
    result = course.grade_cells(A1, cells)
    got = ag.scores(result)
    assert got["handlers_interrupt_flag"] == (0.0, "integrity")
    assert "[patch]" in result.part("handlers_interrupt_flag").reason
    io = result.part("handlers_io")  # not visible to the scan: caught by the disabled reference
    assert (io.score, io.status) == (0.0, "integrity")
    assert "virtcore.vmm.handlers.handle_" in io.reason
    assert got["handlers_control"] == (0.0, "integrity")
    assert "[reference]" in result.part("handlers_control").reason
    assert got["popf_binary_translation"] == (10.0, "ok")


def test_patching_at_run_time_cannot_raise_a_score(course, ag):
    result = course.grade_cells(A1, ag.submission_cells(A1, "a1_patches_at_runtime.py"))
    got = ag.scores(result)
    assert got["handlers_interrupt_flag"][0] < 5
    assert {k: v for k, v in got.items() if k != "handlers_interrupt_flag"} == {
        gid: (pts, "ok") for gid, pts in FULL.items() if gid != "handlers_interrupt_flag"}


def _hardcoded_io() -> str:
    """An io cell that replays the *visible* cases' answers and does nothing else right."""
    part = a1.SPEC.part("handlers_io")
    table: dict[tuple[int, int, int], int] = {}
    for check in part.checks:
        if check.hidden:
            continue
        for case in a1.cases(part, check, lambda k: k):
            key = sum(case["words"]) & 0xFFFFFFFF
            for rec in a1._reference(case)["traps"]:
                if rec[2] == "in":
                    word = case["words"][(rec[1] - case["origin"]) // 4]
                    rd = (word >> 20) & 0xF
                    table[(key, rec[1], rec[0])] = rec[7][rd]
    return f"""
ANSWERS = {table!r}


def handle_in(vcpu, insn):
    key = sum(vcpu.vm.program.words) & 0xFFFFFFFF
    vcpu.regs[insn.rd] = ANSWERS.get((key, insn.pc, vcpu.vm.clock), 0)
    vcpu.pc += 4


def handle_out(vcpu, insn):
    vcpu.vm.port_out(insn.imm, vcpu.regs[insn.rs])
    vcpu.pc += 4
"""


def test_hard_coded_visible_answers_fail_the_hidden_cases(course, ag):
    result = course.grade_cells(A1, ag.submission_cells(A1, handlers_io=_hardcoded_io()))
    io = result.part("handlers_io")
    visible = [c for c in io.checks if not c.hidden]
    hidden = [c for c in io.checks if c.hidden]
    assert all(c.passed for c in visible)
    assert not any(c.passed for c in hidden)
    # hidden guests are drawn per submission; how many of them read a port the table does
    # not know depends on the draw — at least one does
    assert io.score < 10
    assert all(result.part(g).score == FULL[g] for g in FULL if g != "handlers_io")


def test_released_stubs_score_zero_as_not_implemented(course, ag):
    result = course.grade_cells(A1, ag.cells_of("a1_stub.py"))
    assert result.score == 0
    assert {p.status for p in result.parts} == {"not implemented"}
    assert all("NotImplementedError" in c.message for p in result.parts for c in p.checks)


def test_missing_cell_cells_out_of_order_and_a_crashing_cell(course, ag):
    good = ag.submission_cells(A1)
    cells = [
        # runs first, but needs a helper that a later cell defines: NameError, this part only
        ("handlers_control", "BOOT = make_boot_table()\n" + good["handlers_control"]),
        ("handlers_io", good["handlers_io"] + "\n\ndef make_boot_table():\n    return {}\n"),
        # os._exit at the top level of a cell: the cell is dropped when other parts are graded
        ("handlers_interrupt_flag", "import os\nos._exit(3)\n"),
        # popf_binary_translation: the student deleted the cell
        ("design_treatment", good["design_treatment"]),
    ]
    result = course.grade_cells(A1, cells)
    got = ag.scores(result)
    assert got["handlers_control"] == (0.0, "error")
    assert "NameError" in result.part("handlers_control").reason
    assert got["handlers_io"] == (10.0, "ok")
    assert got["handlers_interrupt_flag"] == (0.0, "crashed")
    assert got["popf_binary_translation"] == (0.0, "missing")
    assert got["design_treatment"] == (5.0, "ok")  # graded last in the notebook: no matter


def test_corrupt_and_missing_notebooks(course, ag, tmp_path):
    bad = tmp_path / "corrupt.ipynb"
    bad.write_text('{"cells": [', encoding="utf-8")
    r = course.grade(A1, bad)
    assert (r.status, r.score) == ("corrupt", 0)
    assert r.reason.startswith("corrupt: not JSON")
    assert {p.status for p in r.parts} == {"missing"}
    for path in (None, tmp_path / "nope.ipynb"):
        r = course.grade(A1, path)
        assert (r.status, r.score, r.reason) == ("missing", 0, "missing")
    notebook_like = tmp_path / "list.ipynb"
    notebook_like.write_text("[1, 2]", encoding="utf-8")
    assert course.grade(A1, notebook_like).status == "corrupt"


def test_worker_cannot_read_the_secret_nor_write_the_gradebook(course, ag):
    shared = Path(tempfile.mkdtemp(prefix="virtcore-course-"))
    try:
        shared.chmod(0o755)  # anyone may look in; the files themselves are protected
        secret = shared / ".course_secret"
        secret.write_text("TOP-SECRET-VALUE\n", encoding="utf-8")
        secret.chmod(0o600)
        gradebook = shared / "gradebook.db"
        gradebook.write_text("ok\n", encoding="utf-8")
        gradebook.chmod(0o644)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        cell = ag.cells_of("a1_touches_course_files.py")["handlers_io"]
        parts = (f"SECRET_PARTS = {[str(shared) + '/', '.cou', 'rse_sec', 'ret']!r}\n"
                 f"GRADEBOOK_PARTS = {[str(shared) + '/', 'grade', 'book.db']!r}\n")
        result = course.grade_cells(A1, ag.submission_cells(A1, handlers_io=parts + cell),
                                    secret="TOP-SECRET-VALUE")
        io = result.part("handlers_io")
        assert (io.score, io.status) == (0.0, "ok")
        # the sandbox has no such file at all (root or not: nothing of the course is bound)
        assert any("FileNotFoundError" in c.message for c in io.checks)
        assert "TOP-SECRET-VALUE" not in feedback_text(result)
        assert gradebook.read_text(encoding="utf-8") == "ok\n"
        assert result.part("handlers_control").score == 15
    finally:
        for f in shared.iterdir():
            f.unlink()
        shared.rmdir()


def test_feedback_names_seeds_and_divergences_but_no_test_code(course, ag):
    result = course.grade_cells(A1, ag.submission_cells(A1, "a1_forgets_pc.py"), "carol")
    text = feedback_text(result)
    flag = result.part("handlers_interrupt_flag")
    for c in flag.checks:
        if c.seed is not None:
            assert not c.hidden and f"seed={c.seed}" in text
        if c.hidden:
            assert "seed=" not in c.message and "seed=" in c.instructor
            assert c.instructor.split("seed=")[1].split(")")[0] not in text
    assert "did not advance pc" in text
    assert ag.SECRET not in text
    source = Path(a1.__file__).read_text(encoding="utf-8")
    code_lines = {ln.strip() for ln in source.splitlines() if len(ln.strip()) > 30}
    assert not [ln for ln in text.splitlines() if ln.strip() in code_lines]
    nb = nbformat.read(course.sources[A1], as_version=4)
    assert not any(c.source in text for c in nb.cells
                   if c.metadata.get("nbgrader", {}).get("grade"))


# -- the design part: treatment(row) on the real table, public and hidden made-up ISAs ------

def _design(result):
    part = result.part("design_treatment")
    return part, {c.name: c for c in part.checks}


def test_design_memorised_from_the_real_table_fails_every_made_up_isa(course, ag):
    result = course.grade_cells(A1, ag.submission_cells(A1, "a1_design_memorises_table.py"))
    part, checks = _design(result)
    assert (part.score, part.status) == (1.0, "ok")
    assert checks["design_table"].passed
    assert checks["design_public"].points == 0 and checks["design_hidden"].points == 0
    hidden = checks["design_hidden"]
    # the student reads the row in words, never the seed; the instructor gets both
    assert "hidden made-up ISA #1" in hidden.message and "seed=" not in hidden.message
    assert "seed=" in hidden.instructor
    # which row fails first depends on the draw: a sensitive or privileged one, guessed 'direct'
    wrong = r"row \d+ of 12, `[a-z]+` \(.*\): .*expected '(trap|translate)', got 'direct'$"
    assert re.search(wrong, hidden.message), hidden.message
    assert {g: s for g, (s, _) in ag.scores(result).items() if g != "design_treatment"} == {
        g: pts for g, pts in FULL.items() if g != "design_treatment"}
    assert result.score == 41


def test_design_that_lets_every_sensitive_instruction_trap_scores_zero(course, ag):
    result = course.grade_cells(A1, ag.submission_cells(A1, "a1_design_sensitive_traps.py"))
    part, checks = _design(result)
    assert (part.score, part.status) == (0.0, "ok")
    table = checks["design_table"].message
    assert "`pushf`" in table and "not privileged (no trap in user mode)" in table
    assert "expected 'translate', got 'trap'" in table
    # hidden: a sensitive unprivileged row (translate) or a privileged innocuous one (trap),
    # whichever the draw puts first
    assert re.search(r"expected 'translate', got 'trap'$|expected 'trap', got 'direct'$",
                     checks["design_hidden"].message), checks["design_hidden"].message
    assert result.score == 40


def test_design_that_runs_privileged_innocuous_rows_directly_passes_only_the_table(course, ag):
    # the real table has no privileged innocuous row: only the made-up ISAs catch this rule
    result = course.grade_cells(
        A1, ag.submission_cells(A1, "a1_design_privileged_innocuous_direct.py"))
    part, checks = _design(result)
    assert (part.score, part.status) == (1.0, "ok")
    assert checks["design_table"].passed and not checks["design_public"].passed
    assert "privileged (traps with #GP in user mode), innocuous" in checks["design_hidden"].message
    assert "expected 'trap', got 'direct'" in checks["design_hidden"].message


def test_design_cannot_call_the_library_classifier(course, ag):
    cell = ("from virtcore.vmm import classify\n\n\n"
            "def treatment(row):\n"
            "    c = classify([row])\n"
            "    return 'translate' if c.violations else 'trap' if row.privileged else 'direct'\n")
    result = course.grade_cells(A1, ag.submission_cells(A1, design_treatment=cell))
    part = result.part("design_treatment")
    assert (part.score, part.status) == (0.0, "integrity")
    assert "virtcore.vmm.popek.classify" in part.reason

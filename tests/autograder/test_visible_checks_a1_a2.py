"""a1 and a2: a notebook's visible check is the grader's own check on the visible cases.

Each source notebook's test cell runs :func:`autograder.grade.run_visible` (and, hidden,
the part's hidden comparison on fixed seeds).  Here a solution that fails a grader check on
a visible case is (1) run through the notebook's own cells — set-up, helpers, the solution
cells with the variant laid over, then the visible half of the part's test cell — and (2)
graded by the real pipeline (sandboxed worker, reference in the grader).  The notebook's
assertion must carry exactly the message of the grader's first failing visible check, and a
variant the grader passes must pass the notebook too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest

from autograder.grade import grade_notebook, run_visible

REPO = Path(__file__).resolve().parents[2]
A1, A2 = "a1_trap_and_emulate", "a2_credit_scheduler"
SOURCE = {A1: REPO / "course/source/a1_trap_and_emulate/trap_and_emulate.ipynb",
          A2: REPO / "course/source/a2_credit_scheduler/credit_scheduler.ipynb"}
SECRET = "visible-checks-secret"

IRET_FORGETS_MODE = '''
def handle_iret(vcpu, insn):
    vcpu.flags = vcpu.crs[CR.ESTATUS]
    vcpu.pc = vcpu.crs[CR.EPC]
    return Action.CONTINUE
'''
POPF_KEEPS_IF = '''
def handle_popf(vcpu, insn):
    value = vcpu.pop()
    if value is None:
        return Action.CONTINUE
    vcpu.flags = (value & ~FLAG_IF) | (vcpu.flags & FLAG_IF)  # IF never restored
    vcpu.pc += 4
    return Action.CONTINUE
'''
POPF_IGNORES_USER_MODE = '''
def handle_popf(vcpu, insn):
    value = vcpu.pop()
    if value is None:
        return Action.CONTINUE
    vcpu.flags = value  # no user-mode rule: under binary translation only kernel code calls it
    vcpu.pc += 4
    return Action.CONTINUE
'''
SENSITIVE_TRAPS = '''
def treatment(row):
    return "trap" if row.sensitive else "direct"  # forgets that popf/pushf never trap
'''
MEMORISED = '''
KNOWN = {**dict.fromkeys("cli sti hlt in out rdcr wrcr iret invlpg".split(), "trap"),
         **dict.fromkeys(["pushf", "popf"], "translate")}


def treatment(row):
    return KNOWN.get(row.mnemonic, "direct")
'''
NO_STEAL = '''
def steal(sched, cpu, pri):
    return None
'''
NO_CAP = '''
def cap_peak(cap):
    return -(-cap * CREDITS_PER_TSLICE // 100)


def enforce_cap(sched, unit, unit_cap):
    pass  # never parks
'''


def _cells(assignment: str) -> list[Any]:
    return list(nbformat.read(SOURCE[assignment], as_version=4).cells)


def _solution_cells(assignment: str, replace: dict[str, str]) -> dict[str, str]:
    """grade id → the source of each solution cell, with the variant's functions appended."""
    out = {}
    for c in _cells(assignment):
        md = c.metadata.get("nbgrader", {})
        if md.get("solution"):
            out[md["grade_id"]] = c.source + "\n" + replace.get(md["grade_id"], "")
    return out


def _namespace(assignment: str, replace: dict[str, str]) -> dict[str, Any]:
    """Run the set-up, helper and solution cells (variants laid over) as a kernel would."""
    sol = _solution_cells(assignment, replace)
    ns: dict[str, Any] = {"__name__": "__main__"}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        for c in _cells(assignment):
            md = c.metadata.get("nbgrader", {})
            if c.cell_type != "code" or not md or md.get("grade"):
                continue
            src = sol[md["grade_id"]] if md.get("solution") else c.source
            exec(compile(src, f"<{md['grade_id']}>", "exec"), ns)
    finally:
        os.chdir(cwd)
    return ns


def _test_cell(assignment: str, grade_id: str) -> tuple[str, str]:
    """The visible and the hidden half of the part's test cell."""
    for c in _cells(assignment):
        if c.metadata.get("nbgrader", {}).get("grade_id") == f"test_{grade_id}":
            visible, _, hidden = c.source.partition("### BEGIN HIDDEN TESTS")
            return visible, hidden.split("### END HIDDEN TESTS")[0]
    raise AssertionError(f"no test cell for {grade_id}")


def _notebook_verdict(ns: dict[str, Any], code: str) -> str | None:
    try:
        exec(compile(code, "<test cell>", "exec"), dict(ns))
    except AssertionError as e:
        return str(e)
    return None


def _graded(assignment: str, replace: dict[str, str], tmp: Path) -> Any:
    nb = nbformat.read(SOURCE[assignment], as_version=4)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if c.metadata.get("nbgrader", {}).get("solution") and gid in replace:
            c.source += "\n" + replace[gid]
    path = tmp / assignment / SOURCE[assignment].name
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return grade_notebook(path, assignment, "alice", SECRET, source_notebook=SOURCE[assignment])


def _agree(assignment: str, replace: dict[str, str], tmp: Path,
           expect_fail: set[str]) -> None:
    ns = _namespace(assignment, replace)
    result = _graded(assignment, replace, tmp)
    assert result.status == "ok", result
    for part in result.parts:
        visible = [c for c in part.checks if not c.hidden]
        failing = [c for c in visible if not c.passed]
        code, _ = _test_cell(assignment, part.grade_id)
        verdict = _notebook_verdict(ns, code)
        if part.grade_id in expect_fail:
            assert failing, f"{part.grade_id}: the grader passes every visible check"
            assert verdict == f"{failing[0].name}: {failing[0].message}", (part.grade_id, verdict)
        else:
            assert not failing and verdict is None, (part.grade_id, failing, verdict)
        # the same partial credit, check by check
        mine = {c.name: c.points for c in run_visible(assignment, part.grade_id, ns)}
        assert mine == {c.name: c.points for c in visible}, part.grade_id


def test_a1_iret_forgets_mode_and_popf_keeps_if_fail_notebook_and_grader_alike(tmp_path):
    replace = {"handlers_control": IRET_FORGETS_MODE, "popf_binary_translation": POPF_KEEPS_IF}
    _agree(A1, replace, tmp_path, {"handlers_control", "popf_binary_translation"})
    ns = _namespace(A1, replace)
    msg = _notebook_verdict(ns, _test_cell(A1, "handlers_control")[0])
    assert msg is not None and "mode expected user, got kernel" in msg
    assert msg.startswith("control_directed: 2/3 cases passed; first failure")


def test_a1_popf_without_the_user_mode_rule_passes_both(tmp_path):
    # Guest user code runs directly under binary translation: handle_popf is only ever
    # called in the guest's kernel mode, by the grader and by the notebook alike.
    _agree(A1, {"popf_binary_translation": POPF_IGNORES_USER_MODE}, tmp_path, set())


def test_a1_design_that_forgets_popf_fails_notebook_and_grader_alike(tmp_path):
    _agree(A1, {"design_treatment": SENSITIVE_TRAPS}, tmp_path, {"design_treatment"})
    msg = _notebook_verdict(_namespace(A1, {"design_treatment": SENSITIVE_TRAPS}),
                            _test_cell(A1, "design_treatment")[0])
    assert msg is not None and msg.startswith("design_table: 0/1 cases passed; first failure")
    assert "`pushf`" in msg and "expected 'translate', got 'trap'" in msg


def test_a1_design_memorised_passes_the_table_fails_the_made_up_isas_alike(tmp_path):
    _agree(A1, {"design_treatment": MEMORISED}, tmp_path, {"design_treatment"})
    ns = _namespace(A1, {"design_treatment": MEMORISED})
    msg = _notebook_verdict(ns, _test_cell(A1, "design_treatment")[0])
    assert msg is not None and msg.startswith("design_public: 0/3 cases passed")
    assert _notebook_verdict(ns, _test_cell(A1, "design_treatment")[1]) is not None  # hidden


def test_a2_no_cap_and_no_steal_fail_notebook_and_grader_alike(tmp_path):
    replace = {"credit_caps": NO_CAP, "credit_multi_pcpu": NO_STEAL}
    _agree(A2, replace, tmp_path, {"credit_caps", "credit_multi_pcpu"})


@pytest.mark.parametrize("assignment", [A1, A2])
def test_reference_solution_passes_visible_and_hidden_halves(assignment):
    ns = _namespace(assignment, {})
    for c in _cells(assignment):
        gid = c.metadata.get("nbgrader", {}).get("grade_id", "")
        if c.metadata.get("nbgrader", {}).get("grade"):
            visible, hidden = _test_cell(assignment, gid.removeprefix("test_"))
            assert _notebook_verdict(ns, visible) is None, gid
            assert _notebook_verdict(ns, hidden) is None, gid

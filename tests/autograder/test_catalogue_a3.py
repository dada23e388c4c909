"""Assignment 3 (a userspace VMM): the submission catalogue graded by the real pipeline, with
the course's source notebook as the set-up; and the assignment module's own pieces — the
reference parts the worker grades with agree with ``run_guest``, the cases, the messages."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autograder.assignments import a3_userspace_vmm as a3
from autograder.grade import (
    NotebookResult,
    _seed_fn,
    feedback_text,
    grade_notebook,
    hidden_seed_key,
)
from autograder.integrity import scan
from virtcore.kvm.api import (
    KVM_CREATE_VM,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
)

A3 = "a3_userspace_vmm"
SOURCE = Path(__file__).resolve().parents[2] / "course" / "source" / A3 / "userspace_vmm.ipynb"
FULL = {"vmm_setup": 15.0, "vmm_run_loop": 20.0, "vmm_errors": 10.0}


def _seeds(student: str, check: Any) -> Any:
    return _seed_fn(hidden_seed_key("s", student, A3, "0" * 64), A3, check)


def _cells(ag: Any, *variants: str) -> dict[str, str]:
    cells = ag.cells_of("a3_correct.py")
    for v in variants:
        cells.update(ag.cells_of(v))
    return cells


def _grade(ag: Any, tmp_path: Path, cells: dict[str, str], student: str = "alice",
           **kw: Any) -> NotebookResult:
    path = tmp_path / student / "userspace_vmm.ipynb"
    if not path.exists():  # re-grading grades the same file (new cells get new random ids:
        path.parent.mkdir(parents=True, exist_ok=True)  # another file, other hidden cases)
        nbformat.write(ag.notebook(A3, cells, preamble="# the set-up comes from the source"),
                       path)
    return grade_notebook(path, A3, student, ag.SECRET, source_notebook=SOURCE, **kw)


# -- the catalogue, through grade_notebook (worker subprocesses) -------------------------------


def test_correct_solution_scores_full_marks(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag))
    assert result.status == "ok", result.reason
    assert ag.scores(result) == {gid: (pts, "ok") for gid, pts in FULL.items()}
    assert result.score == result.max_score == 45
    assert all(c.passed and c.seed is None for p in result.parts for c in p.checks)


@pytest.fixture(scope="module")
def close_but_wrong(ag, tmp_path_factory) -> dict[str, NotebookResult]:
    """One notebook, three faults in three parts: setup skips KVM_SET_SREGS, the loop never
    writes IN data back, run_vm calls the reference — graded for two students, and again."""
    tmp = tmp_path_factory.mktemp("a3-wrong")
    cells = _cells(ag, "a3_no_sregs.py", "a3_forgets_in.py", "a3_calls_reference.py")
    return {"alice": _grade(ag, tmp, cells, "alice"), "bob": _grade(ag, tmp, cells, "bob"),
            "alice again": _grade(ag, tmp, cells, "alice")}


def test_forgetting_the_in_data_costs_run_loop_points_with_a_clear_message(close_but_wrong):
    loop = close_but_wrong["alice"].part("vmm_run_loop")
    assert loop.status == "ok"
    assert 0 < loop.score < 20  # guests without an IN (e.g. 'hello', 'mmio') still pass
    failed = [c for c in loop.checks if not c.passed]
    assert failed
    for c in failed:
        assert "did the guest get the data of the IN" in c.message, c.message
        assert "run.set_io_data(data)" in c.message
    hidden = next(c for c in loop.checks if c.hidden)
    assert not hidden.passed and hidden.seed is None and "seed=" not in hidden.message
    assert "seed=" in hidden.instructor


def test_skipping_set_sregs_costs_setup_points_and_names_cs_base(close_but_wrong):
    setup = close_but_wrong["alice"].part("vmm_setup")
    assert setup.status == "ok"
    directed = setup.checks[0]
    assert directed.message.startswith("1/3 cases passed"), directed.message  # the refusal
    assert setup.score == pytest.approx(directed.max_points / 3, abs=1e-3)
    assert all("cs.base is 0xffff0000" in c.message for c in setup.checks if not c.passed)


def test_calling_the_reference_scores_zero_on_that_part_only(close_but_wrong):
    result = close_but_wrong["alice"]
    errors = result.part("vmm_errors")
    assert (errors.score, errors.status) == (0.0, "integrity")
    assert "[reference]" in errors.reason and "virtcore.kvm.cli.run_guest" in errors.reason
    assert result.score == pytest.approx(result.part("vmm_setup").score
                                         + result.part("vmm_run_loop").score)
    text = feedback_text(result)
    assert "Part vmm_errors: 0 / 10 (integrity)" in text


def test_reaching_the_reference_at_run_time_is_caught_by_the_worker(ag, tmp_path):
    result = _grade(ag, tmp_path, _cells(ag, "a3_reference_at_runtime.py"))
    errors = result.part("vmm_errors")
    assert (errors.score, errors.status) == (0.0, "integrity")
    assert "virtcore.kvm.cli.run_guest" in errors.reason
    assert "[reference]" not in errors.reason  # not the scan: the disabled reference
    assert ag.scores(result)["vmm_setup"] == (15.0, "ok")
    assert ag.scores(result)["vmm_run_loop"] == (20.0, "ok")


def test_hidden_cases_differ_per_student_and_regrading_is_identical(close_but_wrong):
    alice, bob, again = (close_but_wrong[k] for k in ("alice", "bob", "alice again"))

    def hidden_seed(r: NotebookResult) -> str | None:
        c = next(c for c in r.part("vmm_run_loop").checks if c.hidden)
        assert c.seed is None and "seed=" not in c.message
        return c.instructor.split("seed=")[1].split(")")[0] if "seed=" in c.instructor else None

    assert None not in (hidden_seed(alice), hidden_seed(bob))
    assert hidden_seed(alice) != hidden_seed(bob)
    strip = lambda r: {**r.to_json(), "seconds": 0}  # noqa: E731
    assert strip(again) == strip(alice)
    visible = {c.name: c.message for p in alice.parts for c in p.checks if not c.hidden}
    assert visible == {c.name: c.message for p in bob.parts for c in p.checks if not c.hidden}


def test_a_loop_that_ignores_hlt_times_out_and_costs_only_its_part(ag, tmp_path, monkeypatch):
    monkeypatch.setattr(a3, "CASE_TIMEOUT", 1.0)  # the per-case budget sent to the worker
    result = _grade(ag, tmp_path, _cells(ag, "a3_loops_forever.py"))
    got = ag.scores(result)
    assert got["vmm_run_loop"] == (0.0, "timeout")
    assert "longer than 1 s (an infinite loop?)" in result.part("vmm_run_loop").reason
    assert got["vmm_setup"] == (15.0, "ok")
    assert got["vmm_errors"] == (10.0, "ok")  # run_vm runs with the reference loop


def test_released_stub_scores_zero_as_not_implemented(ag, tmp_path):
    result = _grade(ag, tmp_path, ag.cells_of("a3_stub.py"))
    assert result.score == 0
    assert {p.status for p in result.parts} == {"not implemented"}
    assert all("NotImplementedError" in c.message for p in result.parts for c in p.checks)


# -- the module's pieces, in this process ----------------------------------------------------------


def _run(ns: dict[str, Any], gid: str, case: dict[str, Any]) -> str | None:
    part = a3.SPEC.part(gid)
    got = a3.run_case(a3.build(ns, gid, a3.worker_setup(gid)), case)
    json.dumps(got)  # what the worker sends is plain JSON data
    return a3.compare(part, part.checks[-1], case, got)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63 - 1), kind=st.sampled_from(["setup", "loop", "fault"]))
def test_the_reference_parts_the_worker_grades_with_agree_with_run_guest(seed, kind):
    ns = a3.reference_namespace()
    case = a3.generated_case(kind, seed)
    for gid in ("vmm_setup", "vmm_run_loop", "vmm_errors") if kind != "fault" else (
            "vmm_errors",):
        assert _run(ns, gid, case) is None, (gid, case["label"])


def test_every_case_of_every_check_passes_with_the_reference():
    ns = a3.reference_namespace()
    for part in a3.SPEC.parts:
        for check in part.checks:
            for case in a3.cases(part, check, _seeds("carol", check)):
                assert _run(ns, part.grade_id, case) is None, (check.name, case["label"])


def test_cases_are_public_or_per_student_and_deterministic():
    for part in a3.SPEC.parts:
        for check in part.checks:
            alice = a3.cases(part, check, _seeds("alice", check))
            bob = a3.cases(part, check, _seeds("bob", check))
            assert alice and json.dumps(alice) == json.dumps(
                a3.cases(part, check, _seeds("alice", check)))
            if check.hidden:
                assert {c["seed"] for c in alice}.isdisjoint({c["seed"] for c in bob})
                assert len(alice) == a3.HIDDEN_CASES
            else:
                assert json.dumps(alice) == json.dumps(bob)


def test_generated_guests_exercise_every_exit_and_every_fault():
    seen: set[object] = set()
    for seed in range(40):
        exp = a3.expected_result(a3.generated_case("loop", seed))
        seen.add(exp["stop"])
        for r in exp["exits"]:
            seen.add((r[0], r[3]))
        fault = a3.expected_result(a3.generated_case("fault", seed))
        seen.add(("fault", fault["stop"], fault["error"]))
        assert fault["stop"] != "KVM_EXIT_HLT"
        setup = a3.generated_case("setup", seed)
        assert setup["regs"] and a3.expected_result(setup)["stop"] == "KVM_EXIT_HLT"
    assert {(KVM_EXIT_IO, KVM_EXIT_IO_IN), (KVM_EXIT_IO, KVM_EXIT_IO_OUT), (KVM_EXIT_MMIO, 0),
            (KVM_EXIT_MMIO, 1), "KVM_EXIT_HLT", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_INTERNAL_ERROR",
            "max_exits"} <= seen
    assert {("fault", "api_version", None), ("fault", "error", errno.EINVAL),
            ("fault", "error", errno.ENOMEM), ("fault", "KVM_EXIT_INTR", None),
            ("fault", "KVM_EXIT_FAIL_ENTRY", None), ("fault", "KVM_EXIT_SHUTDOWN", None),
            ("fault", "KVM_EXIT_INTERNAL_ERROR", None)} <= seen


def test_setup_messages_name_what_is_missing():
    ns = a3.reference_namespace()
    good = ns["setup_vm"]

    def small_mapping(kvm, guest):  # maps sizeof(struct kvm_run) only
        m = good(kvm, guest)
        return a3._Machine(m.kvm, m.vm, m.vcpu, m.vcpu.mmap(2352), m.memory)

    def creates_first(kvm, guest):  # asks for the version only after creating the VM
        kvm.ioctl(KVM_CREATE_VM, 0)
        return good(kvm, guest)

    lwn, old = (a3.cases(a3.SPEC.part("vmm_setup"), a3.SPEC.part("vmm_setup").checks[0],
                         lambda k: k)[i] for i in (0, 1))
    msg = _run({**ns, "setup_vm": small_mapping}, "vmm_setup", lwn)
    assert "2352-byte vCPU mapping" in msg and "KVM_GET_VCPU_MMAP_SIZE bytes (12288)" in msg
    msg = _run({**ns, "setup_vm": creates_first}, "vmm_setup", old)
    assert msg == ("KVM_GET_API_VERSION returned 11: setup_vm raised VmmError, but only after"
                   " KVM_CREATE_VM — refuse before creating anything")


def test_errors_messages_say_what_the_result_should_be():
    ns = a3.reference_namespace()
    part = a3.SPEC.part("vmm_errors")
    directed = {c["label"]: c for c in a3.cases(part, part.checks[0], lambda k: k)}

    ns_raise = {**ns}  # a run_vm that lets every error through
    exec(compile("def run_vm(kvm, guest, inputs=b'', max_exits=1000):\n"
                 "    machine = setup_vm(kvm, guest)\n"
                 "    return run_loop(machine, VmResult(), inputs, max_exits)\n",
                 "<cell vmm_errors>", "exec"), ns_raise)
    msg = _run(ns_raise, "vmm_errors", directed["directed guest 'load address 0x1800 (EINVAL)'"])
    assert msg.startswith("your run_vm raised:") and "Errno 22" in msg
    assert "report a failed KVM call in the VmResult (stop='error', error=e.errno" in msg
    msg = _run(ns_raise, "vmm_errors", directed["directed guest 'endless loop (EINTR)'"])
    assert "EINTR from KVM_RUN: a KVM_EXIT_INTR record" in msg
    fail_entry = directed["directed guest 'rbx = 1 << 40 (KVM_EXIT_FAIL_ENTRY)'"]
    assert _run(ns_raise, "vmm_errors", fail_entry) == (
        "detail expected 0x80000021 (run.fail_entry.hardware_entry_failure_reason), got None")


def test_the_scan_flags_the_reference_loops():
    for src in ("from virtcore.kvm.cli import run_guest\nrun_guest(None)",
                "import virtcore.kvm.cli as cli\ncli.run_guest(None)",
                "from virtcore.kvm.qemu import QemuVMM\nQemuVMM(None)"):
        found = scan(src, forbidden=a3.FORBIDDEN)
        assert found and all(f.rule == "reference" for f in found), src
    assert scan("from virtcore.kvm.api import read_exit\nread_exit(run)",
                forbidden=a3.FORBIDDEN) == []

"""The assignment modules: specs, case generation (public vs per-student), runners, comparers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autograder import assignments
from autograder.assignments import a1_trap_and_emulate as a1
from autograder.assignments import a2_credit_scheduler as a2
from autograder.grade import _seed_fn, hidden_seed_key, run_visible
from autograder.spec import AssignmentSpec, Check, GradingError, Part
from virtcore.hw.isa import ISA, TABLE
from virtcore.sched import RoundRobin
from virtcore.sched.credit import Credit
from virtcore.vmm.handlers import HandlerTable

PROTOCOL = ("SPEC", "REFERENCES", "FORBIDDEN", "CASE_TIMEOUT", "CELL_TIMEOUT", "cases",
            "worker_setup", "build", "run_case", "compare", "sandbox_plan")


@pytest.mark.parametrize("name", sorted(assignments.REGISTRY))
def test_every_registered_module_follows_the_protocol(name):
    mod = assignments.module(name)
    assert all(hasattr(mod, attr) for attr in PROTOCOL)
    spec = assignments.get(name)
    assert spec is mod.SPEC and spec.name == name and spec.notebook.endswith(".ipynb")
    assert all(p.requires and any(c.hidden for c in p.checks) for p in spec.parts)
    assert all(any(not c.hidden for c in p.checks) for p in spec.parts)


def test_spec_validation():
    with pytest.raises(GradingError, match="differ from the sum"):
        Part("p", 5, (Check("a", 2, False),))
    with pytest.raises(GradingError, match="share a name"):
        Part("p", 2, (Check("a", 1, False), Check("a", 1, True)))
    with pytest.raises(GradingError, match="duplicate grade ids"):
        AssignmentSpec("x", "x.ipynb", (Part("p", 0, ()), Part("p", 0, ())))
    with pytest.raises(GradingError, match="points must be"):
        Check("c", -1, False)
    with pytest.raises(GradingError, match="unknown assignment"):
        assignments.module("a0_nothing")


def _seeds(student: str, spec: AssignmentSpec, check: Check):
    return _seed_fn(hidden_seed_key("secret", student, spec.name, "0" * 64), spec.name, check)


@pytest.mark.parametrize("mod", [a1, a2], ids=["a1", "a2"])
def test_visible_cases_are_public_hidden_cases_are_per_student_and_deterministic(mod):
    for part in mod.SPEC.parts:
        for check in part.checks:
            alice = mod.cases(part, check, _seeds("alice", mod.SPEC, check))
            again = mod.cases(part, check, _seeds("alice", mod.SPEC, check))
            bob = mod.cases(part, check, _seeds("bob", mod.SPEC, check))
            assert json.dumps(alice) == json.dumps(again)
            assert alice, check.name
            if check.hidden:
                assert {c["seed"] for c in alice}.isdisjoint({c["seed"] for c in bob})
            else:
                assert json.dumps(alice) == json.dumps(bob)


def test_a1_hidden_guests_exercise_the_part_and_the_reference_passes_them():
    ref = dict(HandlerTable.reference())
    for part in a1.SPEC.parts:
        if part.grade_id == a1.DESIGN:  # no guest: see the design tests below
            continue
        mine = set(a1.HANDLERS[part.grade_id])
        for check in part.checks:
            for case in a1.cases(part, check, _seeds("dave", a1.SPEC, check)):
                trace = a1.trace_guest(ref, case, tuple(mine))
                assert a1.compare(part, check, case, trace) is None
                if check.hidden:
                    assert any(r[2] in mine for r in trace["traps"])
                    assert trace["stop"] == "halted"


def test_a1_design_cases_the_rule_passes_and_a_memorised_table_fails():
    part = a1.SPEC.part(a1.DESIGN)
    rule = {"treatment": lambda row: "trap" if row.privileged else
            "translate" if row.sensitive else "direct"}
    known = {r.mnemonic: a1.treatment(a1.row_to_json(r)) for r in TABLE}
    memo = {"treatment": lambda row: known.get(row.mnemonic, "direct")}
    for check in part.checks:
        for case in a1.cases(part, check, _seeds("erin", a1.SPEC, check)):
            assert a1.compare(part, check, case, a1.run_case(rule, case)) is None
            verdict = a1.compare(part, check, case, a1.run_case(memo, case))
            assert (verdict is None) == (check.name == "design_table"), verdict
            if check.name != "design_table":
                names = [r["mnemonic"] for r in case["rows"]]
                assert len(set(names)) == len(names) and not set(names) & set(ISA)
                combos = {(r["privileged"], r["sensitivity"]) for r in case["rows"]}
                assert len(combos) == 6  # every combination: one wrong branch fails the case


def test_a1_design_messages_name_the_row_and_its_attributes():
    part = a1.SPEC.part(a1.DESIGN)
    table = part.check("design_table")
    case = a1.cases(part, table, lambda k: k)[0]
    n = len(TABLE)
    popf = next(i for i, r in enumerate(TABLE) if r.mnemonic == "popf")

    def answers(**override):
        return [override.get(r.mnemonic, a1.treatment(a1.row_to_json(r))) for r in TABLE]

    msg = a1.compare(part, table, case, {"answers": answers(popf="trap")})
    assert msg is not None and msg.startswith(f"row {popf + 1} of {n}, `popf` (flags ← pop;")
    assert "not privileged (no trap in user mode), control-sensitive" in msg
    assert msg.endswith("expected 'translate', got 'trap'")
    msg = a1.compare(part, table, case, {"answers": answers(add="Direct")})
    assert msg is not None and "(an answer is one of 'direct', 'trap', 'translate')" in msg
    raised = a1.run_case({"treatment": lambda row: {"nop": "direct"}[row.mnemonic]}, case)
    msg = a1.compare(part, table, case, raised)
    assert msg is not None and msg.startswith("row 2 of") and "treatment(row) raised" in msg
    assert "KeyError" in msg
    assert a1.compare(part, table, case, {"answers": "trap"}) == (
        "the worker returned no usable answers for these rows")
    assert a1.compare(part, table, case, {"answers": answers()[:-1]}).endswith(
        "no answer came back")
    from autograder.worker import BuildError

    with pytest.raises(BuildError, match="treatment is not defined: the cell design_treatment"):
        a1.build({}, a1.DESIGN, {})
    with pytest.raises(BuildError, match="treatment is not a function"):
        a1.build({"treatment": "trap"}, a1.DESIGN, {})


def test_a1_messages_name_the_first_divergence():
    part = a1.SPEC.part("handlers_io")
    check = part.checks[0]
    case = a1.cases(part, check, lambda k: k)[0]
    ref = dict(HandlerTable.reference())

    def wrong_in(vcpu, insn):
        vcpu.regs[insn.rd] = 0
        vcpu.pc += 4

    def crashing_out(vcpu, insn):
        return 1 // 0

    msg = a1.compare(part, check, case, a1.trace_guest({**ref, "in": wrong_in}, case, ("in",)))
    assert msg is not None and msg.startswith("after trap #3 (in r2, 0x3fd at pc=0x10")
    assert "r2 expected 0x60, got 0x0" in msg
    msg = a1.compare(part, check, case,
                     a1.trace_guest({**ref, "out": crashing_out}, case, ("out",)))
    assert msg is not None and "your handle_out raised" in msg and "ZeroDivisionError" in msg
    bad = a1.trace_guest(ref, case)
    bad["serial"] = b"nope".hex()
    assert "serial output expected b'ok', got b'nope'" in a1.compare(part, check, case, bad)
    assert a1.compare(part, check, case, {"stop": 3}) == (
        "the worker returned no usable trace for this guest")


def test_a1_build_names_what_is_missing():
    from autograder.worker import BuildError

    with pytest.raises(BuildError, match="handle_out is not defined: the cell handlers_io"):
        a1.build({"handle_in": print}, "handlers_io", {})
    with pytest.raises(BuildError, match="is not a function"):
        a1.build({"handle_in": 3, "handle_out": print}, "handlers_io", {})


def test_a2_reference_passes_and_wrong_schedulers_fail_with_a_reason():
    for part in a2.SPEC.parts:
        for check in part.checks:
            for case in a2.cases(part, check, _seeds("erin", a2.SPEC, check))[:2]:
                assert a2.compare(part, check, case, a2.simulate_case(Credit(), case)) is None
    part = a2.SPEC.part("credit_caps")
    case = a2.cases(part, part.checks[0], lambda k: k)[0]
    msg = a2.compare(part, part.checks[0], case, a2.simulate_case(RoundRobin(30_000), case))
    assert msg is not None and "more than its cap" in msg


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda t: t["segments"].append([0, 0, 5, 3]), "outside the run"),
    (lambda t: t["segments"].append([9, 0, 0, 1]), "outside the run"),
    (lambda t: t["segments"].append(list(t["segments"][0])), "two places"),
    (lambda t: t.update(vcpus=["x"]), "does not list"),
    (lambda t: t["latencies"][0].append(-1), "latencies"),
    (lambda t: t.pop("runnable"), "incomplete"),
])
def test_a2_invalid_traces_are_rejected(mutate, reason):
    part = a2.SPEC.part("credit_accounting")
    case = a2.cases(part, part.checks[0], lambda k: k)[0]
    trace = a2.simulate_case(Credit(), case)
    mutate(trace)
    msg = a2.compare(part, part.checks[0], case, trace)
    assert msg is not None and msg.startswith("the trace is not valid") and reason in msg


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 4)), min_size=1, max_size=6),
       st.integers(1, 4))
def test_ideal_shares_fill_the_machine_and_respect_weights(doms, pcpus):
    case = {"pcpus": pcpus, "domains": [{"name": f"d{i}", "weight": w, "vcpus": n}
                                        for i, (w, n) in enumerate(doms)]}
    shares = a2.ideal_shares(case)
    assert abs(sum(shares.values()) - min(pcpus, sum(n for _, n in doms))) < 1e-9
    for i, (w, n) in enumerate(doms):
        assert shares[f"d{i}"] <= n + 1e-9
        for j, (w2, n2) in enumerate(doms):  # not full → share per weight-vCPU is the largest
            if shares[f"d{i}"] < n - 1e-9:
                assert shares[f"d{i}"] / (w * n) >= shares[f"d{j}"] / (w2 * n2) - 1e-9


def test_run_visible_runs_only_the_visible_checks_in_process(ag):
    ns: dict = {}
    exec(ag.PREAMBLE["a2_credit_scheduler"], ns)
    for src in ag.submission_cells("a2_credit_scheduler").values():
        exec(src, ns)
    results = run_visible("a2_credit_scheduler", "credit_caps", ns)
    assert [(r.name, r.passed, r.hidden) for r in results] == [("caps_public", True, False)]

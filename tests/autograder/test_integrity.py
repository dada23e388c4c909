"""The static integrity scan (rules, false positives) and the reference switched off at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autograder.assignments import a1_trap_and_emulate as a1
from autograder.assignments import a2_credit_scheduler as a2
from autograder.integrity import defined_names, scan
from autograder.sandbox import REPO_ROOT

A1F, A2F = a1.FORBIDDEN, a2.FORBIDDEN

FLAGGED = [
    ("from virtcore.vmm.handlers import handle_cli", A1F, "reference"),
    ("import virtcore.vmm.handlers as h\nf = h.handle_out", A1F, "reference"),
    ("from virtcore.vmm import HandlerTable\nt = HandlerTable.reference()", A1F, "reference"),
    ("from virtcore.vmm.handlers import *\ndef handle_in(v, i):\n    return handle_out(v, i)",
     A1F, "reference"),
    ("import virtcore.sched\nclass S(virtcore.sched.Credit): pass", A2F, "reference"),
    ("from virtcore.sched.credit import _acct_domains", A2F, "reference"),
    ("import virtcore.sched as s\nC = getattr(s, 'Credit')", A2F, "reference"),
    ("import autograder.grade", (), "autograder"),
    ("from autograder import worker", (), "autograder"),
    ("__builtins__['len'] = None", (), "builtins"),
    ("import builtins\nbuiltins.print = None", (), "builtins"),
    ("import builtins\nsetattr(builtins, 'len', None)", (), "builtins"),
    ("import sys\nsys.modules['virtcore'] = None", (), "sys.modules"),
    ("import sys\nx = sys.modules", (), "sys.modules"),
    ("from sys import modules", (), "sys.modules"),
    ("import virtcore.vmm.popek as p\np.check_equivalence = None", (), "patch"),
    ("from virtcore.sched import simulate\nsimulate.__defaults__ = ()", (), "patch"),
    ("from virtcore.vmm import Hypervisor\nHypervisor.run = lambda *a: None", (), "patch"),
    ("import virtcore.vmm.hypervisor\nH = virtcore.vmm.hypervisor.Hypervisor\nH.run = None", (),
     "patch"),
    ("import virtcore.vmm\nsetattr(virtcore.vmm, 'VM', None)", (), "patch"),
    ("import virtcore.vmm.handlers as h\nh._REFERENCE['cli'] = None", (), "patch"),
    ("del __import__('virtcore').rng", (), "dynamic-code"),
    ("open('course/.course_secret').read()", (), "course-file"),
    ("import os\nos.environ.get('VIRTCORE_COURSE_SECRET')", (), "course-file"),
    ("open('/srv/course/gradebook.db', 'w')", (), "course-file"),
    ("import ctypes\nctypes.string_at(0)", (), "ctypes"),
    ("from ctypes import c_int", (), "ctypes"),
    ("import subprocess\nsubprocess.run(['id'])", (), "process"),
    ("import os\nos.system('id')", (), "process"),
    ("from os import fork", (), "process"),
    ("import multiprocessing", (), "process"),
    ("exec('x = 1')", (), "dynamic-code"),
    ("eval('1')", (), "dynamic-code"),
    ("import importlib\nimportlib.reload(x)", (), "dynamic-code"),
    ("import gc\ngc.get_objects()", (), "introspection"),
    ("import sys\nf = sys._getframe(1)", (), "introspection"),
    ("def f(): pass\ng = f.__globals__", (), "introspection"),
    ("x = object.__subclasses__()", (), "introspection"),
    ("import inspect\ninspect.currentframe().f_back", (), "introspection"),
]


@pytest.mark.parametrize(("source", "forbidden", "rule"), FLAGGED,
                         ids=[f"{r}-{i}" for i, (_, _, r) in enumerate(FLAGGED)])
def test_each_rule_is_flagged(source, forbidden, rule):
    found = scan(source, forbidden=forbidden)
    assert rule in {f.rule for f in found}, found
    assert all(f.line >= 1 for f in found)


HONEST = [
    ("def handle_cli(vcpu, insn):\n    vcpu.interrupts_enabled = False\n    vcpu.pc += 4", A1F),
    ("import os\nimport signal\nx = os.getpid()", ()),  # os and signal are not flagged
    ("import virtcore.vmm.handlers as h\nprint(h.Action.CONTINUE, h.Insn)", A1F),
    ("from virtcore.sched.credit import CSCHED_CREDITS_PER_MSEC as K\nx = K * 2", A2F),
    ("class Credit(Scheduler):\n    pass\nclass StudentCredit(Credit):\n    pass", A2F),
    ("self_test = {'reference': 1}\nd = {}\nd['x'] = 2", A1F),
    ("from collections import deque\nq = deque()\nq.append(1)", ()),
    ("import math\nmath.pi2 = 6.28", ()),  # the standard library is not the grader's business
    ("text = 'see the course notes'\nopen('data.txt')", ()),
]


@pytest.mark.parametrize(("source", "forbidden"), HONEST)
def test_honest_code_is_not_flagged(source, forbidden):
    assert scan(source, forbidden=forbidden) == []


def test_names_are_resolved_through_the_preamble_and_the_other_cells():
    pre = ["from virtcore.sched import Credit, Scheduler"]
    assert [f.rule for f in scan("class S(Credit): pass", forbidden=A2F, context=pre)] == [
        "reference"]
    # the student's own Credit (defined in another cell) shadows the preamble's
    assert scan("class S(Credit): pass", forbidden=A2F, context=pre, own={"Credit"}) == []
    assert defined_names("class Credit(Scheduler):\n    x = 1") == {"Credit", "x"}


def test_the_catalogue_is_flagged_exactly_where_expected(ag):
    flagged = {"a1_patches_hypervisor.py": "patch", "a1_imports_reference.py": "reference",
               "a2_calls_reference.py": "reference"}
    for path in sorted(ag.SOLUTIONS.glob("*.py")):
        assignment = ("a1_trap_and_emulate" if path.name.startswith("a1")
                      else "a2_credit_scheduler")
        forbidden = A1F if assignment.startswith("a1") else A2F
        for gid, source in ag.cells_of(path.name).items():
            rules = {f.rule for f in scan(source, forbidden=forbidden,
                                          context=[ag.PREAMBLE[assignment]])}
            expected = {flagged[path.name]} if path.name in flagged else set()
            assert rules == expected, (path.name, gid, rules)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_scan_never_fails_on_arbitrary_text(text):
    assert isinstance(scan(text, forbidden=A1F + A2F, context=[text]), list)


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-I", "-c",
                           f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
                           + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_disabled_references_raise_and_are_recorded_even_when_caught():
    out = _run("""
        import importlib
        from autograder.integrity import IntegrityError, disable_references, touched
        from autograder.assignments import a1_trap_and_emulate as a1, a2_credit_scheduler as a2
        guard = disable_references({**a1.REFERENCES, **a2.REFERENCES})
        guard.record(True)
        import virtcore.sched, virtcore.sched.credit as credit
        from virtcore.vmm import HandlerTable
        from virtcore.vmm.handlers import handle_cli, _REFERENCE
        attempts = [lambda: virtcore.sched.Credit(), lambda: credit.credit_shares([], 1),
                    lambda: handle_cli(None, None), lambda: _REFERENCE["sti"](None, None),
                    lambda: HandlerTable.reference(),
                    lambda: type("S", (credit.Credit,), {}),
                    lambda: importlib.reload(credit)]
        for attempt in attempts:
            try:
                attempt()
            except IntegrityError as e:
                print("blocked:", e)
        print("same stub:", virtcore.sched.Credit is credit.Credit)
        print("touched:", len(touched()))
        print("tables still work:", len(HandlerTable({"cli": print})))
    """)
    assert out.count("blocked:") == 7
    assert "same stub: True" in out
    assert "touched: 7" in out
    assert "tables still work: 1" in out
    assert "subclassing it is not allowed" in out

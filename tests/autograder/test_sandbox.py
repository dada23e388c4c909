"""The worker subprocess: its confinement, its protocol, and how its end is reported."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from autograder import sandbox
from autograder.assignments import a1_trap_and_emulate as a1
from autograder.sandbox import Limits, run_worker

PART = a1.SPEC.part("handlers_io")
PREAMBLE = ["from virtcore.vmm import Action"]

PROBE = r'''
import json, os, resource, sys

def handle_in(vcpu, insn):
    info = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "env": sorted(os.environ), "home": os.environ.get("HOME"), "cwd": os.getcwd(),
            "as": resource.getrlimit(resource.RLIMIT_AS)[0],
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
            "stdout_is_sink": not hasattr(sys.stdout, "fileno")}
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        info["fork"] = "allowed"
    except OSError as e:
        info["fork"] = type(e).__name__
    try:
        with open("big.bin", "wb") as f:
            f.write(b"x" * (4 << 20))
        info["big_file"] = "written"
    except OSError as e:
        info["big_file"] = type(e).__name__
    print("x" * 100_000)
    os.write(1, b"not json\n" * 1000)
    os.write(2, b"noise on stderr\n")
    raise ValueError("PROBE" + json.dumps(info) + "PROBE")

def handle_out(vcpu, insn):
    vcpu.pc += 4
'''


#: A loop that swallows the worker's time-budget exception: only the outer limits stop it.
SPIN = """
while True:
    try:
        while True:
            pass
    except BaseException:
        pass
"""


def _task(source: str, cases: int = 1, **extra: object) -> dict:
    case = a1.cases(PART, PART.checks[0], lambda k: k)[:cases]
    return {"assignment": a1.SPEC.name, "part": PART.grade_id, "preamble": PREAMBLE,
            "cells": [{"grade_id": PART.grade_id, "source": source}], "cases": case, **extra}


def test_the_worker_is_confined(monkeypatch):
    monkeypatch.setenv("VIRTCORE_COURSE_SECRET", "leak-me")
    run = run_worker(_task(PROBE), timeout=30)
    assert run.outcome == "ok", run.detail
    case = run.last("case")
    assert case is not None
    text = case["result"]["error"]["message"]
    info = json.loads(text.split("PROBE")[-2])
    assert "VIRTCORE_COURSE_SECRET" not in info["env"]
    assert set(info["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED"}
    assert info["home"] == info["cwd"] != str(Path.cwd())
    assert not Path(info["cwd"]).exists()  # removed afterwards
    assert info["as"] == Limits().address_space_bytes
    assert info["core"] == 0
    assert info["nproc"] == 0 and info["fork"] != "allowed"
    assert info["big_file"] == "OSError"  # past RLIMIT_FSIZE: an error, not a dead worker
    assert info["stdout_is_sink"]
    if os.geteuid() == 0:
        assert (info["uid"], info["gid"], info["groups"]) == (65534, 65534, [])
        assert run.messages[0] == {"type": "ready", "uid": 65534, "dropped": True}
    assert "noise on stderr" in run.stderr
    assert run.garbage_lines == 0  # printing never reaches the result channel


def test_outcomes_are_reported():
    assert run_worker({"ping": True}, timeout=20).outcome == "ok"
    run = run_worker(_task(SPIN, cell_timeout=0.2), timeout=2)
    assert (run.outcome, run.detail) == ("timeout", "still running after 2 s (wall clock)")
    run = run_worker(_task("import os\nos.kill(os.getpid(), 11)\n"), timeout=20)
    assert run.outcome == "crashed" and "SIGSEGV" in run.detail
    run = run_worker(_task("x = bytearray(8 << 30)\n"), timeout=20)
    assert run.outcome == "memory" and "out of memory" in run.detail
    run = run_worker(_task("import sys\nsys.exit(0)\n"), timeout=20)
    assert run.outcome == "ok"  # SystemExit in a cell is an error of that cell, not the end
    assert run.last("cell")["status"] == "error"
    run = run_worker(_task("import os\nos._exit(0)\n"), timeout=20)
    assert run.outcome == "crashed" and "before it finished" in run.detail


def test_a_budget_overrun_in_a_case_ends_the_worker_with_its_index():
    loop = "def handle_in(vcpu, insn):\n    while True:\n        pass\n\nhandle_out = handle_in\n"
    run = run_worker(_task(loop, cases=2, case_timeout=0.3), timeout=20)
    assert run.outcome == "timeout"
    fatal = run.last("fatal")
    assert fatal is not None and fatal["index"] == 0


@pytest.mark.skipif(not hasattr(signal, "SIGXCPU"), reason="needs SIGXCPU")
def test_cpu_limit_is_reported_as_a_timeout():
    run = run_worker(_task(SPIN, cell_timeout=0.1), timeout=30,
                     limits=Limits(cpu_seconds=1))
    assert run.outcome == "timeout" and "CPU" in run.detail


def test_repo_root_is_this_checkout():
    assert (sandbox.REPO_ROOT / "autograder" / "worker.py").is_file()
    assert (sandbox.REPO_ROOT / "virtcore" / "__init__.py").is_file()

"""The worker subprocess: its confinement, its protocol, and how its end is reported."""

from __future__ import annotations

import json
import os
import signal

import pytest

from autograder import sandbox
from autograder.assignments import a1_trap_and_emulate as a1
from autograder.sandbox import Limits, run_worker

PART = a1.SPEC.part("handlers_io")
PREAMBLE = ["from virtcore.vmm import Action"]

_PATHS = [str(sandbox.REPO_ROOT), "/etc/passwd", "/var/tmp", "/dev/shm"]
PROBE = f"PROBE_PATHS = {_PATHS!r}\n" + r'''
import json, os, resource, sys

def handle_in(vcpu, insn):
    info = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "env": sorted(os.environ), "home": os.environ.get("HOME"), "cwd": os.getcwd(),
            "as": resource.getrlimit(resource.RLIMIT_AS)[0],
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
            "stdout_is_sink": not hasattr(sys.stdout, "fileno"),
            "root": sorted(os.listdir("/")), "pids": sorted(p for p in os.listdir("/proc")
                                                         if p.isdigit()),
            "sys_path": sys.path, "exists": {p: os.path.exists(p) for p in PROBE_PATHS}}
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
    return {"assignment": a1.SPEC.name, "part": PART.grade_id, "harness": "a1",
            "preamble": PREAMBLE,
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
    assert set(info["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED",
                                "PWD"}
    assert info["home"] == info["cwd"] == "/tmp"  # a private tmpfs, gone with the sandbox
    # a root file system built from nothing: no checkout, no home, no /etc
    assert set(info["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
                                 "sandbox", "proc", "dev", "tmp", "var", "run", "root"}
    assert info["exists"] == {str(sandbox.REPO_ROOT): False,
                              "/etc/passwd": False, "/var/tmp": True, "/dev/shm": True}
    assert all(not p.startswith(str(sandbox.REPO_ROOT)) for p in info["sys_path"])
    assert len(info["pids"]) <= 3  # its own PID namespace: bwrap's init and itself
    assert info["as"] == Limits().address_space_bytes
    assert info["core"] == 0
    assert info["nproc"] == 0 and info["fork"] != "allowed"
    assert info["big_file"] == "OSError"  # past RLIMIT_FSIZE: an error, not a dead worker
    assert info["stdout_is_sink"]
    if os.geteuid() == 0:
        # setpriv dropped root before Python started, to a uid of this sandbox's own
        assert info["uid"] == info["gid"] >= sandbox.UID_BASE and info["groups"] == []
        assert run.messages[0]["uid"] == info["uid"]
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


def test_the_staged_library_has_the_part_references_redacted():
    lib = sandbox.stage(a1.SPEC.name, PART.grade_id)
    handlers = (lib / "virtcore" / "vmm" / "handlers.py").read_text(encoding="utf-8")
    assert sandbox.REDACTED_MARK in handlers
    assert "virtcore.vmm.handlers.handle_in: " in handlers
    assert "virtcore.vmm.handlers.handle_cli: " not in handlers  # other parts run on it
    assert not list((lib / "virtcore" / "vmm" / "__pycache__").glob("handlers.*"))
    assert sorted(p.name for p in (lib / "autograder").iterdir() if p.suffix == ".py") == [
        "__init__.py", "worker.py"]
    assert not (lib / "autograder" / "assignments").exists()
    a3_lib = sandbox.stage("a3_userspace_vmm", "vmm_run_loop")
    assert (a3_lib / "autograder" / "harness" / "a3_setup.py").exists()
    assert not (a3_lib / "autograder" / "harness" / "a3_loop.py").exists()
    a2_lib = sandbox.stage("a2_credit_scheduler", "credit_caps")
    credit = (a2_lib / "virtcore" / "sched" / "credit.py").read_text(encoding="utf-8")
    assert "CREDITS_PER_TSLICE" not in credit.split("class Credit", 1)[1].split("def ", 2)[-1]


def test_no_sandbox_is_a_fault_not_a_grade(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap is not installed")
    run = run_worker(_task("x = 1\n"), timeout=20)
    assert run.outcome == "fault" and "bubblewrap is not installed" in run.detail


def test_repo_root_is_this_checkout():
    assert (sandbox.REPO_ROOT / "autograder" / "worker.py").is_file()
    assert (sandbox.REPO_ROOT / "virtcore" / "__init__.py").is_file()

"""Preloaded workers (zygotes): one sandbox per part and grading process, a fresh child each time.

What must hold for sharing a sandbox over time to be safe: every child starts from the
zygote's clean state, nothing a child writes survives it, a child cannot reach into the
zygote, a child that kills its zygote only loses its own run, and grading gives the same
result with zygotes as with one fresh sandbox per part.
"""

from __future__ import annotations

import json
import os

import pytest

from autograder import sandbox, zygote
from autograder.assignments import a1_trap_and_emulate as a1
from autograder.sandbox import run_worker

pytestmark = pytest.mark.skipif(
    sandbox.sandbox_problem() is not None or not zygote.enabled(),
    reason=f"needs bubblewrap and pidfd_open: {sandbox.sandbox_problem()}")

PART = a1.SPEC.part("handlers_io")
PREAMBLE = ["from virtcore.vmm import Action"]

#: A handler that reports what it can see and touch, then leaves marks behind.
PROBE = r'''
import json, os, sys

def handle_in(vcpu, insn):
    import virtcore
    info = {"pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(),
            "marked": getattr(virtcore, "MARK", None),
            "tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm"))}
    for what, fn in (("mem", lambda: open(f"/proc/{os.getppid()}/mem", "rb").read(1)),
                     ("environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read()),
                     ("fd", lambda: os.listdir(f"/proc/{os.getppid()}/fd"))):
        try:
            fn()
            info[what] = "read"
        except OSError as e:
            info[what] = type(e).__name__
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    info["ptrace"] = libc.ptrace(16, os.getppid(), 0, 0)   # PTRACE_ATTACH
    virtcore.MARK = "set by an earlier child"
    with open("/tmp/left-behind", "w") as f:
        f.write("x")
    os.makedirs("/tmp/locked/deeper", exist_ok=True)
    os.chmod("/tmp/locked", 0)
    try:
        with open("/dev/shm/also-left", "w") as f:
            f.write("x")
    except OSError:
        pass  # not writable in this sandbox: nothing to leave there
    raise ValueError("PROBE" + json.dumps(info) + "PROBE")

def handle_out(vcpu, insn):
    vcpu.pc += 4
'''

KILL_PARENT = '''
import os, signal
def handle_in(vcpu, insn):
    os.kill(os.getppid(), signal.SIGKILL)
    raise ValueError("killed my zygote")
def handle_out(vcpu, insn):
    vcpu.pc += 4
'''


def _task(source: str) -> dict:
    case = a1.cases(PART, PART.checks[0], lambda k: k)[:1]
    return {"assignment": a1.SPEC.name, "part": PART.grade_id, "harness": "a1",
            "preamble": PREAMBLE, "cells": [{"grade_id": PART.grade_id, "source": source}],
            "cases": case}


def _probe() -> dict:
    run = run_worker(_task(PROBE), timeout=30)
    assert run.outcome == "ok", run.detail
    assert isinstance(run.extra.get("zygote"), int)
    case = run.last("case")
    assert case is not None
    text = case["result"]["error"]["message"]
    return {**json.loads(text.split("PROBE")[-2]), "zygote": run.extra["zygote"]}


def test_each_child_starts_clean_and_leaves_nothing():
    zygote.shutdown()
    first, second = _probe(), _probe()
    assert first["zygote"] == second["zygote"]  # the same zygote served both …
    assert first["pid"] != second["pid"]  # … with two fresh children
    # what the first child did to its memory and its scratch space is gone for the second
    assert second["marked"] is None
    assert second["tmp"] == [] and second["shm"] == []
    # and the zygote cannot be read or traced by its children
    for info in (first, second):
        assert info["mem"] != "read" and info["environ"] != "read" and info["fd"] != "read"
        assert info["ptrace"] == -1
        if os.geteuid() == 0:
            assert info["uid"] >= sandbox.UID_BASE


def test_a_child_that_kills_its_zygote_loses_only_its_own_run():
    zygote.shutdown()
    before = _probe()
    run = run_worker(_task(KILL_PARENT), timeout=30)
    assert run.outcome != "ok" or run.extra.get("killed")
    assert run.extra.get("killed") or "SIGKILL" in run.detail  # retried by the grader
    after = _probe()
    assert after["zygote"] != before["zygote"]  # a new zygote for the next run
    assert after["tmp"] == []


def test_zygotes_of_a_root_grader_have_uids_of_their_own():
    if os.geteuid() != 0:
        pytest.skip("uids per sandbox apply when grading as root")
    zygote.shutdown()
    uids = set()
    for gid in ("handlers_io", "handlers_control"):
        part = a1.SPEC.part(gid)
        task = {**_task("x = 1\n"), "part": gid,
                "cases": a1.cases(part, part.checks[0], lambda k: k)[:1]}
        run = run_worker(task, timeout=30)
        assert run.last("ready") is not None, run.detail
        uids.add(run.last("ready")["uid"])
    assert len(uids) == 2 and min(uids) >= sandbox.UID_BASE


def test_grading_gives_the_same_result_with_and_without_zygotes(monkeypatch, tmp_path, ag):
    course = ag.Course(tmp_path)
    nb = ag.notebook("a1_trap_and_emulate", ag.submission_cells("a1_trap_and_emulate",
                                                                  "a1_forgets_pc.py"))
    path = course.submit("a1_trap_and_emulate", "alice", nb)
    with_z = course.grade("a1_trap_and_emulate", path).to_json()
    monkeypatch.setenv("VIRTCORE_ZYGOTE", "0")
    without = course.grade("a1_trap_and_emulate", path).to_json()
    for r in (with_z, without):
        r.pop("seconds", None)
    assert with_z == without
    assert 0 < with_z["score"] < 45


def test_a_forked_process_leaves_the_parents_zygotes_alone():
    zygote.shutdown()
    before = _probe()  # this process now has an idle zygote
    pid = os.fork()
    if pid == 0:  # a grading pool process, say: it must not see, use or stop them
        code = 0 if not zygote._IDLE else 1
        zygote.shutdown()  # what its exit would do
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    after = _probe()
    assert after["zygote"] == before["zygote"]  # still ours, still alive

"""The attack catalogue of issue 13: hostile submissions graded by the real CLI, in a class.

Each module fixture writes a class of submissions into a fresh copy of the course — two
correct students (the source's own solutions), the blank (every answer cell
``raise NotImplementedError()``) and the hostile ones (``solutions/*.py`` laid over the
blank, so they score only what their attack wins) — and runs ``python -m autograder grade``
once, three students at a time.  Every hostile submission must score no more than the blank,
leave every other student's score unchanged, leave no process and no file behind, and leave
``course/`` byte-identical.  The sandbox (bubblewrap) is required: without it the tests
skip locally and fail in CI (``VIRTCORE_REQUIRE_SANDBOX=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from autograder.sandbox import sandbox_problem


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("_virtcore_attacks",
                                                  Path(__file__).with_name("_attacks.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


A = _load()
A1, A2, A3 = "a1_trap_and_emulate", "a2_credit_scheduler", "a3_userspace_vmm"
_PROBLEM = sandbox_problem()
if _PROBLEM is not None and os.environ.get("VIRTCORE_REQUIRE_SANDBOX") == "1":
    raise RuntimeError(f"VIRTCORE_REQUIRE_SANDBOX=1 but no sandbox: {_PROBLEM}")
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"no sandbox: {_PROBLEM}")


def _class(tmp: Path, assignment: str, students: dict[str, Any], *args: str,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    course = A.new_course(tmp / "course")
    proc = A.cli(course, tmp, "init")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, nb in students.items():
        A.put(course, assignment, name, nb(course) if callable(nb) else nb)
    before = A.tree_hash(A.REPO / "course")
    config = (course / "nbgrader_config.py").read_bytes()
    proc = A.cli(course, tmp, "grade", assignment, "--jobs", "3", *args, extra_env=env)
    return {"course": course, "tmp": tmp, "proc": proc, "results": A.results(course, assignment),
            "repo_course_same": before == A.tree_hash(A.REPO / "course"),
            "config_same": config == (course / "nbgrader_config.py").read_bytes(),
            "leftovers": A.leftovers(tmp)}


def _score(graded: dict[str, Any], student: str) -> float:
    return float(graded["results"][student]["score"])


def _common(graded: dict[str, Any], attacks: list[str], references: list[str]) -> None:
    proc = graded["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    blank = _score(graded, "blank")
    for s in references:
        assert _score(graded, s) == 45, (s, graded["results"][s])
    for s in attacks:
        assert _score(graded, s) <= blank, (s, graded["results"][s]["parts"])
    assert graded["leftovers"] == []
    assert graded["repo_course_same"] and graded["config_same"]


@pytest.fixture(scope="module")
def a1_class(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("a1-attacks")
    tmp.chmod(0o755)
    marker = uuid.uuid4().hex[:10]
    home = Path(os.path.expanduser("~"))
    students: dict[str, Any] = {"ref_a": A.reference(A1), "ref_b": A.reference(A1),
                                "blank": A.submission(A1)}
    students |= {k: A.hostile(A1, f) for k, f in A.A1_ATTACKS.items()}
    students["files_and_secret"] = lambda course: A.submission(
        A1, A.fs_attack(course, marker, str(home)))
    try:
        graded = _class(tmp, A1, students, env={"VIRTCORE_COURSE_SECRET": A.SECRET})
        graded["marker"] = marker
        graded["pwned"] = [str(p) for p in (A.REPO / f"virtcore-pwned-{marker}",
                                            home / f"virtcore-pwned-{marker}",
                                            Path("/tmp") / f"virtcore-left-{marker}",
                                            Path("/var/tmp") / f"virtcore-left-{marker}",
                                            Path("/dev/shm") / f"virtcore-left-{marker}")
                           if p.exists()]
        return graded
    finally:
        for p in (A.REPO / f"virtcore-pwned-{marker}", home / f"virtcore-pwned-{marker}"):
            p.unlink(missing_ok=True)
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            Path(d, f"virtcore-left-{marker}").unlink(missing_ok=True)


def test_a1_attacks_score_no_more_than_the_blank(a1_class: dict[str, Any]) -> None:
    _common(a1_class, [*A.A1_ATTACKS, "files_and_secret"], ["ref_a", "ref_b"])
    parts = {p["grade_id"]: p for p in a1_class["results"]["execs_reference_source"]["parts"]}
    assert parts["handlers_io"]["status"] == "integrity"  # the redacted copy raised
    assert "virtcore.vmm.handlers.handle_" in parts["handlers_io"]["reason"]
    course_src = {p["grade_id"]: p for p in a1_class["results"]["reads_course_source"]["parts"]}
    assert "LookupError: no source notebook found" in course_src["handlers_io"]["reason"]


def test_a1_killer_cannot_reach_the_other_students(a1_class: dict[str, Any]) -> None:
    # graded three at a time with ref_a and ref_b: they keep full marks
    assert _score(a1_class, "ref_a") == _score(a1_class, "ref_b") == 45
    killer = a1_class["results"]["kills_other_workers"]
    assert killer["score"] == 0
    # the only grading process it can see is its own part's zygote (autograder.zygote): it
    # kills that and so loses its own run — retried, then reported as its crash, never a fault
    assert all(p["status"] in ("crashed", "not implemented", "ok", "error")
               for p in killer["parts"])


def test_a1_files_secret_and_home_are_out_of_reach(a1_class: dict[str, Any]) -> None:
    text = json.dumps(a1_class["results"])
    assert A.SECRET not in text  # not the file, not the environment, not the parent's
    loot = a1_class["results"]["files_and_secret"]["parts"]
    io = next(p for p in loot if p["grade_id"] == "handlers_io")
    message = io["checks"][0]["message"]
    assert "FileNotFoundError" in message and "wrote" not in message.replace(
        "wrote /tmp", "").replace("wrote /var/tmp", "").replace("wrote /dev/shm", "")
    assert a1_class["pwned"] == []
    token = A.gradebook_token(a1_class["marker"]).encode()
    assert token not in (a1_class["course"] / "gradebook.db").read_bytes()


@pytest.fixture(scope="module")
def a2_class(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("a2-attacks")
    tmp.chmod(0o755)
    students: dict[str, Any] = {"ref": A.reference(A2), "blank": A.submission(A2)}
    students |= {k: A.hostile(A2, f) for k, f in A.A2_ATTACKS.items()}
    return _class(tmp, A2, students)


def test_a2_attacks_score_no_more_than_the_blank(a2_class: dict[str, Any]) -> None:
    # forgers included: the grader runs every case itself and the sandbox only answers the
    # scheduler's hooks, so nothing written to the result channel stands for a result
    _common(a2_class, list(A.A2_ATTACKS), ["ref"])


def test_a2_forgers_never_reach_a_comparison(a2_class: dict[str, Any]) -> None:
    for forger in ("forges_results", "forges_protocol"):
        for part in a2_class["results"][forger]["parts"]:
            # the forged messages never count: they end the conversation before any case is run
            # (crashed / error), or — when a forged "done" arrives first — no case has a result
            # of the grader's own simulation; the status depends on that timing, never the score
            assert part["score"] == 0 and not any(c["passed"] for c in part["checks"]), part
            assert part["status"] in ("crashed", "error") or all(
                "no result came back" in c["instructor"] for c in part["checks"]), (forger, part)
    for part in a2_class["results"]["bad_decisions"]["parts"]:
        assert all("InvalidDecisionError" in c["message"] for c in part["checks"]), part


@pytest.fixture(scope="module")
def a3_class(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("a3-attacks")
    tmp.chmod(0o755)
    students: dict[str, Any] = {"ref": A.reference(A3), "blank": A.submission(A3)}
    students |= {k: A.hostile(A3, f) for k, f in A.A3_ATTACKS.items()}
    return _class(tmp, A3, students)


def test_a3_attacks_score_no_more_than_the_blank(a3_class: dict[str, Any]) -> None:
    _common(a3_class, list(A.A3_ATTACKS), ["ref"])
    reach = a3_class["results"]["vars_sys"]["parts"][0]["reason"]
    assert "KeyError" in reach and "autograder.assignments" in reach


def test_cost_is_bounded_per_student(tmp_path: Path) -> None:
    """Cells that sleep just under the per-cell budget, a notebook past the size cap, one past
    the cell cap, one nested past any parser, and one of 60 cells of 7 KB (the integrity scan
    is linear: it is graded normally)."""
    tmp_path.chmod(0o755)
    wide = [f"# filler {i}\n" + "\n".join(f"NAME_{i}_{k} = {k}  # {'x' * 60}"
                                          for k in range(90)) for i in range(60)]
    huge = A.submission(A1, {"handlers_io": "X = '" + "y" * (9 << 20) + "'\n"})
    students: dict[str, Any] = {
        "blank": A.submission(A1),
        "sleeper": A.submission(A1, extra=["import time\ntime.sleep(4.8)\n"] * 40),
        "wide": A.submission(A1, blank=False, extra=wide),
        "huge": huge,
        "many": A.submission(A1, extra=["pass\n"] * 1200),
        "deep": b'{"cells": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}",
    }
    graded = _class(tmp_path, A1, students, "--budget", "25")
    proc = graded["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = graded["results"]
    assert res["wide"]["score"] == 45
    sleeper = res["sleeper"]
    assert sleeper["score"] == 0
    assert any("time budget" in p["reason"] for p in sleeper["parts"])
    assert sleeper["seconds"] < 25 + 60  # the budget, plus one worker's kill and clean-up
    for name, why in (("huge", "bytes, more than"), ("many", "cells, more than"),
                      ("deep", "corrupt")):
        assert res[name]["status"] == "corrupt" and res[name]["score"] == 0, name
        assert why in res[name]["reason"], (name, res[name]["reason"])
    assert graded["leftovers"] == [] and graded["repo_course_same"]


def _nonroot_python() -> str | None:
    for py in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if os.access(py, os.X_OK):
            return py
    return None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not _nonroot_python(),
                    reason="simulating a non-root instructor needs root, setpriv and a system"
                           " python readable by nobody")
def test_grading_as_an_ordinary_user_is_as_safe() -> None:
    """The whole CLI as uid 65534 (an instructor without root): the course, its secret and
    the instructor's home belong to that user, and still the student's code reaches none."""
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="virtcore-nonroot-"))  # pytest's are root-only
    try:
        _as_an_ordinary_user(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _as_an_ordinary_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    marker = uuid.uuid4().hex[:10]
    home = tmp_path / "home"
    home.mkdir()
    course = A.new_course(tmp_path / "course")
    proc = A.cli(course, tmp_path, "init")
    assert proc.returncode == 0, proc.stderr[-2000:]
    A.put(course, A1, "ref", A.reference(A1))
    A.put(course, A1, "blank", A.submission(A1))
    A.put(course, A1, "files_and_secret", A.submission(A1, A.fs_attack(course, marker, str(home))))
    for p in [tmp_path, *tmp_path.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    config = (course / "nbgrader_config.py").read_bytes()
    site = next(str(p) for p in (A.REPO / ".venv" / "lib").glob("python3*/site-packages"))
    proc = A.cli(course, tmp_path, "grade", A1, "--jobs", "2", python=_nonroot_python() or "",
                 user=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
                 extra_env={"VIRTCORE_COURSE_SECRET": A.SECRET, "HOME": str(home),
                            "PYTHONPATH": f"{A.REPO}{os.pathsep}{site}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = A.results(course, A1)
    assert res["ref"]["score"] == 45
    assert res["files_and_secret"]["score"] <= res["blank"]["score"] == 0
    assert A.SECRET not in json.dumps(res)
    assert (course / "nbgrader_config.py").read_bytes() == config
    assert not (home / f"virtcore-pwned-{marker}").exists()
    assert not (A.REPO / f"virtcore-pwned-{marker}").exists()
    assert A.gradebook_token(marker).encode() not in (course / "gradebook.db").read_bytes()
    assert A.leftovers(tmp_path) == []
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(d, f"virtcore-left-{marker}").exists()


def test_killing_grade_kills_its_sandboxes(tmp_path: Path) -> None:
    """SIGKILL of the CLI mid-run: its pool dies with it (PDEATHSIG), each sandbox with its
    pool process (--die-with-parent) — nothing of the run is left."""
    import signal
    import subprocess
    import sys
    import time

    tmp_path.chmod(0o755)
    course = A.new_course(tmp_path / "course")
    assert A.cli(course, tmp_path, "init").returncode == 0
    A.put(course, A1, "sleeper", A.submission(A1, extra=["import time\ntime.sleep(4.5)\n"] * 20))
    proc = subprocess.Popen([sys.executable, "-m", "autograder", "grade", A1, "--course",
                             str(course), "--jobs", "1"], cwd=A.REPO, env=A.env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any("bwrap" in p for p in A.leftovers(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline, "no sandbox started"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while A.leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert A.leftovers(tmp_path) == []
    assert not (course / "autograded" / "sleeper").exists()  # nothing half-graded was cached


def test_grade_refuses_without_a_sandbox_and_faults_are_never_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from autograder import cli, sandbox
    from autograder.sandbox import WorkerRun

    course = A.new_course(tmp_path / "course")
    assert A.cli(course, tmp_path, "init").returncode == 0
    A.put(course, A1, "ref", A.reference(A1))
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "bubblewrap is not installed")
    assert cli.main(["grade", A1, "--course", str(course)]) == 2
    assert "no sandbox" in capsys.readouterr().err
    assert not (course / "autograded" / "ref").exists()
    # a sandbox that keeps failing before any student code ran: retried, then not a grade
    monkeypatch.setattr(cli, "_executor", lambda args, n: ThreadPoolExecutor(1))
    calls = []

    def broken(task: Any, **kw: Any) -> WorkerRun:
        calls.append(task["part"])
        return WorkerRun("fault", [], "the sandbox failed before student code ran: bwrap: boom")

    monkeypatch.setattr(sandbox, "run_worker", broken)
    assert cli.main(["grade", A1, "--course", str(course), "--unsafe-no-sandbox"]) == 1
    out = capsys.readouterr().out
    assert "not graded: infrastructure fault" in out and "WARNING" in out
    assert len(calls) == 3 * len(cli.get_spec(A1).parts)  # every part: one run, two retries
    assert not (course / "autograded" / "ref" / A1 / "virtcore-result.json").exists()

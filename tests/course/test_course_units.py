"""Fast checks of the course's pieces: notebooks agree with the autograder, the gradebook
writes are idempotent and transactional, ``import`` understands every source layout, ``init``
makes a private secret."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from autograder import cli, gradebook
from autograder.assignments import a1_trap_and_emulate as a1mod
from autograder.assignments import a2_credit_scheduler as a2mod
from autograder.assignments import get
from autograder.grade import CheckResult, NotebookResult, PartResult


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


# -- the notebooks and the autograder agree -----------------------------------------------------


@pytest.mark.parametrize("assignment", [A1, A2])
def test_notebook_cells_match_the_autograders_parts(assignment: str) -> None:
    src = H.COURSE / "source" / assignment / NOTEBOOK[assignment]
    cells = gradebook.notebook_cells(src)
    assert gradebook.check_spec_against_notebook(get(assignment), cells) == []
    assert cells.max_score == get(assignment).points


def test_a1_visible_checks_use_the_autograders_public_seeds() -> None:
    ns = H.notebook_namespace(A1, ("imports", "helpers"))
    # the notebook takes the grader's own table (named by check), not a copy of it
    assert ns["PUBLIC_SEEDS"] == a1mod.PUBLIC_SEEDS


def test_a2_visible_workloads_are_the_autograders() -> None:
    ns = H.notebook_namespace(A2, ("imports", "helpers"))
    assert {f"{k}_public": v for k, v in ns["PUBLIC_SEEDS"].items()} == a2mod.PUBLIC_SEEDS
    for kind, seeds in ns["PUBLIC_SEEDS"].items():
        for seed in (*seeds, 97, 98, 99):
            mine, theirs = ns["public_case"](kind, seed), a2mod.generated_case(kind, seed)
            assert mine["pcpus"] == theirs["pcpus"]
            assert mine["domains"] == theirs["domains"]
            assert mine["duration_us"] == theirs["duration_us"]
            assert mine["seed"] == theirs["sim_seed"]
    assert (ns["SHARE_ABS"], ns["SHARE_REL"]) == (a2mod.SHARE_ABS, a2mod.SHARE_REL)
    assert (ns["LATENCY_FACTOR"], ns["LATENCY_SLACK_US"]) == (a2mod.LATENCY_FACTOR,
                                                              a2mod.LATENCY_SLACK_US)
    for label, pcpus, doms in a2mod.WORKED_EXAMPLES:
        weights = [d["weight"] for d in doms]
        mine = ns["worked_case"](weights, [d["vcpus"] for d in doms])
        assert (mine["pcpus"], mine["domains"]) == (pcpus, list(doms)), label


def test_preamble_is_only_the_set_up_cells() -> None:
    from autograder.extract import read_preamble

    pre1 = read_preamble(H.COURSE / "source" / A1 / NOTEBOOK[A1])
    assert len(pre1) == 1
    assert "import" in pre1[0]
    pre2 = "\n".join(read_preamble(H.COURSE / "source" / A2 / NOTEBOOK[A2]))
    assert "class StudentCredit(CreditBase)" in pre2
    assert "Credit()" not in pre2  # the visible-check helpers never reach the worker


# -- gradebook ----------------------------------------------------------------------------------


def _result(student: str, scores: dict[str, float]) -> NotebookResult:
    spec = get(A1)
    parts = []
    for p in spec.parts:
        got = scores.get(p.grade_id, 0.0)
        checks = [CheckResult(c.name, c.points * got / p.points, c.points, got == p.points,
                              "ok" if got == p.points else "first divergence at step 3",
                              c.hidden, None) for c in p.checks]
        parts.append(PartResult(p.grade_id, got, p.points, "ok", checks, ""))
    return NotebookResult(student, A1, sum(scores.values()), spec.points, "ok", parts, "", 0.1)


def _rows(db: Path) -> list[tuple[Any, ...]]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(
            "SELECT s.student_id, c.name, g.auto_score, g.needs_manual_grade FROM grade g"
            " JOIN submitted_notebook n ON g.notebook_id = n.id"
            " JOIN submitted_assignment s ON n.assignment_id = s.id"
            " JOIN base_cell c ON g.cell_id = c.id").fetchall())
    finally:
        con.close()


def test_gradebook_record_is_idempotent_and_transactional(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{H.BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    db = tmp_path / "gb.db"
    spec = get(A1)
    src = H.COURSE / "source" / A1 / NOTEBOOK[A1]
    with gradebook.CourseGradebook(f"sqlite:///{db}") as gb:
        gb.ensure_assignment(spec, src)
        gb.ensure_assignment(spec, src)  # twice: nothing new
        alice = _result("alice", {"handlers_io": 10, "handlers_control": 7.5})
        gb.record(spec, alice, timestamp="2024-03-01 10:00:00")
        first = _rows(db)
        gb.record(spec, alice, timestamp="2024-03-01 10:00:00")
        assert _rows(db) == first  # idempotent: same rows, same values
        assert ("alice", "test_handlers_control", 7.5, 0) in first
        assert len(first) == len(spec.parts)  # one test cell per part

        # an interruption in the middle of a write loses that write only
        boom = _result("alice", {"handlers_io": 0, "handlers_control": 15})
        real = gradebook.part_comment
        calls = {"n": 0}

        def failing(part: Any) -> str:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real(part)

        monkeypatch.setattr(gradebook, "part_comment", failing)
        with pytest.raises(KeyboardInterrupt):
            gb.record(spec, boom)
        monkeypatch.setattr(gradebook, "part_comment", real)
        assert _rows(db) == first  # nothing of the interrupted write
        gb.record(spec, _result("bob", {"handlers_io": 10}))
        assert gb.part_scores(A1, "bob")["test_handlers_io"] == 10
        assert gb.part_scores(A1, "alice")["test_handlers_io"] == 10
        comment = gb.gb.find_comment("handlers_control", "trap_and_emulate", A1, "alice")
        assert "control_hidden" in comment.auto_comment
        assert "7.5 / 15" in comment.auto_comment


def test_gradebook_refuses_a_notebook_that_does_not_match(tmp_path: Path) -> None:
    nb = H.read_nb(H.COURSE / "source" / A1 / NOTEBOOK[A1])
    for cell in nb.cells:
        if H.nbg(cell).get("grade_id") == "test_handlers_io":
            cell.metadata["nbgrader"]["points"] = 99
    bad = H.write_nb(nb, tmp_path / NOTEBOOK[A1])
    problems = gradebook.check_spec_against_notebook(get(A1), gradebook.notebook_cells(bad))
    assert problems == ["test cell 'test_handlers_io' is worth 99 points, the part"
                        " 'handlers_io' 10"]


def test_course_config_reads_nbgrader_config(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    course = H.copy_course(tmp_path / "c")
    cfg = gradebook.course_config(course)
    assert cfg.course_id == "virtcore"
    assert cfg.db_url == f"sqlite:///{course.resolve() / 'gradebook.db'}"
    monkeypatch.setenv("VIRTCORE_GRADEBOOK_URL", "postgresql://grader@db/virtcore")
    assert gradebook.course_config(course).db_url == "postgresql://grader@db/virtcore"
    assert gradebook.course_config(course, "sqlite:///x.db").db_url == "sqlite:///x.db"


# -- import ---------------------------------------------------------------------------------------


def _nb(text: str = "") -> str:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": text, "id": "x"}]})


def _collect(course: Path, source: Path) -> dict[str, str]:
    return dict(cli.collect(course, get(A1), source))


def test_import_folder_layouts(tmp_path: Path) -> None:
    course = tmp_path / "course"
    src = tmp_path / "in"
    (src / "ann").mkdir(parents=True)
    (src / "ann" / NOTEBOOK[A1]).write_text(_nb("ann"))
    (src / "ben" / A1).mkdir(parents=True)  # nbgrader's submitted/ layout
    (src / "ben" / A1 / NOTEBOOK[A1]).write_text(_nb("ben"))
    (src / "ben" / A1 / "timestamp.txt").write_text("2024-03-01 09:00:00\n")
    (src / "cat").mkdir()
    (src / "cat" / "a.ipynb").write_text(_nb())
    (src / "cat" / "b.ipynb").write_text(_nb())  # two notebooks, neither the right one
    (src / "dan" / ".ipynb_checkpoints").mkdir(parents=True)
    (src / "dan" / ".ipynb_checkpoints" / "x-checkpoint.ipynb").write_text(_nb())
    (src / "dan" / "Untitled.ipynb").write_text(_nb("dan"))
    (src / "bad id!").mkdir()
    (src / "bad id!" / NOTEBOOK[A1]).write_text(_nb())
    got = _collect(course, src)
    assert got["ann"] == "new"
    assert got["ben"] == "new"
    assert got["cat"].startswith("no notebook (2 notebooks, none named")
    assert got["dan"] == f"new (renamed Untitled.ipynb -> {NOTEBOOK[A1]})"
    assert got["bad id!"] == "skipped: not a valid student id"
    sub = course / "submitted"
    assert (sub / "ben" / A1 / "timestamp.txt").read_text().strip() == "2024-03-01 09:00:00"
    assert '"dan"' in (sub / "dan" / A1 / NOTEBOOK[A1]).read_text()
    assert (sub / "cat" / A1).is_dir()
    assert not (sub / "cat" / A1 / NOTEBOOK[A1]).exists()
    again = _collect(course, src)
    assert again["ann"] == "unchanged"
    (src / "ann" / NOTEBOOK[A1]).write_text(_nb("ann, second try"))
    assert _collect(course, src)["ann"] == "updated"


def test_import_zip_of_downloads(tmp_path: Path) -> None:
    course = tmp_path / "course"
    # a wrapper folder around per-student folders, one student as a zip of its own
    inner = tmp_path / "eve.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr(f"{NOTEBOOK[A1]}", _nb("eve"))
    archive = tmp_path / "downloads.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"Downloads/fay/{NOTEBOOK[A1]}", _nb("fay"))
        zf.write(inner, "Downloads/eve.zip")
    got = _collect(course, archive)
    assert got == {"eve": "new", "fay": "new"}
    # LMS file names: the latest attempt wins
    lms = tmp_path / "lms.zip"
    with zipfile.ZipFile(lms, "w") as zf:
        zf.writestr(f"{A1}_gus_attempt_2024-03-01-10-00-00_{NOTEBOOK[A1]}", _nb("old"))
        zf.writestr(f"{A1}_gus_attempt_2024-03-02-10-00-00_{NOTEBOOK[A1]}", _nb("new"))
    assert _collect(course, lms) == {"gus": "new"}
    assert '"new"' in (course / "submitted" / "gus" / A1 / NOTEBOOK[A1]).read_text()
    assert (course / "submitted" / "gus" / A1 / "timestamp.txt").read_text().strip() == (
        "2024-03-02 10:00:00")
    # a path that escapes the extraction folder is refused
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr(f"../../{NOTEBOOK[A1]}", _nb())
    got = _collect(course, evil)  # refused, a line of its own; the import goes on
    assert list(got) == ["(archive)"] and "unsafe path" in got["(archive)"], got
    assert not (tmp_path / NOTEBOOK[A1]).exists()
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    with pytest.raises(cli.CLIError, match="not a zip"):
        _collect(course, not_zip)


def test_import_nbgrader_exchange(tmp_path: Path) -> None:
    course = tmp_path / "course"
    inbound = tmp_path / "exchange" / "virtcore" / "inbound"
    for name, text in ((f"hal+{A1}+2024-03-01 10:00:00.000000 UTC", "old"),
                       (f"hal+{A1}+2024-03-02 10:00:00.000000 UTC+AbCd", "new"),
                       (f"ivy+{A1}+2024-03-01 08:00:00.000000 UTC", "ivy"),
                       ("ivy+other_assignment+2024-03-05 08:00:00.000000 UTC", "other")):
        d = inbound / name
        d.mkdir(parents=True)
        (d / NOTEBOOK[A1]).write_text(_nb(text))
        (d / "timestamp.txt").write_text(name.split("+")[2])
        (d / "submission_secret.txt").write_text("s3")
    got = _collect(course, tmp_path / "exchange")
    assert got == {"hal": "new", "ivy": "new"}
    sub = course / "submitted"
    assert '"new"' in (sub / "hal" / A1 / NOTEBOOK[A1]).read_text()
    assert (sub / "hal" / A1 / "submission_secret.txt").is_file()
    assert '"ivy"' in (sub / "ivy" / A1 / NOTEBOOK[A1]).read_text()


# -- init ----------------------------------------------------------------------------------------


def test_init_creates_a_private_secret_and_imports_the_roster(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTCORE_COURSE_SECRET", raising=False)
    monkeypatch.delenv("VIRTCORE_GRADEBOOK_URL", raising=False)
    course = tmp_path / "c"
    course.mkdir()
    (course / "nbgrader_config.py").write_text((H.COURSE / "nbgrader_config.py").read_text())
    roster = tmp_path / "students.csv"
    roster.write_text("id,first_name,last_name,email\nann,Ann,Lee,ann@x.edu\nben,Ben,,\n")
    assert cli.main(["init", "--course", str(course), "--students", str(roster)]) == 0
    secret = course / ".course_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    first = secret.read_text()
    assert len(first.strip()) == 64
    assert "imported 2" in capsys.readouterr().out
    secret.chmod(0o644)
    assert cli.main(["init", "--course", str(course)]) == 0
    assert secret.read_text() == first  # kept
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600  # and made private again
    with gradebook.CourseGradebook.for_course(course) as gb:
        assert gb.student_ids() == ["ann", "ben"]
    assert cli.main(["grade", A1, "--course", str(tmp_path / "nowhere")]) == 2

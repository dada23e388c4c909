"""One bad student never stops the import, the grading or the feedback of the others.

Through the instructor's commands (``python -m autograder import | grade | feedback``) on a
zip of downloads where, beside an honest student and a blank one, a student's notebook is a
zip bomb, another's per-student zip is corrupt, another's notebook is a symlink to the course
secret, another's is nested 100,000 levels deep: each of them gets one ``rejected`` line and
is graded *missing* (0) with the reason; the honest student is imported, graded (45) and
gets feedback.  The honest notebook also carries ``<script>`` in markdown and in an output:
``grade``'s copy in ``autograded/`` (what formgrader renders) has none.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import pytest


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
A1, NB = H.A1, H.NOTEBOOK[H.A1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("import-pipeline")
    course = H.copy_course(tmp / "course")
    logs = {"init": H.run_cli(course, "init").stdout, "release": H.run_cli(course, "release",
                                                                           A1).stdout}
    src, rel = course / "source" / A1 / NB, course / "release" / A1 / NB
    good = H.solved(rel, src)
    good.cells.insert(1, nbformat.v4.new_markdown_cell("<script>alert('md')</script> mine"))
    shown = nbformat.v4.new_code_cell("1")
    shown.outputs = [nbformat.v4.new_output(
        "display_data", data={"text/html": "<script>alert('out')</script>", "text/plain": "1"})]
    good.cells.insert(2, shown)
    inner = tmp / "carl.zip"
    inner.write_bytes(b"PK\x03\x04 not really a zip")
    archive = tmp / "downloads.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"Downloads/alice/{NB}", nbformat.writes(good))
        zf.writestr(f"Downloads/zoe/{NB}", rel.read_text())
        with zf.open(f"Downloads/bob/{NB}", "w") as fh:  # 30 MB of nothing, ~30 KB zipped
            fh.write(b'{"cells": [], "pad": "' + b" " * (30 << 20) + b'"}')
        zf.write(inner, "Downloads/carl.zip")
        link = zipfile.ZipInfo(f"Downloads/dave/{NB}")
        link.create_system, link.external_attr = 3, 0o120777 << 16
        zf.writestr(link, str(course / ".course_secret"))
        zf.writestr(f"Downloads/erin/{NB}", '{"cells": [], "x": ' + "[" * 100_000
                    + "]" * 100_000 + "}")
    logs["import"] = H.run_cli(course, "import", A1, str(archive)).stdout
    logs["grade"] = H.run_cli(course, "grade", A1, "--jobs", "2").stdout
    logs["feedback"] = H.run_cli(course, "feedback", A1).stdout
    return {"course": course, "logs": logs}


def _line(log: str, student: str) -> str:
    return next(ln for ln in log.splitlines() if ln.split()[:1] == [student])


def test_import_rejects_each_bad_student_and_takes_the_others(run: dict[str, Any]) -> None:
    log = run["logs"]["import"]
    assert _line(log, "alice").endswith("new") and _line(log, "zoe").endswith("new")
    assert "expands to" in _line(log, "bob")
    assert "BadZipFile" in _line(log, "carl")
    assert "symbolic link" in _line(log, "dave")
    assert "100001 levels deep" in _line(log, "erin")
    for s in ("bob", "carl", "dave", "erin"):
        assert "rejected" in _line(log, s)
    assert "imported 2 submission(s)" in log and "4 rejected" in log


def test_grade_and_feedback_go_on_for_everyone(run: dict[str, Any]) -> None:
    course, logs = run["course"], run["logs"]
    assert H.result_json(course, "alice", A1)["result"]["score"] == 45
    assert H.result_json(course, "zoe", A1)["result"]["status"] == "ok"  # the blank, graded
    for s in ("bob", "carl", "dave", "erin"):
        res = H.result_json(course, s, A1)["result"]
        assert (res["score"], res["status"]) == (0, "missing"), (s, res["status"])
    assert "45 / 45" in _line(logs["grade"], "alice")
    for s in ("alice", "zoe", "bob", "erin"):
        assert (course / "feedback" / s / A1 / "feedback.html").is_file()
    assert "0 error(s)" in logs["feedback"]


def test_autograded_copy_for_formgrader_has_no_script(run: dict[str, Any]) -> None:
    copy = run["course"] / "autograded" / "alice" / A1 / NB
    text = copy.read_text()
    assert "<script" not in text
    assert "alert('md')" in json.dumps(json.loads(text))  # the student's text, inert

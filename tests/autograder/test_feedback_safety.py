"""What students and the instructor's browser get: feedback pages and autograded/ copies.

- one crafted result never stops ``feedback`` for the students after it (an error line);
- a feedback page escapes everything from the student and shows no hidden seed, hidden test
  line or secret;
- a sanitised notebook (what ``grade`` puts in ``autograded/`` for formgrader) has no active
  content left, checked through nbconvert's own HTML exporter (what formgrader uses).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from autograder import cli, feedback, sanitize
from autograder.assignments import get
from autograder.grade import CheckResult, NotebookResult, PartResult

A1 = "a1_trap_and_emulate"
NB = "trap_and_emulate.ipynb"
REPO = Path(__file__).resolve().parents[2]
SECRET = "feedback-secret-0123456789abcdef"


def _result(student: str, message: str = "all cases passed", hidden_msg: str = "") -> dict:
    spec = get(A1)
    parts = []
    for p in spec.parts:
        checks = [CheckResult(c.name, 0.0, c.points, False,
                              hidden_msg if c.hidden and hidden_msg else message, c.hidden,
                              987654 if c.hidden else 3)
                  for c in p.checks]
        parts.append(PartResult(p.grade_id, 0.0, p.points, "ok", checks, ""))
    res = NotebookResult(student, A1, 0.0, spec.points, "ok", parts, "", 0.5)
    return {"format": "virtcore-result/1", "student": student, "assignment": A1,
            "submission_sha256": "x", "graded_at": "now", "result": res.to_json()}


@pytest.fixture
def course(tmp_path: Path) -> Path:
    c = tmp_path / "course"
    shutil.copytree(REPO / "course" / "source" / A1, c / "source" / A1)
    shutil.copy(REPO / "course" / "nbgrader_config.py", c / "nbgrader_config.py")
    (c / ".course_secret").write_text(SECRET + "\n")
    (c / ".course_secret").chmod(0o600)
    return c


def _put(course: Path, student: str, data: dict | str) -> None:
    d = course / "autograded" / student / A1
    d.mkdir(parents=True, exist_ok=True)
    (d / "virtcore-result.json").write_text(data if isinstance(data, str) else json.dumps(data))


def test_one_crafted_result_never_stops_feedback(course: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("VIRTCORE_COURSE_SECRET", raising=False)
    hidden = sorted(cli.hidden_test_lines(course / "source" / A1 / NB))
    assert hidden
    # the student's exception message quotes a line of the hidden tests: the page must not
    # be written — but only for that student
    _put(course, "alice", _result("alice"))
    _put(course, "bmallory", _result("bmallory", message=f"RuntimeError: {hidden[-1]}"))
    _put(course, "cgarbage", "{not json")
    _put(course, "dsecret", _result("dsecret", message=f"leak {SECRET}"))
    _put(course, "zed", _result("zed"))
    assert cli.main(["feedback", A1, "--course", str(course)]) == 1  # cgarbage's error
    out = capsys.readouterr().out
    fb = course / "feedback"
    for s in ("alice", "bmallory", "dsecret", "zed"):
        assert (fb / s / A1 / "feedback.html").is_file(), out
    assert not (fb / "cgarbage" / A1 / "feedback.html").exists()
    assert "cgarbage" in out and "ERROR" in out and "unreadable" in out
    for s in ("bmallory", "dsecret"):  # their page: the scores, the quoting message withheld
        assert f"{s}" in out and "NOTE" in out
        page = feedback.page_text((fb / s / A1 / "feedback.html").read_text())
        assert feedback.WITHHELD in page and "Score: 0 / 45" in page
        assert hidden[-1] not in page and SECRET not in page
    assert "wrote 4 page(s)" in out and "1 error(s)" in out


def test_feedback_page_escapes_the_student_and_hides_hidden_seeds(course: Path) -> None:
    data = _result("eve", message="<script>alert('visible')</script>",
                   hidden_msg="case 'io-3' (seed=987654): <img src=x onerror=alert(1)>")
    _put(course, "eve", data)
    report = feedback.write_all(course, get(A1), [], SECRET)
    assert report.written == ["eve"] and not report.errors
    page = (course / "feedback" / "eve" / A1 / "feedback.html").read_text()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "onerror" in page  # shown as text
    assert "987654" not in page and "seed=hidden" in page
    assert "Content-Security-Policy" in page
    view = feedback.student_view(NotebookResult.from_json(data["result"]))
    assert all(c.seed is None for p in view.parts for c in p.checks if c.hidden)
    assert any(c.seed == 3 for p in view.parts for c in p.checks if not c.hidden)


def test_exchange_extras_are_never_read_through_a_symlink(course: Path) -> None:
    _put(course, "kim", _result("kim"))
    sub = course / "submitted" / "kim" / A1
    sub.mkdir(parents=True)
    (sub / "submission_secret.txt").symlink_to(course / ".course_secret")
    report = feedback.write_all(course, get(A1), [], SECRET)
    assert report.written == ["kim"]
    out = course / "feedback" / "kim" / A1
    assert not (out / "submission_secret.txt").exists()
    assert SECRET not in "".join(p.read_text() for p in out.iterdir())


# -- sanitised notebooks ---------------------------------------------------------------------------


SVG = ('<svg xmlns="http://www.w3.org/2000/svg"><script>alert("svg")</script></svg>')
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJ"
       "RU5ErkJggg==")


def hostile_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    md = nbformat.v4.new_markdown_cell(
        "My answer <script>alert('md')</script> <img src=x onerror=alert('img')>\n\n"
        "[click](javascript:alert('link')) <iframe src=\"https://evil\"></iframe>\n"
        "&lt;script&gt;alert('entity')&lt;/script&gt; ![ok](attachment:a.png)")
    md.attachments = {"a.png": {"image/png": PNG}, "b.svg": {"image/svg+xml": SVG},
                      "c.html": {"text/html": "<script>alert('att')</script>"}}
    raw = nbformat.v4.new_raw_cell("<script>alert('raw')</script>")
    raw.metadata["raw_mimetype"] = "text/html"
    code = nbformat.v4.new_code_cell("x = 1")
    code.metadata["nbgrader"] = {"grade_id": "\"><script>alert('gid')</script>",
                                 "solution": True}
    code.outputs = [
        nbformat.v4.new_output("display_data", data={
            "text/html": "<script>alert('html')</script>",
            "application/javascript": "alert('js')",
            "image/svg+xml": SVG,
            "application/vnd.jupyter.widget-view+json": {"model_id": "m", "version_major": 2,
                                                         "version_minor": 0},
            "text/markdown": "<script>alert('mdout')</script>",
            "image/png": PNG,
            "text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", name="stdout", text="<script>alert('stream')</script>"),
        nbformat.v4.new_output("error", ename="E", evalue="<script>alert('err')</script>",
                               traceback=["<script>alert('tb')</script>"]),
    ]
    nb.cells = [md, raw, code]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def _render(nb: dict) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="classic").from_notebook_node(
        nbformat.reads(json.dumps(nb), as_version=4))
    return str(body)


def test_sanitised_copy_renders_without_any_active_content(tmp_path: Path) -> None:
    src = tmp_path / "in.ipynb"
    nbformat.write(hostile_notebook(), str(src))
    raw_html = _render(json.loads(src.read_text()))
    assert "<script>alert('md')" in raw_html  # nbconvert alone passes it through (control)
    dst = tmp_path / "autograded" / "alice" / A1 / NB
    sanitize.sanitize_notebook_file(src, dst)
    clean = json.loads(dst.read_text())
    assert sanitize.is_active(clean) == []
    nbformat.validate(nbformat.from_dict(clean))
    html = _render(clean)
    page = _render(sanitize.sanitize_notebook({"cells": []}))  # the template's own scripts
    for bad in (r"<script", r"<img[^>]*onerror", r"<iframe", r"javascript:", r"<svg",
                r"alert\('js'\)", r"widget-view", r"alert\('gid'\)"):
        assert len(re.findall(bad, html)) == len(re.findall(bad, page)), bad
    assert raw_html.count("<script") > page.count("<script")
    # what the student wrote is still there to read
    assert "My answer" in html and "script&gt;alert(" in html
    assert "x = 1" in feedback.page_text(html) and PNG[:40] in html  # code, plain images stay
    assert list(clean["cells"][0]["attachments"]) == ["a.png"]
    assert "raw_mimetype" not in clean["cells"][1]["metadata"]
    assert "nbgrader" not in clean["cells"][2]["metadata"]


def test_sanitised_copy_never_follows_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text('{"cells": [{"cell_type": "markdown", "source": "SECRET"}]}')
    link = tmp_path / "nb.ipynb"
    link.symlink_to(secret)
    dst = tmp_path / "out.ipynb"
    sanitize.sanitize_notebook_file(link, dst)
    assert "SECRET" not in dst.read_text()
    assert "not a readable notebook" in dst.read_text()
    sanitize.sanitize_notebook_file("/dev/zero", dst)  # never read
    assert "not a readable notebook" in dst.read_text()

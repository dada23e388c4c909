"""The similarity report flags copies, not independent work.

An exact copy and a copy with every name changed (plus new comments and layout) are
flagged, against another student and against the reference; two independent correct
solutions (the test suite's ``*_correct.py`` and the course's reference) are not.  The
report runs through ``python -m autograder report`` and writes its CSV and heat map.
"""

from __future__ import annotations

import io
import json
import keyword
import shutil
import struct
import tokenize
from pathlib import Path

import nbformat
import pytest

from autograder import cli, similarity
from autograder.assignments import get

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = Path(__file__).resolve().parent / "solutions"
SHORT = {"a1_trap_and_emulate": "a1", "a2_credit_scheduler": "a2", "a3_userspace_vmm": "a3"}


def cells_of(name: str) -> dict[str, str]:
    """The ``# %% <grade_id>`` blocks of a solution file (student code: read, never run)."""
    import re

    parts = re.split(r"^# %% (\w+)\n", (SOLUTIONS / name).read_text(), flags=re.M)
    return {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts), 2)}


def renamed(code: str) -> str:
    """Every local name changed consistently, comments added, layout changed."""
    import builtins

    out = []
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        text = tok.string
        if tok.type == tokenize.NAME and not keyword.iskeyword(text) and \
                text not in dir(builtins) and (not out or out[-1][1] != "."):
            text = "my_" + text[::-1]
        if tok.type == tokenize.COMMENT:
            text = "# (my own words)"
        out.append((tok.type, text))
    return "# copied, honestly\n" + tokenize.untokenize(out).replace("\n", "\n\n", 3)


@pytest.mark.parametrize("assignment", sorted(SHORT))
def test_copies_are_flagged_independent_solutions_are_not(assignment: str) -> None:
    spec = get(assignment)
    _, reference, _, _ = similarity.answers_of(REPO / "course", spec)
    mine = cells_of(f"{SHORT[assignment]}_correct.py")
    answers = {
        "ind": {p: mine[p] for p in reference},  # an independent correct solution
        "exact": {p: mine[p] for p in reference},  # a copy of ind's
        "renamed": {p: renamed(mine[p]) for p in reference},  # ind's, every name changed
        "refcopy": {p: renamed(reference[p]) for p in reference},  # the reference, renamed
    }
    pairs = similarity.compare(answers, reference)
    flagged = {(p.part, p.a, p.b) for p in pairs if p.flagged}
    score = {(p.part, p.a, p.b): p.score for p in pairs}
    for part in reference:
        assert (part, "exact", "ind") in flagged
        assert score[(part, "exact", "ind")] == 1.0
        assert (part, "ind", "renamed") in flagged, (part, score.get((part, "ind", "renamed")))
        assert (part, "refcopy", similarity.REFERENCE) in flagged
        # independent work is not flagged, and is far below the threshold — except where the
        # answer is forced: a1's design part is three branches (privileged → trap, sensitive
        # → translate, else direct) that every correct solution writes alike
        assert (part, "ind", similarity.REFERENCE) not in flagged
        margin = similarity.THRESHOLD if len(similarity.normalize(reference[part])) < 30 else 0.5
        assert score.get((part, "ind", similarity.REFERENCE), 0.0) < margin
        assert score.get((part, "ind", "refcopy"), 0.0) < margin


def test_normalisation_ignores_names_comments_and_layout() -> None:
    a = "def f(xs):\n    t = 0  # sum\n    for x in xs:\n        t += x\n    return t\n"
    b = "def g(values):\n\n    acc = 0\n    for v in values:   # loop\n        acc += v\n" \
        "    return acc\n"
    assert similarity.normalize(a) == similarity.normalize(b)
    assert similarity.normalize("vcpu.pc += 4") != similarity.normalize("vcpu.sp += 4")
    assert similarity.normalize("def (") == ["def", "("]  # untokenisable: its words


def _course(tmp: Path, assignment: str, students: dict[str, dict[str, str] | str]) -> Path:
    course = tmp / "course"
    shutil.copytree(REPO / "course" / "source" / assignment, course / "source" / assignment)
    spec = get(assignment)
    src = nbformat.read(str(course / "source" / assignment / spec.notebook), as_version=4)
    for student, code in students.items():
        path = course / "submitted" / student / assignment / spec.notebook
        path.parent.mkdir(parents=True)
        if isinstance(code, str):
            path.write_text(code)
            continue
        nb = nbformat.from_dict(json.loads(nbformat.writes(src)))
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.metadata.get("nbgrader", {}).get("solution") and gid in code:
                cell.source = code[gid]
        nbformat.write(nb, str(path))
    return course


def test_report_command_writes_the_table_csv_and_heat_map(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = "a1_trap_and_emulate"
    mine = cells_of("a1_correct.py")
    _, reference, _, _ = similarity.answers_of(REPO / "course", get(a))
    stub = dict.fromkeys(reference, "# YOUR CODE HERE\nraise NotImplementedError()")
    course = _course(tmp_path, a, {
        "alice": mine, "bob": dict(mine), "carl": {p: renamed(c) for p, c in mine.items()},
        "dana": {p: renamed(reference[p]) for p in reference}, "erin": stub,
        "frank": '{"cells": [' * 3})
    out = tmp_path / "reports"
    assert cli.main(["report", a, "--course", str(course), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not an automatic penalty" in text
    assert "no grading results" in text  # the score plots need `grade`; similarity does not
    assert "frank: not compared" in text
    rows = (out / f"{a}-similarity.csv").read_text().splitlines()
    assert rows[0] == "part,student,other,similarity,flagged"
    flagged = {tuple(r.split(",")[1:3]) for r in rows[1:] if r.endswith(",yes")}
    assert {("alice", "bob"), ("alice", "carl"), ("bob", "carl"),
            ("dana", similarity.REFERENCE)} == flagged
    assert not any("erin" in r for r in rows)  # the stub is too short to compare
    data = (out / f"{a}-similarity.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24])[0] >= 300

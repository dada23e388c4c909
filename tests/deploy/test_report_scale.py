"""The instructor's view of a class of 500: ``autograder.stats`` on a synthetic, seeded class.

The class is generated from the real a1 spec (every part and check) with one seeded generator:
each check has its own pass probability, grading times are log-normal around 2 s, and a few
submissions are made to stand out — three that ran into the timeout, two crashed parts, one
integrity flag, four blank notebooks.  The expected failure rates, quantiles and outliers are
counted here directly from the generated data, independently of the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from autograder import assignments
from autograder.grade import CheckResult, NotebookResult, PartResult
from autograder.stats import class_stats, plot_times, report_text
from virtcore.rng import make_rng

A1 = "a1_trap_and_emulate"
N = 500
SLOW = {"s0042", "s0117", "s0333"}
CRASHED = {"s0007", "s0250"}
INTEGRITY = {"s0404"}
BLANK = {"s0100", "s0200", "s0300", "s0400"}


def synthetic_class(seed: int = 0) -> tuple[Any, list[NotebookResult], dict[str, float]]:
    spec = assignments.get(A1)
    rng = make_rng(seed)
    p_pass = {c.name: 0.55 + 0.4 * rng.random() for p in spec.parts for c in p.checks}
    results = []
    for i in range(N):
        sid = f"s{i:04d}"
        parts = []
        for part in spec.parts:
            status = "ok"
            if sid in BLANK:
                status = "not implemented"
            elif sid in CRASHED and part is spec.parts[0]:
                status = "crashed"
            elif sid in INTEGRITY and part is spec.parts[-1]:
                status = "integrity"
            checks = []
            for c in part.checks:
                ok = status == "ok" and rng.random() < p_pass[c.name]
                checks.append(CheckResult(c.name, c.points if ok else 0.0, c.points, ok, "",
                                          c.hidden))
            score = sum(ch.points for ch in checks)
            parts.append(PartResult(part.grade_id, score, part.points, status, checks))
        seconds = 60.0 + rng.random() if sid in SLOW else math.exp(rng.gauss(math.log(2.0), 0.15))
        total = sum(p.score for p in parts)
        results.append(NotebookResult(sid, A1, total, spec.points, "ok", parts, "", seconds))
    return spec, results, p_pass


@pytest.fixture(scope="module")
def cls() -> tuple[Any, list[NotebookResult], dict[str, float]]:
    return synthetic_class()


def test_failure_rate_per_check(cls: tuple[Any, list[NotebookResult], Any]) -> None:
    spec, results, p_pass = cls
    st = class_stats(spec, results)
    assert st.n == N and len(st.checks) == sum(len(p.checks) for p in spec.parts)
    for c in st.checks:
        failed = sum(1 for r in results
                     if not next(ch for p in r.parts for ch in p.checks if ch.name == c.check)
                     .passed)
        assert (c.failed, c.seen) == (failed, N)
        # and near the probability the class was generated with (500 draws: ±0.1 is > 4 σ)
        assert abs(c.rate - (1 - p_pass[c.check])) < 0.1


def test_scores_and_times(cls: tuple[Any, list[NotebookResult], Any]) -> None:
    spec, results, _ = cls
    st = class_stats(spec, results)
    scores = sorted(r.score for r in results)
    assert st.median == pytest.approx((scores[N // 2 - 1] + scores[N // 2]) / 2)
    assert st.mean == pytest.approx(sum(scores) / N)
    assert sum(c for _, _, c in st.histogram()) == N
    assert st.histogram()[0][2] >= len(BLANK)  # the blanks are in the lowest bin
    assert st.time_quantile(0.5) == pytest.approx(2.0, rel=0.1)
    assert max(st.seconds) > 60 and st.time_quantile(0.99) < 60  # 3 of 500 are above p99


def test_outliers_are_the_planted_ones(cls: tuple[Any, list[NotebookResult], Any]) -> None:
    spec, results, _ = cls
    st = class_stats(spec, results)
    by_kind: dict[str, set[str]] = {}
    for o in st.outliers:
        by_kind.setdefault(o.kind, set()).add(o.student)
    assert by_kind["slow"] == SLOW
    assert by_kind["fault"] == CRASHED | INTEGRITY
    assert by_kind.get("score", set()) >= BLANK


def test_report_text_and_plot(cls: tuple[Any, list[NotebookResult], Any],
                              tmp_path: Path) -> None:
    spec, results, _ = cls
    st = class_stats(spec, results)
    text = report_text(st)
    assert f"{A1}: {N} graded submission(s)" in text
    worst = max(st.checks, key=lambda c: c.rate)
    assert f"{worst.part}/{worst.check}" in text.split("checks failed most often")[1]
    for sid in SLOW | CRASHED | INTEGRITY:
        assert sid in text
    png = plot_times(st, tmp_path / "times.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_round_trip_through_json(cls: tuple[Any, list[NotebookResult], Any]) -> None:
    """What ``report`` reads from the cache gives the same statistics."""
    spec, results, _ = cls
    again = [NotebookResult.from_json(json.loads(json.dumps(r.to_json()))) for r in results]
    a, b = class_stats(spec, results), class_stats(spec, again)
    assert [c.failed for c in a.checks] == [c.failed for c in b.checks]
    assert a.outliers == b.outliers


def test_report_command_on_500(cls: tuple[Any, list[NotebookResult], Any],
                               tmp_path: Path) -> None:
    """``python -m autograder report`` reads 500 cached results and writes the class report."""
    import os
    import shutil
    import subprocess
    import sys

    spec, results, _ = cls
    repo = Path(__file__).resolve().parents[2]
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy(repo / "course" / "nbgrader_config.py", course)
    shutil.copytree(repo / "course" / "source", course / "source")
    for r in results:
        d = course / "autograded" / r.student / A1
        d.mkdir(parents=True)
        (d / "virtcore-result.json").write_text(json.dumps(
            {"format": "virtcore-result/1", "student": r.student, "assignment": A1,
             "submission_sha256": "0" * 64, "result": r.to_json()}))
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONWARNINGS": "ignore",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "autograder", "report", A1, "--course",
                           str(course), "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=repo, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (out / f"{A1}-report.txt").read_text()
    assert text == report_text(class_stats(spec, results))
    assert f"{N} graded submission(s)" in proc.stdout
    for png in (f"{A1}-scores.png", f"{A1}-checks.png", f"{A1}-times.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

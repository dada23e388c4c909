"""Grading a class on dask.distributed vs local ``grade --jobs 2`` (same submissions, same run).

A simulated class of ``N`` submissions of assignment 1 (trap-and-emulate): a third solved, a
third blank (the released notebook), a third half-solved, under distinct student ids, in one
course directory.  ``python -m autograder grade`` grades the whole class three times, each time
from scratch (``--force``), with the same grading code (sandboxed worker per part):

- **local**: ``--jobs 2`` (the process pool; the baseline);
- **dask, 1 worker**: ``--cluster local:1`` (a TLS LocalCluster with one single-threaded worker);
- **dask, 2 workers**: ``--cluster local:2``.

Then the per-task overhead of the cluster itself: ``M`` tasks that each run a trivial
subprocess (what a grading task does, minus the grading) on a 1-worker TLS cluster, against the
same calls made directly in this process.  From it and the measured grading time per
submission, a paper estimate for ``k`` machines of ``c`` cores:
``throughput(k) ≈ 1 / max(o_sched, (t_grade + o_task) / (k·c))``, ``o_sched`` being the
scheduler's own cost per task (measured as the no-op task rate with 2 workers).

500 full gradings take ~20–40 min on this 2-core machine; the timed run uses
``N = $VIRTCORE_BENCH_CLASS`` (default 24) and the 500 figures are extrapolated (linear in N:
every submission is an independent task).  Needs the repository's ``.venv`` with the ``hub``
extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks._util import Row

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "a1_trap_and_emulate"
NOTEBOOK = "trap_and_emulate.ipynb"
CLASS = 500


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONWARNINGS"] = "ignore"
    for k in ("VIRTCORE_GRADEBOOK_URL", "VIRTCORE_COURSE_SECRET", "VIRTCORE_DASK_TLS"):
        env.pop(k, None)
    return env


def _run(args: list[str], cwd: Path = REPO) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False, timeout=3600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} failed:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    return seconds


def _class_course(root: Path, n: int) -> Path:
    """A course with ``n`` submissions: solved, blank, half-solved in turn."""
    from benchmarks.bench_grading import _solved

    course = root / "course"
    course.mkdir()
    shutil.copy(REPO / "course" / "nbgrader_config.py", course)
    shutil.copytree(REPO / "course" / "source", course / "source")
    secret = course / ".course_secret"
    secret.write_text("benchmark-secret\n")
    secret.chmod(0o600)
    _run([sys.executable, "-m", "autograder", "release", ASSIGNMENT, "--course", str(course)])
    release = course / "release" / ASSIGNMENT / NOTEBOOK
    solved = _solved(release, course / "source" / ASSIGNMENT / NOTEBOOK)
    blank = json.loads(release.read_text())
    half = json.loads(json.dumps(solved))
    answers = [c for c in half["cells"] if c.get("metadata", {}).get("nbgrader", {})
               .get("solution")]
    stubs = {c["metadata"]["nbgrader"]["grade_id"]: c["source"] for c in blank["cells"]
             if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    for c in answers[len(answers) // 2:]:
        c["source"] = stubs[c["metadata"]["nbgrader"]["grade_id"]]
    for i in range(n):
        d = course / "submitted" / f"student{i:03d}" / ASSIGNMENT
        d.mkdir(parents=True)
        (d / NOTEBOOK).write_text(json.dumps((solved, blank, half)[i % 3]))
    return course


def _grade(course: Path, *extra: str) -> float:
    return _run([sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--course",
                 str(course), "--force", *extra])


def _trivial_subprocess() -> int:
    return subprocess.run(["true"], check=False).returncode


def _overhead(m: int) -> tuple[float, float, float]:
    """Seconds per task: direct, on a 1-worker TLS cluster, and the 2-worker no-op rate."""
    from autograder.cluster import open_executor

    t0 = time.perf_counter()
    for _ in range(m):
        _trivial_subprocess()
    direct = (time.perf_counter() - t0) / m
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_executor("local:1") as ex:
            ex.submit(_trivial_subprocess).result()  # warm
            t0 = time.perf_counter()
            futs = [ex.submit(_trivial_subprocess) for _ in range(m)]
            for f in futs:
                f.result()
            one = (time.perf_counter() - t0) / m
        with open_executor("local:2") as ex:
            ex.submit(int).result()
            t0 = time.perf_counter()
            futs = [ex.submit(int, i) for i in range(m)]
            for f in futs:
                f.result()
            noop = (time.perf_counter() - t0) / m
    return direct, one, noop


def run() -> list[Row]:
    """Time local vs dask grading of the same class; per-task overhead; the N-machine estimate."""
    n = int(os.environ.get("VIRTCORE_BENCH_CLASS", "24"))
    with tempfile.TemporaryDirectory(prefix="virtcore-bench-cluster-") as tmp:
        course = _class_course(Path(tmp), n)
        t_local = _grade(course, "--jobs", "2")
        t_d1 = _grade(course, "--cluster", "local:1")
        t_d2 = _grade(course, "--cluster", "local:2")
        scores = sorted({json.loads(p.read_text())["result"]["score"]
                         for p in (course / "autograded").glob(f"*/{ASSIGNMENT}/*.json")})
        with contextlib.suppress(Exception):
            shutil.rmtree(course)
    direct, per_task, noop = _overhead(200)
    o_task = max(0.0, per_task - direct)
    t_grade = t_d1 / n  # one worker: seconds of grading per submission (plus its overhead)
    cores = 2
    est = {k: 1 / max(noop, t_grade / (k * cores)) for k in (1, 4, 16, 64)}
    rows = [
        Row(f"local grade --jobs 2, {n} submissions", t_local, "s",
            f"{n / t_local:.2f}/s; 500 would take ~{CLASS * t_local / n / 60:.1f} min"),
        Row(f"dask --cluster local:1, {n} submissions", t_d1, "s",
            f"{n / t_d1:.2f}/s; 500: ~{CLASS * t_d1 / n / 60:.1f} min"),
        Row(f"dask --cluster local:2, {n} submissions", t_d2, "s",
            f"{n / t_d2:.2f}/s; 500: ~{CLASS * t_d2 / n / 60:.1f} min"),
        Row("dask 2 workers / local --jobs 2 (throughput)", t_local / t_d2, "x",
            "same class, same grading code, same run"),
        Row("dask 2 workers / dask 1 worker (throughput)", t_d1 / t_d2, "x", "2 cores"),
        Row("scores seen (solved / half / blank)", len(scores), "kinds",
            " ".join(f"{s:g}" for s in scores)),
        Row("per-task overhead of the cluster (subprocess task)", 1000 * o_task, "ms",
            f"direct {1000 * direct:.1f} ms, on 1 TLS worker {1000 * per_task:.1f} ms"),
        Row("scheduler cost per no-op task (2 workers)", 1000 * noop, "ms",
            f"=> at most ~{1 / noop:.0f} tasks/s through one scheduler"),
    ]
    for k, thr in est.items():
        rows.append(Row(f"paper estimate: {k} machine(s) x {cores} cores", thr, "subm/s",
                        f"500 in ~{CLASS / thr / 60:.1f} min (grading {t_grade:.2f} s/subm)"))
    return rows

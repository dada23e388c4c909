"""Grading throughput: plain sequential ``nbgrader autograde`` vs ``python -m autograder grade``.

The same 20 submissions — copies of one correct notebook of assignment 1 (trap-and-emulate)
under 20 student ids — graded twice in one run, each time in a fresh copy of the course:

- **nbgrader autograde**: one ``nbgrader autograde a1_trap_and_emulate`` over the whole
  class, nbgrader's normal sequential way (one kernel per notebook, every cell of the
  notebook executed: the visible checks and the hidden tests of the test cells), with
  nbgrader's default configuration (:data:`PLAIN_NBGRADER_CONFIG`);
- **autograder grade**: ``python -m autograder grade a1_trap_and_emulate`` with the default
  ``--jobs`` (one grading process per core), which runs only the solution cells, each part in
  a bubblewrap sandbox of its own (the safe default: namespaces, no course files, an
  unprivileged user, the part's reference redacted) — a fresh child forked for each
  submission from the part's preloaded worker (``autograder/zygote.py``) — on the
  per-submission cases, validates and compares in the grader, and writes the gradebook;
- the same with ``VIRTCORE_ZYGOTE=0`` (a new sandbox and interpreter for every part), to show
  what the preloaded workers buy;
- ``nbgrader autograde`` with the course's real configuration, which routes it through this
  grader (``SafeGrade``: sandboxed, no kernel) — what formgrader's Autograde button does —
  sequential, for comparison.

Both timings are wall-clock seconds of the whole command, start-up included (nbgrader's and
ours each import nbgrader once, ~3 s).  Target: ours, sandbox on, ≥ 3× nbgrader's throughput
on a 2-core machine.  Also measured: what one sandbox costs to start (``bwrap`` + ``setpriv``
+ the interpreter running ``pass``) against the bare interpreter, median of 15.
The two do not run the same checks — that is the point: ours grades outside the student's
kernel, on hidden cases of its own; the figures compare what an instructor waits for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._util import Row

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "a1_trap_and_emulate"
NOTEBOOK = "trap_and_emulate.ipynb"
STUDENTS = 20


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env["PYTHONPATH"] = str(REPO)
    env.pop("VIRTCORE_GRADEBOOK_URL", None)
    env.pop("VIRTCORE_COURSE_SECRET", None)
    return env


def _run(args: list[str], cwd: Path, **env: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env={**_env(), **env}, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    return seconds


def _solved(release: Path, source: Path) -> dict[str, object]:
    """The released notebook with the source's solution code in its answer cells."""
    src = json.loads(source.read_text())
    answers = {}
    for cell in src["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            answers[meta["grade_id"]] = "\n".join(
                ln for ln in text.splitlines() if "SOLUTION" not in ln)
    nb = json.loads(release.read_text())
    for cell in nb["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell["source"] = answers[gid]
    return nb


#: nbgrader's own configuration for the baseline: the course's id, header and stubs, and
#: nbgrader's *default* autograde (``Execute``: the notebook run in a kernel).  The course's
#: real ``nbgrader_config.py`` routes ``nbgrader autograde`` through this grader
#: (``autograder.nbgrader_bridge.SafeGrade``), which would make the baseline our own grader.
PLAIN_NBGRADER_CONFIG = """\
c = get_config()
c.CourseDirectory.course_id = "virtcore"
c.IncludeHeaderFooter.header = "source/header.ipynb"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.Execute.timeout = 120
"""


def _course(root: Path, name: str, notebook: dict[str, object], *, plain: bool = False) -> Path:
    course = root / name
    course.mkdir()
    if plain:
        (course / "nbgrader_config.py").write_text(PLAIN_NBGRADER_CONFIG)
    else:
        shutil.copy(REPO / "course" / "nbgrader_config.py", course)
    shutil.copytree(REPO / "course" / "source", course / "source")
    secret = course / ".course_secret"
    secret.write_text("benchmark-secret\n")
    secret.chmod(0o600)
    for i in range(STUDENTS):
        d = course / "submitted" / f"student{i:02d}" / ASSIGNMENT
        d.mkdir(parents=True)
        (d / NOTEBOOK).write_text(json.dumps(notebook))
    return course


def _startup() -> tuple[float, float]:
    """Median wall seconds of ``python -I -S -c pass``, bare and inside a part's sandbox."""
    from autograder import sandbox

    py = os.path.realpath(sys.executable)
    bare = [py, "-I", "-S", "-c", "pass"]
    lib = Path(tempfile.mkdtemp(prefix="virtcore-bench-lib-"))
    lib.chmod(0o755)
    try:
        boxed = sandbox.bwrap_command(bare, lib)
        times: dict[str, list[float]] = {"bare": [], "boxed": []}
        for _ in range(15):
            for name, cmd in (("bare", bare), ("boxed", boxed)):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(lib, ignore_errors=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return med["bare"], med["boxed"]


def run() -> list[Row]:
    """Grade the same 20 submissions with nbgrader autograde and with our grade; time both."""
    with tempfile.TemporaryDirectory(prefix="virtcore-bench-") as tmp:
        root = Path(tmp)
        setup = root / "setup"
        setup.mkdir()
        (setup / "nbgrader_config.py").write_text(PLAIN_NBGRADER_CONFIG)
        shutil.copytree(REPO / "course" / "source", setup / "source")
        _run([sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT], setup)
        notebook = _solved(setup / "release" / ASSIGNMENT / NOTEBOOK,
                           setup / "source" / ASSIGNMENT / NOTEBOOK)

        nbg = _course(root, "nbgrader", notebook, plain=True)
        _run([sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT], nbg)
        t_nbgrader = _run([sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT], nbg)
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{nbg / 'gradebook.db'}") as gb:  # the baseline did the work
            nbg_scores = {gb.find_submission(ASSIGNMENT, f"student{i:02d}").score
                          for i in range(STUDENTS)}
        if nbg_scores != {45.0}:
            raise RuntimeError(f"nbgrader's own autograde did not give 45: {nbg_scores}")

        # nbgrader's autograde through this course's grader (its nbgrader_config.py: SafeGrade,
        # sandboxed, no kernel), as formgrader's Autograde button runs it: sequential
        bridged = _course(root, "bridged", notebook)
        _run([sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT], bridged)
        t_bridged = _run([sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT], bridged)

        ours = _course(root, "ours", notebook)
        _run([sys.executable, "-m", "autograder", "release", ASSIGNMENT, "--course",
              str(ours)], REPO)
        t_ours = _run([sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--course",
                       str(ours)], REPO)
        scores = [json.loads((ours / "autograded" / f"student{i:02d}" / ASSIGNMENT /
                              "virtcore-result.json").read_text())["result"]["score"]
                  for i in range(STUDENTS)]
        t_resume = _run([sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--course",
                         str(ours)], REPO)
        fresh = _course(root, "fresh", notebook)
        _run([sys.executable, "-m", "autograder", "release", ASSIGNMENT, "--course",
              str(fresh)], REPO)
        t_fresh = _run([sys.executable, "-m", "autograder", "grade", ASSIGNMENT, "--course",
                        str(fresh)], REPO, VIRTCORE_ZYGOTE="0")
    if set(scores) != {45.0}:
        raise RuntimeError(f"the correct submissions did not all score 45: {scores}")
    bare, boxed = _startup()
    cores = os.cpu_count() or 1
    per_nbg = t_nbgrader / STUDENTS
    per_ours = t_ours / STUDENTS
    return [
        Row("nbgrader autograde (sequential), per submission", per_nbg, "s",
            f"{STUDENTS} notebooks in {t_nbgrader:.1f} s"),
        Row(f"autograder grade (--jobs {cores}), per submission", per_ours, "s",
            f"{STUDENTS} notebooks in {t_ours:.1f} s"),
        Row("throughput ratio (ours, sandbox on / nbgrader's)", per_nbg / per_ours, "x",
            "target >= 3 on 2 cores"),
        Row("  nbgrader autograde through this grader (SafeGrade, sequential), per submission",
            t_bridged / STUDENTS, "s", f"ours is {t_bridged / t_ours:.2f} x faster"),
        Row("  without preloaded workers (VIRTCORE_ZYGOTE=0), per submission",
            t_fresh / STUDENTS, "s", f"ratio {per_nbg / (t_fresh / STUDENTS):.2f} x"),
        Row("python -c pass, bare", bare * 1000, "ms", "median of 15"),
        Row("python -c pass in a part's sandbox (bwrap)", boxed * 1000, "ms",
            f"+{(boxed - bare) * 1000:.0f} ms per part"),
        Row("autograder grade again (all cached: resumable)", t_resume, "s",
            "re-run skips graded work"),
    ]

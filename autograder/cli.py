"""The instructor's workflow, one command each: ``python -m autograder <command>``.

::

    python -m autograder init     [--students students.csv]      # course secret, gradebook, roster
    python -m autograder release  a1_trap_and_emulate            # student version (nbgrader)
    python -m autograder import   a1_trap_and_emulate <folder|zip|exchange>
    python -m autograder grade    a1_trap_and_emulate [--force] [--jobs N | --cluster ADDR]
    python -m autograder feedback a1_trap_and_emulate            # per-check HTML pages
    python -m autograder export   [--to grades.csv]              # CSV from the gradebook
    python -m autograder report   a1_trap_and_emulate [--out dir]  # plots, answer similarity

Every command takes ``--course DIR`` (default ``course``) and ``--db-url URL``
(default: the course's ``nbgrader_config.py``, i.e. ``course/gradebook.db`` or
``$VIRTCORE_GRADEBOOK_URL``).  See ``course/README.md`` for the workflow.

Where things are, in the course directory (nbgrader's layout)::

    source/<a>/<notebook>.ipynb                 the assignment with solutions and hidden tests
    release/<a>/<notebook>.ipynb                what students get (``release``)
    submitted/<student>/<a>/<notebook>.ipynb    what they handed in (``import``)
    autograded/<student>/<a>/virtcore-result.json   the grading result (``grade``; the cache)
    feedback/<student>/<a>/feedback.html        per-check messages (``feedback``)
    gradebook.db                                nbgrader's gradebook (scores and comments)
    .course_secret                              seeds the per-student cases (mode 600, never
                                                released, never in feedback)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import IO, Any

from autograder.gradebook import (
    CourseGradebook,
    GradebookError,
    check_spec_against_notebook,
    course_config,
    notebook_cells,
)
from autograder.importer import valid_student_id

__all__ = ["RESULT_FILE", "SECRET_FILE", "CLIError", "main"]

#: File name of the course secret inside the course directory.
SECRET_FILE = ".course_secret"
#: Environment variable that may hold the secret instead.
SECRET_ENV = "VIRTCORE_COURSE_SECRET"
#: File name of a cached grading result in ``autograded/<student>/<assignment>/``.
RESULT_FILE = "virtcore-result.json"
RESULT_FORMAT = "virtcore-result/1"
_HIDDEN_BEGIN = "BEGIN HIDDEN TESTS"
_HIDDEN_END = "END HIDDEN TESTS"


class CLIError(Exception):
    """A command cannot go on; the message says what to do (exit status 2)."""


# -- helpers --------------------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """The environment for nbgrader subprocesses: this Python's ``bin/`` first on PATH.

    nbgrader creates ``gradebook.db`` by running ``alembic`` by name; without the
    virtual environment's ``bin/`` on PATH the database is left half-initialised.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + os.pathsep + path
    env.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    return env


def run_nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``nbgrader <args>`` in the course directory; CLIError with its log on failure."""
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course,
                          env=tool_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise CLIError(f"nbgrader {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return proc


def load_secret(course: Path) -> bytes:
    """The course secret: ``$VIRTCORE_COURSE_SECRET`` or ``course/.course_secret``."""
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = course / SECRET_FILE
    if not path.is_file():
        raise CLIError(f"no course secret ({path} or ${SECRET_ENV}): run"
                       f" `python -m autograder init --course {course}` first")
    data = path.read_bytes().strip()
    if not data:
        raise CLIError(f"{path} is empty")
    return data


def get_spec(name: str) -> Any:
    """The :class:`~autograder.spec.AssignmentSpec` called ``name`` (CLIError if unknown)."""
    from autograder import assignments

    if name not in assignments.REGISTRY:
        known = ", ".join(sorted(assignments.REGISTRY))
        raise CLIError(f"unknown assignment {name!r}; the autograder knows: {known}")
    return assignments.get(name)


def source_notebook(course: Path, spec: Any) -> Path:
    """``course/source/<assignment>/<notebook>`` (CLIError if it is missing)."""
    path = course / "source" / spec.name / spec.notebook
    if not path.is_file():
        raise CLIError(f"the source notebook {path} is missing")
    return path


def result_path(course: Path, student: str, assignment: str) -> Path:
    """Where the grading result of one submission is cached."""
    return course / "autograded" / student / assignment / RESULT_FILE


def sha256_file(path: Path | None) -> str:
    """Hex SHA-256 of a file's bytes (``"missing"`` when there is no file)."""
    if path is None or not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def hidden_test_lines(notebook: Path) -> set[str]:
    """The source lines that exist only inside the hidden-test regions of ``notebook``.

    Non-trivial lines only (12 characters or more, not comments); a line that also appears
    outside the hidden regions (a visible check doing the same on other seeds) is public.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    hidden: set[str] = set()
    visible: set[str] = set()
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            s = line.strip()
            if _HIDDEN_BEGIN in line:
                inside = True
            elif _HIDDEN_END in line:
                inside = False
            else:
                (hidden if inside else visible).add(s)
    return {s for s in hidden - visible if len(s) >= 12 and not s.startswith("#")}


# -- progress -------------------------------------------------------------------------------------


class Progress:
    """A progress bar on a stream (stderr): redrawn in place on a terminal, a line each otherwise.

    >>> import io
    >>> s = io.StringIO(); p = Progress(2, s, "grade")
    >>> p.step("alice ok"); p.step("bob ok"); p.close()
    >>> s.getvalue().splitlines()[-1].startswith("grade [##############################] 2/2")
    True
    """

    def __init__(self, total: int, stream: IO[str] | None = None, label: str = "") -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if total and self.tty:
            self._draw("")

    def _line(self, note: str) -> str:
        width = 30
        filled = width * self.done // self.total if self.total else width
        elapsed = time.perf_counter() - self.t0
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {elapsed / self.done * (self.total - self.done):.0f}s"
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                f" {elapsed:.1f}s{eta}  {note}")

    def _draw(self, note: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self._line(note)[:160])
        else:
            self.stream.write(self._line(note) + "\n")
        self.stream.flush()

    def step(self, note: str = "") -> None:
        """One more item done."""
        self.done += 1
        self._draw(note)

    def close(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- init -----------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create the course secret (mode 600) if missing, the gradebook, and import the roster."""
    course: Path = args.course
    if not (course / "nbgrader_config.py").is_file():
        raise CLIError(f"{course} is not the course directory (no nbgrader_config.py)")
    path = course / SECRET_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
            print(f"secret: {path} existed with mode {mode:o}; now 600")
        else:
            print(f"secret: {path} exists (kept)")
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        os.chmod(path, 0o600)
        print(f"secret: created {path} (mode 600; keep it out of every release and repository)")
    for sub in ("source", "release", "submitted", "autograded", "feedback"):
        (course / sub).mkdir(exist_ok=True)
    students = args.students
    if students is None and (course / "students.csv").is_file():
        students = course / "students.csv"
    with CourseGradebook.for_course(course, args.db_url) as gb:
        print(f"gradebook: {gb.db_url}")
        if students is not None:
            n = gb.import_students(Path(students))
            print(f"students: imported {n} from {students}")
        print(f"students: {len(gb.student_ids())} in the gradebook")
    return 0


# -- release --------------------------------------------------------------------------------------


def check_release(course: Path, spec: Any, secret: bytes | None = None) -> list[str]:
    """Problems with ``release/<assignment>`` ([] when fine).

    No solution or hidden-test markers, every solution cell reduced to the
    stub, no line of a hidden test, no course secret in any released file.
    """
    import nbformat
    from nbgrader.utils import is_solution

    problems = []
    rel_dir = course / "release" / spec.name
    rel = rel_dir / spec.notebook
    if not rel.is_file():
        return [f"{rel} was not generated"]
    text = rel.read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", _HIDDEN_BEGIN, _HIDDEN_END):
        if marker in text:
            problems.append(f"{rel.name} still contains {marker!r}")
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        stubbed = "NotImplementedError" in cell.source
        if cell.cell_type == "code" and is_solution(cell) and not stubbed:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            problems.append(f"solution cell {gid!r} has no stub (raise NotImplementedError())")
    src_lines = hidden_test_lines(source_notebook(course, spec))
    released = "\n".join(cell.source for cell in nb.cells)
    leaked = [ln for ln in src_lines if ln in released]
    if leaked:
        problems.append(f"{len(leaked)} hidden test line(s) in the release, e.g. {leaked[0]!r}")
    for f in rel_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if secret and secret in data:
                problems.append(f"{f.name} contains the course secret")
            if f.name == SECRET_FILE:
                problems.append(f"{f} is a course secret file")
    return problems


def cmd_release(args: argparse.Namespace) -> int:
    """``nbgrader generate_assignment``, then check the release hides solutions and hidden tests."""
    course: Path = args.course
    spec = get_spec(args.assignment)
    src = source_notebook(course, spec)
    cells = notebook_cells(src)
    problems = check_spec_against_notebook(spec, cells)
    if problems:
        raise CLIError(f"{src} does not match the autograder's parts: " + "; ".join(problems))
    nbargs = ["generate_assignment", spec.name, "--force"]
    if args.db_url:
        nbargs.append(f"--CourseDirectory.db_url={args.db_url}")
    run_nbgrader(course, *nbargs)
    with CourseGradebook.for_course(course, args.db_url) as gb:
        gb.ensure_assignment(spec, src)
    secret = None
    with contextlib.suppress(CLIError):
        secret = load_secret(course)
    problems = check_release(course, spec, secret)
    if problems:
        raise CLIError("the release is not safe to hand out:\n  " + "\n  ".join(problems))
    if args.validate:
        proc = run_nbgrader(course, "validate", str(src))
        if "Success! Your notebook passes all the tests." not in proc.stdout:
            raise CLIError(f"nbgrader validate on the source:\n{proc.stdout[-3000:]}")
        proc = run_nbgrader(course, "validate", "--invert",
                            str(course / "release" / spec.name / spec.notebook))
        if "Success! The notebook does not pass any tests." not in proc.stdout:
            raise CLIError(f"nbgrader validate --invert on the release:\n{proc.stdout[-3000:]}")
        print("validate: the source passes every test cell, the release none")
    total = sum(p.points for p in spec.parts)
    print(f"released {spec.name}: {course / 'release' / spec.name / spec.notebook}"
          f" ({len(spec.parts)} graded parts, {total:g} points; no solutions, no hidden tests)")
    return 0


# -- import ---------------------------------------------------------------------------------------


def collect(course: Path, spec: Any, source: Path, *, regexp: str | None = None,
            course_id: str = "virtcore", **kwargs: Any) -> list[tuple[str, str]]:
    """:func:`autograder.importer.collect`, with a source it cannot use as a CLIError."""
    from autograder import importer

    try:
        return importer.collect(course, spec, source, regexp=regexp, course_id=course_id,
                                **kwargs)
    except importer.ImportSourceError as e:
        raise CLIError(str(e)) from None


def _roster(course: Path, db_url: str | None) -> list[str]:
    """The gradebook's student ids ([] when there is no gradebook yet)."""
    cfg_db = db_url or course_config(course).db_url
    if cfg_db.startswith("sqlite:///") and not Path(cfg_db[len("sqlite:///"):]).is_file():
        return []
    try:
        with CourseGradebook.for_course(course, db_url) as gb:
            return gb.student_ids()
    except Exception:  # an unreadable gradebook: the LMS names decide alone
        return []


def _uid_map(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return {r["student_id"].strip(): r["user"].strip() for r in csv.DictReader(fh)
                if r.get("student_id") and r.get("user")}


def cmd_import(args: argparse.Namespace) -> int:
    """Collect submissions (a folder, a zip of downloads, an nbgrader exchange) into submitted/.

    Nothing is followed or trusted (see ``autograder/importer.py``): symlinks and special
    files are refused, exchange submissions must be owned by their student, archives have
    size and ratio limits; each problem is one student's ``rejected`` line.  Students are
    added to the gradebook when their submission is graded.
    """
    course: Path = args.course
    spec = get_spec(args.assignment)
    outcomes = collect(course, spec, Path(args.source), regexp=args.regexp,
                       course_id=args.course_id, roster=_roster(course, args.db_url),
                       check_owner=not args.no_owner_check, uid_map=_uid_map(args.uid_map))
    for student, what in outcomes:
        print(f"  {student:<24} {what}")
    bad = ("skipped", "rejected", "WARNING")
    n_ok = sum(not w.startswith(bad) for _, w in outcomes)
    n_rej = sum(w.startswith("rejected") for _, w in outcomes)
    n_warn = sum(w.startswith("WARNING") for _, w in outcomes)
    print(f"imported {n_ok} submission(s) of {spec.name} from {args.source}"
          f" into {course / 'submitted'}; {n_rej} rejected,"
          f" {len(outcomes) - n_ok - n_rej - n_warn} skipped, {n_warn} warning(s)")
    return 0


# -- grade ----------------------------------------------------------------------------------------


def _pool_init(stages: dict[str, Any] | None = None) -> None:
    """In each grading process: die with the driver (``PR_SET_PDEATHSIG``), leave Ctrl-C to it,
    and use the sandbox library the driver staged (``stages``: see
    :func:`autograder.sandbox.prestage`).

    So killing ``grade`` (SIGTERM, SIGINT, SIGKILL) kills its pool, and each sandbox dies with
    its pool process (``bwrap --die-with-parent``): nothing is left running.
    """
    import ctypes
    import signal

    from autograder import sandbox

    sandbox.adopt_stages(stages)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the driver died before prctl: do not grade for nobody
        os._exit(1)


def _executor(args: argparse.Namespace, n: int) -> Any:
    """Where the grading tasks run: a local process pool of ``--jobs`` processes.

    Any :class:`concurrent.futures.Executor` does (``submit`` + ``as_completed``); every
    task is a picklable :class:`autograder.grade.GradeTask` run by the top-level function
    :func:`autograder.grade.grade_submission`.
    """
    if getattr(args, "cluster", None):  # dask.distributed workers instead (autograder.cluster)
        from autograder.cluster import ClusterError, cluster_executor

        try:
            return cluster_executor(args.cluster, tls_dir=args.cluster_tls)
        except ClusterError as e:
            raise CLIError(str(e)) from None
    jobs = max(1, args.jobs or os.cpu_count() or 1)
    ctx = multiprocessing.get_context(os.environ.get("VIRTCORE_POOL_START", "fork"))
    stages = None
    if getattr(args, "assignment", None):
        from autograder import sandbox

        with contextlib.suppress(Exception):  # staging fails again in the pool: a fault there
            stages = sandbox.prestage(get_spec(args.assignment).name)
    return ProcessPoolExecutor(max_workers=min(jobs, n), mp_context=ctx, initializer=_pool_init,
                               initargs=(stages,))


def _read_capped(path: Path | None) -> bytes | None:
    """The submitted notebook's bytes — at most one byte past the size cap (the grader then
    refuses it without reading a huge file)."""
    from autograder.grade import MAX_NOTEBOOK_BYTES

    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read(MAX_NOTEBOOK_BYTES + 1)


def _load_cached(path: Path, sha: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(data, dict) or data.get("format") != RESULT_FORMAT
            or data.get("submission_sha256") != sha or "result" not in data):
        return None
    return data


def _faults(result: Any) -> str:
    """``part: status`` for every part that did not run normally."""
    bad = [f"{p.grade_id}: {p.status}" for p in result.parts if p.status != "ok"]
    if result.status != "ok":
        bad.insert(0, f"notebook {result.status}" + (f" ({result.reason})" if result.reason
                                                     else ""))
    return "; ".join(bad)


def _record(gb: CourseGradebook, spec: Any, course: Path, result: Any) -> None:
    sub_dir = course / "submitted" / result.student / spec.name
    stamp = None
    if (sub_dir / "timestamp.txt").is_file():
        stamp = (sub_dir / "timestamp.txt").read_text().strip()
    gb.record(spec, result, timestamp=stamp)


def cmd_grade(args: argparse.Namespace) -> int:
    """Grade every submission of an assignment in parallel; resumable; scores to the gradebook."""
    from autograder.extract import read_preamble
    from autograder.grade import (
        GradeOutcome,
        GradeTask,
        NotebookResult,
        grade_submission,
        hidden_seed_key,
    )
    from autograder.sandbox import sandbox_problem

    course: Path = args.course
    spec = get_spec(args.assignment)
    src = source_notebook(course, spec)
    unsafe = bool(getattr(args, "unsafe_no_sandbox", False))
    if not unsafe:
        problem = sandbox_problem()
        if problem is not None:
            raise CLIError(f"no sandbox for the students' code: {problem}.  Grading refused;"
                           " install bubblewrap, or run with --unsafe-no-sandbox (student code"
                           " then runs without isolation: only on submissions you trust)")
    secret = load_secret(course)
    preamble = tuple(read_preamble(src))
    sub_root = course / "submitted"
    students = sorted(d.parent.name for d in sub_root.glob(f"*/{spec.name}") if d.is_dir()
                      and valid_student_id(d.parent.name)) if sub_root.is_dir() else []
    if args.student:
        students = [s for s in students if s in set(args.student)]
    outcome: dict[str, Any] = {}
    errors: dict[str, str] = {}
    notes: list[str] = []
    retried = 0
    todo: list[tuple[str, Path | None, str]] = []
    cached_results: list[NotebookResult] = []
    for s in students:
        nb = course / "submitted" / s / spec.name / spec.notebook
        path = nb if nb.is_file() and not nb.is_symlink() else None
        sha = sha256_file(path)
        cached = None if args.force else _load_cached(result_path(course, s, spec.name), sha)
        if cached is not None:
            res = NotebookResult.from_json(cached["result"])
            outcome[s] = res
            cached_results.append(res)
        else:
            todo.append((s, path, sha))
    if cached_results:
        print(f"{len(cached_results)} submission(s) already graded (cached results; --force"
              " regrades)", file=sys.stderr)
    # The pool starts grading before the gradebook is opened: opening it imports nbgrader
    # (seconds of CPU) while the pool's processes already use the other cores.
    pool = _executor(args, len(todo)) if todo else None
    futures: dict[Any, tuple[str, str]] = {}
    interrupted = False
    bar = Progress(len(todo), sys.stderr, f"grade {spec.name}")
    try:
        for s, path, sha in todo:
            assert pool is not None
            task = GradeTask(s, spec.name, _read_capped(path), preamble,
                             hidden_seed_key(secret, s, spec.name, sha), sha,
                             part_timeout=args.timeout,
                             budget_seconds=getattr(args, "budget", 300.0),
                             sandbox="none" if unsafe else "bwrap")
            futures[pool.submit(grade_submission, task)] = (s, sha)
        with CourseGradebook.for_course(course, args.db_url) as gb:
            gb.ensure_assignment(spec, src)
            roster = set(gb.student_ids())
            for res in cached_results:
                try:  # repairs a run interrupted between the cache and the gradebook
                    _record(gb, spec, course, res)
                except Exception as e:
                    errors[res.student] = (f"the gradebook write failed: {type(e).__name__}:"
                                           f" {e}")
            for fut in as_completed(futures):
                s, sha = futures[fut]
                try:
                    got: GradeOutcome = fut.result()
                    data = got.result
                    res = NotebookResult.from_json(data)
                except Exception as e:  # a grader bug or a broken pool: retry next run
                    errors[s] = f"not graded: {type(e).__name__}: {e}"
                    bar.step(f"{s}: grader error")
                    continue
                retried += got.retried
                if not got.cacheable:  # an infrastructure fault is not a grade
                    errors[s] = ("not graded: infrastructure fault after retries: "
                                 + "; ".join(got.faults)[:300])
                    bar.step(f"{s}: infrastructure fault")
                    continue
                wrapper = {"format": RESULT_FORMAT, "student": s, "assignment": spec.name,
                           "submission_sha256": sha,
                           "graded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                           "result": data}
                _atomic_write(result_path(course, s, spec.name),
                              json.dumps(wrapper, indent=1, sort_keys=True))
                _copy_for_formgrader(course, spec, s)
                outcome[s] = res
                try:
                    _record(gb, spec, course, res)
                except Exception as e:  # kept in the cache: the next run records it
                    errors[s] = (f"graded ({res.score:g}), but the gradebook write failed:"
                                 f" {type(e).__name__}: {e}")
                bar.step(f"{s} {res.score:g}/{res.max_score:g} {res.status}")
    except KeyboardInterrupt:
        interrupted = True
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
        if pool is not None and not interrupted:
            pool.shutdown(wait=True, cancel_futures=True)
    if retried:
        notes.append(f"{retried} worker run(s) were retried after an infrastructure fault or"
                     " a kill from outside (never cached as grades)")
    if unsafe:
        notes.append("WARNING: graded WITHOUT a sandbox (--unsafe-no-sandbox): the students'"
                     " code ran unconfined, with this user's rights")
    _print_summary(spec, outcome, errors, sorted(roster - set(students)) if not args.student
                   else [], notes)
    return 1 if errors else 0


def _copy_for_formgrader(course: Path, spec: Any, student: str) -> None:
    """Put a *sanitised* copy of the submitted notebook in ``autograded/`` for formgrader.

    formgrader renders it in the instructor's browser: no script, HTML, SVG or widget output
    may reach it (:func:`autograder.sanitize.sanitize_notebook_file`; never through a symlink).
    """
    from autograder.sanitize import sanitize_notebook_file

    src_dir = course / "submitted" / student / spec.name
    dst_dir = course / "autograded" / student / spec.name
    dst_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / spec.notebook
    if src.is_file() and not src.is_symlink():
        sanitize_notebook_file(src, dst_dir / spec.notebook)
    stamp = src_dir / "timestamp.txt"
    if stamp.is_file() and not stamp.is_symlink() and stamp.stat().st_size < 4096:
        _atomic_write(dst_dir / "timestamp.txt", stamp.read_text(errors="replace"))


def _print_summary(spec: Any, outcome: dict[str, Any], errors: dict[str, str],
                   absent: Sequence[str], notes: Sequence[str] = ()) -> None:
    total = sum(p.points for p in spec.parts)
    print(f"{spec.name}: {len(outcome)} graded, {len(errors)} error(s),"
          f" {len(absent)} on the roster without a submission")
    for note in notes:
        print(f"  {note}")
    for s in sorted(outcome):
        r = outcome[s]
        faults = _faults(r)
        print(f"  {s:<24} {r.score:6g} / {total:g}  {r.status:<8} {faults}")
    for s in sorted(errors):
        print(f"  {s:<24} ERROR: {errors[s]} (run grade again)")
    for s in absent:
        print(f"  {s:<24} no submission")


# -- feedback -------------------------------------------------------------------------------------


def _iter_results(course: Path, assignment: str) -> Iterator[tuple[str, Any]]:
    from autograder.grade import NotebookResult

    for path in sorted((course / "autograded").glob(f"*/{assignment}/{RESULT_FILE}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            yield path.parent.parent.name, NotebookResult.from_json(data["result"])
        except (OSError, ValueError, KeyError, TypeError):
            continue


def cmd_feedback(args: argparse.Namespace) -> int:
    """Write ``feedback/<student>/<assignment>/feedback.html`` from the grading results.

    Every page is escaped, shows no hidden test code, hidden seed or secret, and one
    student's failure is an error line, never the end of the run (``autograder/feedback.py``).
    """
    from autograder import feedback

    course: Path = args.course
    spec = get_spec(args.assignment)
    hidden = hidden_test_lines(source_notebook(course, spec))
    secret = None
    with contextlib.suppress(CLIError):
        secret = load_secret(course).decode(errors="replace")
    report = feedback.write_all(course, spec, hidden, secret)
    for student in sorted(report.notes):
        print(f"  {student:<24} NOTE: {report.notes[student]}")
    for student in sorted(report.errors):
        print(f"  {student:<24} ERROR: {report.errors[student]}")
    print(f"feedback: wrote {len(report.written)} page(s) to {course / 'feedback'}/<student>/"
          f"{spec.name}/; {len(report.errors)} error(s)")
    return 1 if report.errors else 0


# -- export ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Export the gradebook to CSV (one row per assignment and student, a column per part)."""
    with CourseGradebook.for_course(args.course, args.db_url) as gb:
        n = gb.export_csv(Path(args.to), args.assignment or ())
    print(f"export: {n} row(s) to {args.to}")
    return 0


# -- report ---------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """Plot the scores and per-check failure rates (PNG); report answer similarity (CSV, PNG).

    The similarity report (``autograder/similarity.py``) compares every answer cell with the
    other students' and with the reference solution; it is for the instructor's judgement,
    not an automatic penalty, and needs only the submissions.
    """
    from autograder import similarity

    course: Path = args.course
    spec = get_spec(args.assignment)
    out = Path(args.out) if args.out else course / "reports"
    _, lines = similarity.write_report(course, spec, out, threshold=args.similarity_threshold)
    print("\n".join(lines))
    results = [r for _, r in _iter_results(course, spec.name)]
    if not results:
        print(f"report: no grading results for {spec.name} yet: score plots skipped (run"
              " `grade` first)")
        return 0
    _score_plots(spec, results, out)
    from autograder import stats  # the class at scale: rates, times, outliers (text + PNG)

    st = stats.class_stats(spec, results)
    text = stats.report_text(st)
    _atomic_write(out / f"{spec.name}-report.txt", text)
    print(text + f"report: {out / f'{spec.name}-report.txt'}\nreport: "
          f"{stats.plot_times(st, out / f'{spec.name}-times.png')}")
    return 0


def _score_plots(spec: Any, results: list[Any], out: Path) -> None:
    """``<a>-scores.png`` and ``<a>-checks.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    total = sum(p.points for p in spec.parts)

    scores = [r.score for r in results]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = min(20, max(5, int(total)))
    ax.hist(scores, bins=bins, range=(0, total), color="#4477aa", edgecolor="white")
    mean = sum(scores) / len(scores)
    ax.axvline(mean, color="#cc3311", linestyle="--", label=f"mean {mean:.1f}")
    ax.set_xlabel(f"score (out of {total:g})")
    ax.set_ylabel("students")
    ax.set_title(f"{spec.name}: score distribution (n={len(scores)})")
    ax.legend()
    fig.tight_layout()
    hist_path = out / f"{spec.name}-scores.png"
    fig.savefig(hist_path, dpi=100)
    plt.close(fig)

    names: list[str] = []
    rates: list[float] = []
    hidden: list[bool] = []
    for part in spec.parts:
        for check in part.checks:
            seen = fails = 0
            for r in results:
                pr = next((p for p in r.parts if p.grade_id == part.grade_id), None)
                cr = next((c for c in pr.checks if c.name == check.name), None) if pr else None
                seen += 1
                if cr is None or not cr.passed:
                    fails += 1
            names.append(f"{part.grade_id}/{check.name}")
            rates.append(fails / seen if seen else 0.0)
            hidden.append(check.hidden)
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(4, len(names)) + 1.2))
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, [100 * x for x in rates], color=["#ee7733" if h else "#0077bb" for h in hidden])
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of submissions failing (orange: hidden checks, blue: visible)")
    ax.set_title(f"{spec.name}: failure rate per check")
    fig.tight_layout()
    checks_path = out / f"{spec.name}-checks.png"
    fig.savefig(checks_path, dpi=100)
    plt.close(fig)
    print(f"report: {hist_path}\nreport: {checks_path}")


# -- main -----------------------------------------------------------------------------------------


def _summary(fn: Any) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m autograder``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--course", type=Path, default=Path("course"),
                        help="the nbgrader course directory (default: %(default)s)")
    common.add_argument("--db-url", default=None,
                        help="gradebook SQLAlchemy URL (default: from nbgrader_config.py)")
    p = argparse.ArgumentParser(prog="python -m autograder",
                                description="virtcore's autograder: the instructor's workflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    s = sub.add_parser("init", parents=[common], help=_summary(cmd_init))
    s.add_argument("--students", type=Path, default=None,
                   help="CSV roster: id,first_name,last_name,email (default: course/students.csv)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("release", parents=[common], help=_summary(cmd_release))
    s.add_argument("assignment")
    s.add_argument("--validate", action="store_true",
                   help="also run `nbgrader validate` on the source and `--invert` on the release")
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("import", parents=[common], help=_summary(cmd_import))
    s.add_argument("assignment")
    s.add_argument("source", help="a folder of per-student folders, a .zip, or an exchange dir")
    s.add_argument("--regexp", default=None,
                   help="pattern for the LMS part of a flat download's name (before"
                        " _attempt_<timestamp>_), with (?P<student_id>...); used when the"
                        " roster and the assignment name do not decide")
    s.add_argument("--course-id", default="virtcore",
                   help="the course id in an nbgrader exchange (default: %(default)s)")
    s.add_argument("--uid-map", type=Path, default=None,
                   help="CSV student_id,user: the Unix user owning each student's exchange"
                        " submissions (default: the user named like the student id)")
    s.add_argument("--no-owner-check", action="store_true",
                   help="take exchange submissions whoever owns them (not recommended)")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("grade", parents=[common], help=_summary(cmd_grade))
    s.add_argument("assignment")
    s.add_argument("--force", action="store_true", help="regrade what is already graded")
    s.add_argument("--jobs", "-j", type=int, default=None,
                   help="parallel grading processes (default: the number of cores)")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="wall-clock limit per graded part, seconds (default: %(default)s)")
    s.add_argument("--student", action="append", default=None,
                   help="grade only this student (repeatable)")
    s.add_argument("--budget", type=float, default=300.0,
                   help="wall-clock budget per student, all parts (default: %(default)s s)")
    s.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade even without bubblewrap: student code runs UNCONFINED")
    s.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="grade on dask.distributed: tls://host:port (e.g. deploy/'s scheduler)"
                        " or local:N (a local cluster of N workers); never tcp://")
    s.add_argument("--cluster-tls", default=None, metavar="DIR",
                   help="the cluster's certificates: ca.pem, client.pem, client-key.pem"
                        " (default: $VIRTCORE_DASK_TLS)")
    s.set_defaults(func=cmd_grade)

    s = sub.add_parser("feedback", parents=[common], help=_summary(cmd_feedback))
    s.add_argument("assignment")
    s.set_defaults(func=cmd_feedback)

    s = sub.add_parser("export", parents=[common], help=_summary(cmd_export))
    s.add_argument("--to", default="grades.csv", help="CSV file (default: %(default)s)")
    s.add_argument("--assignment", action="append", default=None,
                   help="only this assignment (repeatable)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", parents=[common], help=_summary(cmd_report))
    s.add_argument("assignment")
    s.add_argument("--out", default=None, help="output folder (default: course/reports)")
    s.add_argument("--similarity-threshold", type=float, default=0.8,
                   help="flag answer pairs at least this similar, 0..1 (default: %(default)s;"
                        " for the instructor's judgement, not a penalty)")
    s.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.course = Path(args.course).resolve()
    # nbgrader's Gradebook runs `alembic` by name when it creates a database
    os.environ["PATH"] = tool_env()["PATH"]
    try:
        return int(args.func(args))
    except (CLIError, GradebookError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every result written so far is kept; run the command again"
              " to continue", file=sys.stderr)
        return 130

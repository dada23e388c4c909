"""Grade one submitted notebook: solution cells in a sandbox, scores in the grader.

:func:`grade_submission` (a :class:`GradeTask` of plain data in, a :class:`GradeOutcome` out;
picklable, for any executor) is the whole pipeline for one (student, assignment);
:func:`grade_notebook` is the same for a notebook file, in this process:

1. caps before parsing (:data:`MAX_NOTEBOOK_BYTES`, :data:`MAX_CELLS`), then the notebook is
   parsed and its solution cells scanned (:mod:`autograder.analysis`) in a bounded
   subprocess — a missing or corrupt notebook scores 0 with a reason; a flagged cell's part
   scores 0 (``"integrity"``) without running.  A cell flagged only for *using the
   reference* still runs when other parts are graded (the reference is not in the sandbox,
   so reaching it there fails too); a cell flagged for anything else never runs
   (:data:`RUN_FLAGGED`);
2. for each part: generate the cases of its checks here — visible checks from public seeds,
   hidden ones from the submission's key (:func:`hidden_seed_key`: secret, student,
   assignment, notebook hash) — and run **one sandbox per part**
   (:func:`autograder.sandbox.run_worker`), all parts within the student's time budget;
3. validate what came back against the worker's message grammar, and compare each trace with
   the reference computed here by the assignment module (``compare``): partial credit per
   check = its points × the fraction of cases passed; messages name the case and the first
   divergence (a hidden case without its seed: that goes to the instructor-only field).

Faults cost only the part they hit: a worker that crashes or times out while running *another*
part's cell makes that cell excluded (its part gets the crash) and the part is retried; one
that dies on this part's cell or cases gives this part 0 with the reason.  A sandbox that fails
before student code ran, or a worker killed from outside, is retried (:data:`RETRIES`); if the
fault persists the outcome is not a grade (``GradeOutcome.faults``).  Nothing the worker sends
is trusted beyond being data; the course secret is never in this process's tasks.

>>> r = NotebookResult("alice", "a9", 1.5, 3.0, "ok", [], "", 0.1)
>>> NotebookResult.from_json(r.to_json()) == r
True
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from autograder import assignments, extract, sandbox
from autograder.analysis import MAX_CELL_CHARS
from autograder.spec import AssignmentSpec, Check, GradingError, Part
from virtcore.rng import derive_seed

__all__ = [
    "PART_STATUSES",
    "PUBLIC_SEED_KEY",
    "RUN_FLAGGED",
    "CheckResult",
    "NotebookResult",
    "PartResult",
    "feedback_text",
    "grade_notebook",
    "normalize_secret",
    "run_visible",
]

#: Statuses of a part: ``"not implemented"`` means it scored 0 and every failure was a
#: NotImplementedError (the released stub).
PART_STATUSES = ("ok", "timeout", "crashed", "integrity", "missing", "error", "not implemented")
#: Integrity rules whose flagged cells still run when *other* parts are graded (the
#: reference is switched off in the worker, so using it is caught at run time there).  A cell
#: flagged by any other rule (patching, builtins, sys.modules, processes…) never runs.
RUN_FLAGGED = frozenset({"reference"})
#: First component of the public seeds (visible checks that draw seeds from ``seed_of``).
PUBLIC_SEED_KEY = "virtcore-public"
_MAX_MESSAGE = 1500


@dataclass
class CheckResult:
    """The outcome of one check: points earned of ``max_points``, a message, the failing seed.

    >>> CheckResult("io_public", 1.5, 3.0, False, "1/2 cases passed", False, 7).passed
    False
    """

    name: str
    points: float
    max_points: float
    passed: bool
    message: str
    hidden: bool
    seed: int | None = None
    #: For the instructor only (the report, never the feedback): the failing case's label,
    #: seed and the whole divergence.  A hidden check's ``message`` names neither seed nor case.
    instructor: str = ""


@dataclass
class PartResult:
    """The outcome of one part (one graded cell).  ``status`` is one of :data:`PART_STATUSES`."""

    grade_id: str
    score: float
    max_score: float
    status: str
    checks: list[CheckResult] = field(default_factory=list)
    reason: str = ""


@dataclass
class NotebookResult:
    """The outcome of one submitted notebook.

    ``status`` is ``"ok"`` (the notebook was read; see each part's status), ``"missing"`` or
    ``"corrupt"`` (every part 0, ``reason`` says why).  ``seconds``: wall time of the grading.
    """

    student: str
    assignment: str
    score: float
    max_score: float
    status: str
    parts: list[PartResult]
    reason: str
    seconds: float
    #: ``"bwrap"``, or ``"none"`` when graded with ``--unsafe-no-sandbox``.
    sandbox: str = "bwrap"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (:meth:`from_json` reads it back)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NotebookResult:
        """The result :meth:`to_json` wrote (unknown keys are ignored)."""
        parts = []
        for p in data.get("parts", []):
            checks = [CheckResult(**{k: c[k] for k in _fields(CheckResult) if k in c})
                      for c in p.get("checks", [])]
            parts.append(PartResult(**{**{k: p[k] for k in _fields(PartResult) if k in p},
                                       "checks": checks}))
        return cls(**{**{k: data[k] for k in _fields(cls) if k in data}, "parts": parts})

    def part(self, grade_id: str) -> PartResult:
        """The result of part ``grade_id``."""
        for p in self.parts:
            if p.grade_id == grade_id:
                return p
        raise KeyError(grade_id)


def _fields(cls: type) -> list[str]:
    return list(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def normalize_secret(secret: bytes | str) -> str:
    """The course secret as the string seeds are derived from.

    Bytes are decoded as UTF-8 (hex if they are not text); surrounding whitespace is dropped,
    so a secret read from a file with a trailing newline gives the same seeds.

    >>> normalize_secret(b"s3cret\\n") == normalize_secret("s3cret")
    True
    >>> normalize_secret("")
    Traceback (most recent call last):
    ...
    autograder.spec.GradingError: the course secret is empty
    """
    if isinstance(secret, bytes):
        try:
            text = secret.decode("utf-8")
        except UnicodeDecodeError:
            text = secret.hex()
    elif isinstance(secret, str):
        text = secret
    else:
        raise GradingError(f"the course secret must be bytes or str, not {type(secret).__name__}")
    text = text.strip()
    if not text:
        raise GradingError("the course secret is empty")
    return text


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _resolve(assignment: str | AssignmentSpec) -> tuple[AssignmentSpec, ModuleType]:
    name = assignment.name if isinstance(assignment, AssignmentSpec) else assignment
    spec = assignments.get(name)
    if isinstance(assignment, AssignmentSpec) and assignment != spec:
        spec = assignment  # a variant of a known assignment (e.g. other points): trust the caller
    return spec, assignments.module(name)


def _zero(part: Part, status: str, reason: str, message: str | None = None) -> PartResult:
    msg = message if message is not None else reason
    return PartResult(part.grade_id, 0.0, float(part.points), status,
                      [CheckResult(c.name, 0.0, float(c.points), False, msg, c.hidden, None)
                       for c in part.checks], reason)


def hidden_seed_key(secret: bytes | str, student: str, assignment: str, sha256: str) -> str:
    """The key a submission's hidden cases are drawn from: secret, student, assignment and the
    notebook's SHA-256 — so each submission gets fresh hidden cases (knowing one submission's
    cases helps nothing with the next), re-grading the same notebook gives the same ones, and
    the course secret itself never leaves the grading driver.

    >>> k = hidden_seed_key("s3cret", "alice", "a9", "ab" * 32)
    >>> k == hidden_seed_key("s3cret", "alice", "a9", "ab" * 32) != hidden_seed_key(
    ...     "s3cret", "alice", "a9", "cd" * 32)
    True
    """
    return f"{derive_seed(normalize_secret(secret), 'hidden', student, assignment, sha256):016x}"


def _seed_fn(seed_key: str, assignment: str, check: Check) -> Callable[[int], int]:
    if check.hidden:
        return lambda k: derive_seed(seed_key, check.name, k)
    return lambda k: derive_seed(PUBLIC_SEED_KEY, assignment, check.name, k)


def _case_name(case: dict[str, Any], *, with_seed: bool = True) -> str:
    label = str(case.get("label") or "case")
    seed = case.get("seed")
    if not with_seed:
        return label.split(" seed=")[0]
    if seed is not None and f"seed={seed}" not in label:
        label += f" (seed={seed})"
    return label


#: A submitted notebook larger than this is not parsed (status ``corrupt``).
MAX_NOTEBOOK_BYTES = 8 * 1024 * 1024
#: More cells than this (counted in the raw file, before parsing): ``corrupt``.
MAX_CELLS = 1000
#: Seconds a whole student (every part, every retry) may take, unless the task says otherwise.
STUDENT_BUDGET = 300.0
#: Infrastructure faults (and SIGKILLs from outside) retried per part before giving up.
RETRIES = 2
_ANALYSE = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]);"
            " from autograder.analysis import main; main()")


@dataclass(frozen=True)
class GradeTask:
    """Everything needed to grade one submission, as plain picklable data.

    What :func:`grade_submission` runs on a pool process — or a cluster worker: it holds no
    path of the course, no course secret (only :func:`hidden_seed_key`'s key), no handle.

    Parameters
    ----------
    student, assignment : str
    notebook : bytes or None
        The submitted ``.ipynb`` (None: nothing was handed in).
    preamble : tuple of str
        The source notebook's set-up cells (:func:`autograder.extract.read_preamble`).
    seed_key : str
        Where the hidden cases come from (:func:`hidden_seed_key`).
    sha256 : str
        The notebook's SHA-256 (the driver's cache key).
    part_timeout : float
        Wall-clock limit of one worker.
    budget_seconds : float
        The whole submission's wall-clock budget (all parts and retries).
    limits : sandbox.Limits or None
    sandbox : {"bwrap", "none"}
        ``"none"`` only with ``--unsafe-no-sandbox``.
    retries : int
        Runs retried per part after an infrastructure fault or a SIGKILL from outside.
    """

    student: str
    assignment: str
    notebook: bytes | None
    preamble: tuple[str, ...]
    seed_key: str
    sha256: str = ""
    part_timeout: float = 60.0
    budget_seconds: float = STUDENT_BUDGET
    limits: sandbox.Limits | None = None
    sandbox: str = "bwrap"
    retries: int = RETRIES


@dataclass
class GradeOutcome:
    """What :func:`grade_submission` returns: the result (JSON data) and what went wrong
    outside the student's control.

    ``faults`` lists infrastructure failures that outlived their retries: such an outcome is
    **not a grade** — the driver must not cache or record it (the next run grades it again).
    ``retried`` counts the runs that were retried.
    """

    result: dict[str, Any]
    faults: list[str] = field(default_factory=list)
    retried: int = 0

    @property
    def cacheable(self) -> bool:
        """Whether this is a grade (no unresolved infrastructure fault)."""
        return not self.faults


@dataclass
class _Notebook:
    spec: AssignmentSpec
    module: ModuleType
    task: GradeTask
    preamble: list[str]
    cells: list[extract.Cell]
    findings: dict[str, list[str]]
    never_run: set[str]
    deadline: float
    bad_cells: dict[str, tuple[str, str]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    retried: int = 0


def _analyse_bounded(raw: bytes, module: ModuleType, preamble: list[str],
                     timeout: float) -> dict[str, Any]:
    """:func:`autograder.analysis.analyse` in a subprocess with a memory and CPU limit and a
    wall timeout: a notebook built to be slow or huge to parse costs at most that, never the
    grader.

    In a single-threaded grading process (the local pool) the subprocess is a plain
    ``fork`` of it, which has the analyser imported already (a new interpreter costs
    ~0.1 s per submission); with threads around (a cluster worker) a new interpreter.
    """
    import json
    import resource
    import subprocess
    import sys
    import threading

    if hasattr(os, "fork") and threading.active_count() == 1:
        return _analyse_forked(raw, module, preamble, timeout)

    def limits() -> None:  # the pool processes run no threads: safe here
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        cpu = max(2, int(timeout))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    args = json.dumps({"forbidden": list(module.FORBIDDEN), "preamble": preamble})
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _ANALYSE,
             json.dumps([str(sandbox.REPO_ROOT), *(p for p in sys.path if p)]), args], input=raw,
            capture_output=True, timeout=timeout, preexec_fn=limits, check=False,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return {"error": f"corrupt: the notebook could not be read within {timeout:g} s"}
    if proc.returncode != 0:
        return {"error": "corrupt: the notebook could not be read within the grader's limits"
                         f" (exit status {proc.returncode})"}
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return {"error": "corrupt: the notebook could not be read"}
    return out if isinstance(out, dict) else {"error": "corrupt: the notebook could not be read"}


def _analyse_forked(raw: bytes, module: ModuleType, preamble: list[str],
                    timeout: float) -> dict[str, Any]:
    import json
    import resource
    import select
    import signal

    from autograder import analysis

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, analyse, one JSON document, exit
        code = 1
        try:
            os.close(rfd)
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
            cpu = max(2, int(timeout))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            out = json.dumps(analysis.analyse(raw, list(module.FORBIDDEN), preamble)).encode()
            view = memoryview(out)
            while view:
                view = view[os.write(wfd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    if timed_out:
        return {"error": f"corrupt: the notebook could not be read within {timeout:g} s"}
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        return {"error": "corrupt: the notebook could not be read within the grader's limits"
                         f" (exit status {code})"}
    try:
        out = json.loads(b"".join(chunks))
    except ValueError:
        return {"error": "corrupt: the notebook could not be read within the grader's limits"}
    return out if isinstance(out, dict) else {"error": "corrupt: the notebook could not be read"}


def grade_submission(task: GradeTask) -> GradeOutcome:
    """Grade one submission (a top-level, picklable function: run it in any executor).

    1. caps before parsing: size (:data:`MAX_NOTEBOOK_BYTES`), cell count (:data:`MAX_CELLS`);
    2. parse, take the solution cells and run the integrity scan in a bounded subprocess;
    3. each part in its own sandbox (:func:`autograder.sandbox.run_worker`), all within
       ``budget_seconds``; infrastructure faults and SIGKILLs from outside are retried
       (``retries``) and, if they persist, reported in ``faults`` rather than graded;
    4. scores computed here from the grader's own reference runs.

    Returns
    -------
    GradeOutcome
    """
    start = time.monotonic()
    spec, module = _resolve(task.assignment)
    max_score = float(spec.points)
    preamble = list(task.preamble)

    def whole(status: str, reason: str, why: str) -> GradeOutcome:
        parts = [_zero(p, "missing", why) for p in spec.parts]
        res = NotebookResult(task.student, spec.name, 0.0, max_score, status, parts, reason,
                             time.monotonic() - start, task.sandbox)
        return GradeOutcome(res.to_json())

    if task.sandbox not in ("bwrap", "none"):
        raise GradingError(f"sandbox must be 'bwrap' or 'none', not {task.sandbox!r}")
    if task.notebook is None:
        return whole("missing", "missing", "the notebook is missing")
    raw = task.notebook
    if len(raw) > MAX_NOTEBOOK_BYTES:
        reason = (f"corrupt: {len(raw)} bytes, more than a notebook may be"
                  f" ({MAX_NOTEBOOK_BYTES} bytes)")
        return whole("corrupt", reason, f"the notebook cannot be read ({reason})")
    ncells = raw.count(b'"cell_type"')
    if ncells > MAX_CELLS:
        reason = f"corrupt: {ncells} cells, more than a notebook may have ({MAX_CELLS})"
        return whole("corrupt", reason, f"the notebook cannot be read ({reason})")
    budget_end = start + max(1.0, task.budget_seconds)
    info = _analyse_bounded(raw, module, preamble,
                            max(5.0, min(60.0, budget_end - time.monotonic())))
    if "error" in info:
        reason = str(info["error"])
        return whole("corrupt", reason, f"the notebook cannot be read ({reason})")
    cells = [extract.Cell(str(c["grade_id"]), str(c["source"]), int(c["index"]))
             for c in info.get("cells", [])]
    findings = {str(k): [str(x[1]) for x in v] for k, v in info.get("findings", {}).items()}
    rules = {str(k): {str(x[0]) for x in v} for k, v in info.get("findings", {}).items()}
    never_run = {gid for gid, rs in rules.items() if rs - RUN_FLAGGED}
    nb = _Notebook(spec, module, task, preamble, cells, findings, never_run, budget_end)
    for gid in info.get("too_large", []):
        nb.bad_cells[str(gid)] = ("error", f"the cell {gid} is longer than"
                                           f" {MAX_CELL_CHARS} characters: not run")
    parts = [_grade_part(nb, p) for p in spec.parts]
    score = round(sum(p.score for p in parts), 6)
    faults = [f"{p.grade_id}: {p.status}" for p in parts if p.status != "ok"]
    res = NotebookResult(task.student, spec.name, score, max_score, "ok", parts,
                         "; ".join(faults), time.monotonic() - start, task.sandbox)
    return GradeOutcome(res.to_json(), nb.faults, nb.retried)


def grade_notebook(path: Path | str | None, assignment: str | AssignmentSpec, student: str,
                   secret: bytes | str, *, source_notebook: Path | str,
                   timeout: float = 60.0, limits: sandbox.Limits | None = None,
                   sandbox_mode: str = "bwrap", budget: float = STUDENT_BUDGET
                   ) -> NotebookResult:
    """Grade one student's notebook for ``assignment`` (:func:`grade_submission` in this process).

    Parameters
    ----------
    path : Path or None
        The submitted notebook (None or a missing file: status ``"missing"``).
    assignment : str or AssignmentSpec
        A name in :data:`autograder.assignments.REGISTRY`.
    student : str
        The student id (hidden cases derive from it).
    secret : bytes or str
        The course secret (see :func:`normalize_secret`); it only makes the hidden-case key
        (:func:`hidden_seed_key`), it goes no further.
    source_notebook : Path
        The instructor's source notebook: its preamble (set-up cells) is run before the
        student's cells.  Unreadable → :class:`~autograder.spec.GradingError`.
    timeout : float
        Wall-clock limit of each worker.
    limits : sandbox.Limits, optional
    sandbox_mode : {"bwrap", "none"}
    budget : float
        Wall-clock budget of the whole notebook.

    Returns
    -------
    NotebookResult
        Parts hit by an unresolved infrastructure fault have the status ``"error"`` and a
        reason starting with ``"not graded"``.
    """
    spec, _ = _resolve(assignment)
    preamble = extract.read_preamble(source_notebook)
    raw: bytes | None = None
    if path is not None and Path(path).is_file():
        raw = Path(path).read_bytes()
    import hashlib

    sha = hashlib.sha256(raw).hexdigest() if raw is not None else ""
    task = GradeTask(student, spec.name, raw, tuple(preamble),
                     hidden_seed_key(secret, student, spec.name, sha), sha, timeout, budget,
                     limits, sandbox_mode)
    return NotebookResult.from_json(grade_submission(task).result)


def _dying_cell(run: sandbox.WorkerRun) -> str | None:
    """The cell the worker was executing when it died (None if it got past the cells)."""
    current = None
    for m in run.messages:
        kind = m.get("type")
        if kind == "cell-start":
            current = m.get("grade_id")
        elif kind == "cell":
            current = None
        elif kind == "build":
            return None
    fatal = run.last("fatal")
    if fatal is not None and isinstance(fatal.get("grade_id"), str):
        return str(fatal["grade_id"])
    return current if isinstance(current, str) else None


def _dying_case(run: sandbox.WorkerRun) -> int | None:
    current = None
    for m in run.messages:
        if m.get("type") == "case-start":
            current = m.get("index")
        elif m.get("type") == "case":
            current = None
    return current if isinstance(current, int) else None


def _interactive(nb: _Notebook) -> bool:
    """Whether the assignment drives its parts through a serving worker (``INTERACTIVE``):
    the grader runs each case and asks the worker for the student's answers
    (``module.converse``), instead of receiving results of cases run in the sandbox."""
    return getattr(nb.module, "INTERACTIVE", False) is True


def _run_part(nb: _Notebook, task: dict[str, Any],
              converse: Callable[[sandbox.Channel], Any] | None = None
              ) -> sandbox.WorkerRun | None:
    """One worker run, retried after infrastructure faults and SIGKILLs from outside;
    None when the student's time budget is used up."""
    last: sandbox.WorkerRun | None = None
    for attempt in range(nb.task.retries + 1):
        left = nb.deadline - time.monotonic()
        if left < 1.0:
            return last if last is not None and last.outcome != "fault" else None
        if converse is None:
            run = sandbox.run_worker(task, timeout=min(nb.task.part_timeout, left),
                                     limits=nb.task.limits, sandbox=nb.task.sandbox)
        else:
            run = sandbox.run_worker(task, timeout=min(nb.task.part_timeout, left),
                                     limits=nb.task.limits, sandbox=nb.task.sandbox,
                                     converse=converse,
                                     reply_timeout=float(task["case_timeout"]) + float(
                                         getattr(nb.module, "REPLY_SLACK", 5.0)))
        if run.outcome == "timeout" and run.detail.startswith("still running") and (
                nb.deadline - time.monotonic() < 1.0 and left < nb.task.part_timeout):
            run.detail = (f"the time budget of the whole notebook"
                          f" ({nb.task.budget_seconds:g} s) was used up")
        killed = bool(run.extra.get("killed"))
        if run.outcome != "fault" and not killed:
            return run
        if attempt < nb.task.retries:
            nb.retried += 1
        last = run
    assert last is not None
    return last


def _grade_part(nb: _Notebook, part: Part) -> PartResult:
    gid = part.grade_id
    ids = [c.grade_id for c in nb.cells]
    if gid not in ids:
        return _zero(part, "missing", f"the solution cell {gid!r} is missing from the notebook")
    if gid in nb.findings:
        shown = "; ".join(nb.findings[gid][:3])
        return _zero(part, "integrity", f"integrity: {shown}")
    if gid in nb.bad_cells:
        return _zero(part, *nb.bad_cells[gid])
    plan: list[tuple[Check, dict[str, Any]]] = []
    for check in part.checks:
        seed_of = _seed_fn(nb.task.seed_key, nb.spec.name, check)
        plan += [(check, case) for case in nb.module.cases(part, check, seed_of)]
    harness = nb.module.sandbox_plan(gid)[1][0]
    interactive = _interactive(nb)
    for _attempt in range(len(nb.cells) + 1):
        run_cells = [{"grade_id": c.grade_id, "source": c.source} for c in nb.cells
                     if c.grade_id not in nb.bad_cells and c.grade_id not in nb.never_run]
        task = {"assignment": nb.spec.name, "part": gid, "harness": harness,
                "preamble": nb.preamble, "cells": run_cells, "cases": [c for _, c in plan],
                "case_timeout": float(getattr(nb.module, "CASE_TIMEOUT", 3.0)),
                "cell_timeout": float(getattr(nb.module, "CELL_TIMEOUT", 5.0))}
        converse = None
        if interactive:  # the grader runs the cases; the worker answers (none is sent)
            task.update(cases=[], serve=True)
            converse = functools.partial(nb.module.converse, cases=[c for _, c in plan])
        run = _run_part(nb, task, converse)
        if run is None:
            return _zero(part, "timeout", f"not run: the time budget of the whole notebook"
                                          f" ({nb.task.budget_seconds:g} s) was used up")
        if run.outcome == "fault":
            nb.faults.append(f"{gid}: {run.detail}")
            return _zero(part, "error", f"not graded: {run.detail} (an infrastructure fault;"
                                        " the next run grades it again)")
        if run.outcome == "ok":
            return _score(nb, part, plan, run)
        status = "timeout" if run.outcome == "timeout" else "crashed"
        detail = run.detail if run.outcome != "memory" else (
            f"ran out of memory ({run.detail}; the limit is"
            f" {(nb.task.limits or sandbox.Limits()).address_space_bytes >> 20} MiB)")
        dying = _dying_cell(run)
        if dying is not None and dying != gid and dying in ids:
            nb.bad_cells[dying] = (status, f"{status} while running the cell {dying}: {detail}")
            continue
        if dying == gid:
            reason = f"{status} while running the cell {gid}: {detail}"
            nb.bad_cells[gid] = (status, reason)
            return _zero(part, status, reason)
        k = _dying_case(run)
        if k is None and isinstance(run.extra.get("case"), int):
            k = int(run.extra["case"])  # the case a serving worker was answering
        fatal = run.last("fatal")
        if k is None and fatal is not None and isinstance(fatal.get("index"), int):
            k = int(fatal["index"])
        where = ""
        if k is not None and 0 <= k < len(plan):
            check, case = plan[k]
            where = f" on {_case_name(case, with_seed=not check.hidden)} of check {check.name}"
        return _zero(part, status, f"{status}{where}: {detail}")
    return _zero(part, "crashed", "the worker kept failing")  # pragma: no cover


def _error_type(msg: dict[str, Any]) -> str | None:
    if isinstance(msg.get("error_type"), str):
        return str(msg["error_type"])
    res = msg.get("result")
    if isinstance(res, dict) and isinstance(res.get("error"), dict):
        t = res["error"].get("type")
        return t if isinstance(t, str) else None
    return None


_CELL_STATUSES = frozenset({"ok", "error", "not implemented", "timeout", "integrity"})


def _malformed(run: sandbox.WorkerRun, cells: list[str], ncases: int) -> str | None:
    """Why the worker's messages are not exactly what a worker sends (None: they are).

    The worker's grammar is fixed: ``ready``, per cell ``cell-start`` then ``cell`` (in the
    order sent), ``build``, and when it built, per case ``case-start`` then ``case`` (indices
    0, 1, …), then ``done``.  Anything else — a line that is not JSON, a duplicate, a gap, a
    message after ``done`` — means something else wrote on the result channel.
    """
    if run.garbage_lines:
        return f"{run.garbage_lines} line(s) on the result channel were not the worker's"
    msgs = run.messages
    k = 0

    def take(kind: str) -> dict[str, Any] | None:
        nonlocal k
        if k < len(msgs) and msgs[k].get("type") == kind:
            k += 1
            return msgs[k - 1]
        return None

    if take("ready") is None:
        return "no ready message first"
    for gid in cells:
        start, cell = take("cell-start"), take("cell")
        if start is None or cell is None or start.get("grade_id") != gid or (
                cell.get("grade_id") != gid or cell.get("status") not in _CELL_STATUSES
                or not isinstance(cell.get("error", ""), str)):
            return f"the messages of the cell {gid} are out of order or malformed"
    build = take("build")
    if build is None or not isinstance(build.get("ok"), bool) or not isinstance(
            build.get("touched", []), list):
        return "no well-formed build message"
    if build["ok"]:
        for i in range(ncases):
            start, case = take("case-start"), take("case")
            if start is None or case is None or start.get("index") != i or (
                    case.get("index") != i) or (("result" in case) == ("error" in case)):
                return f"the messages of case {i} are out of order or malformed"
            if "error" in case and not isinstance(case["error"], str):
                return f"case {i}: malformed error"
    if take("done") is None or k != len(msgs):
        return "the messages do not end with one done"
    return None


def _score(nb: _Notebook, part: Part, plan: list[tuple[Check, dict[str, Any]]],
           run: sandbox.WorkerRun) -> PartResult:
    gid = part.grade_id
    import json

    sent = [c.grade_id for c in nb.cells
            if c.grade_id not in nb.bad_cells and c.grade_id not in nb.never_run]
    interactive = _interactive(nb)
    bad = _malformed(run, sent, 0 if interactive else len(plan))
    if bad is not None:
        return _zero(part, "error", f"the results of this part cannot be trusted ({bad}):"
                                    " they score 0")
    cell = next((m for m in run.messages if m.get("type") == "cell"
                 and m.get("grade_id") == gid), None)
    if cell is None:
        return _zero(part, "error", "the cell did not run")
    status = cell.get("status")
    err = _clip(str(cell.get("error") or ""))
    if status == "integrity":
        return _zero(part, "integrity", f"integrity: the cell {err} (the reference"
                     " implementation is not available while grading)")
    if status == "not implemented":
        return _zero(part, "not implemented", f"not implemented yet:\n{err}")
    if status == "timeout":
        return _zero(part, "timeout", f"timeout while running the cell {gid}: {err}")
    if status != "ok":
        return _zero(part, "error", f"the cell {gid} raised an exception:\n{err}")
    build = run.last("build")
    assert build is not None
    if build.get("touched"):
        return _zero(part, "integrity", f"integrity: {_clip(str(build['touched'][0]))} while"
                     " building")
    if not build.get("ok"):
        text = _clip(str(build.get("error") or ""))
        stubs = [str(m.get("grade_id")) for m in run.messages
                 if m.get("type") == "cell" and m.get("status") == "not implemented"]
        if stubs:  # e.g. the class is defined by a cell that is still the released stub
            return _zero(part, "not implemented", f"not implemented yet: {text} (the cell"
                         f" {', '.join(stubs)} raised NotImplementedError)")
        if "NotImplementedError" in text:
            return _zero(part, "not implemented", f"not implemented yet:\n{text}")
        return _zero(part, "error", text)
    results = {m["index"]: m for m in run.messages if m.get("type") == "case"}
    if interactive:  # the grader's own runs of the cases (module.converse), not messages
        conv = run.extra.get("conversation")
        results = {i: {"index": i, **r} for i, r in enumerate(conv if isinstance(conv, list)
                                                               else []) if isinstance(r, dict)}
    for m in results.values():
        text = json.dumps(m)
        if m.get("touched") or sandbox.REDACTED_MARK in text:
            import re

            what = re.search(r"([\w.]+): " + re.escape(sandbox.REDACTED_MARK), text)
            name = what.group(1) if what else "a reference implementation"
            return _zero(part, "integrity", f"integrity: called {name} while grading (the"
                         " reference implementation is not available while grading)")
    checks: list[CheckResult] = []
    failures: list[str | None] = []
    for check in part.checks:
        idx = [i for i, (c, _) in enumerate(plan) if c is check]
        passed = 0
        first: tuple[dict[str, Any], str] | None = None
        for i in idx:
            case = plan[i][1]
            msg = results.get(i)
            if msg is None:
                verdict: str | None = "no result came back for this case"
                failures.append("missing")
            elif "error" in msg:
                verdict = f"your code raised:\n{msg['error']}"
                failures.append(_error_type(msg))
            else:
                try:
                    verdict = nb.module.compare(part, check, case, msg.get("result"))
                except Exception as e:  # a malformed trace the comparer could not read
                    verdict = f"the result could not be compared ({type(e).__name__})"
                if verdict is not None:
                    failures.append(_error_type(msg))
            if verdict is None:
                passed += 1
            elif first is None:
                first = (case, verdict)
        n = len(idx)
        pts = round(check.points * passed / n, 4) if n else float(check.points)
        seed = None
        instructor = ""
        if first is None:
            message = f"all {n} cases passed" if n != 1 else "the case passed"
        else:
            case, verdict = first
            shown = _case_name(case, with_seed=not check.hidden)
            message = f"{passed}/{n} cases passed; first failure — {shown}: {verdict}"
            instructor = (f"{passed}/{n} cases passed; first failure — {_case_name(case)}:"
                          f" {verdict}")
            if not check.hidden and isinstance(case.get("seed"), int):
                seed = int(case["seed"])
            if check.hidden:
                message = _strip_seeds(message)
        checks.append(CheckResult(check.name, pts, float(check.points), passed == n,
                                  _clip(message), check.hidden, seed, _clip(instructor)))
    score = round(sum(c.points for c in checks), 4)
    status = "ok"
    reason = ""
    if score == 0 and failures and all(f == "NotImplementedError" for f in failures):
        status = "not implemented"
        reason = "not implemented yet (every case raised NotImplementedError)"
    return PartResult(gid, score, float(part.points), status, checks, reason)


def _strip_seeds(text: str) -> str:
    """A hidden check's message without any ``seed=N`` (a comparer may name the seed)."""
    import re

    return re.sub(r"\s*\(?seed=\d+\)?", "", text)


def feedback_text(result: NotebookResult) -> str:
    """The feedback a student reads: score, then each part and each check with its message.

    Hidden checks show their name, pass/fail, points and the message (the first divergence
    and the case seed) — never test code, never the course secret.

    >>> r = NotebookResult("bob", "a9", 2.0, 4.0, "ok", [PartResult("p", 2.0, 4.0, "ok",
    ...     [CheckResult("c", 2.0, 4.0, False, "1/2 cases passed; ...", True, 5)], "")], "", 1.0)
    >>> print(feedback_text(r))
    Assignment a9 — student bob
    Score: 2 / 4
    <BLANKLINE>
    Part p: 2 / 4
      [FAIL] c (hidden check): 2 / 4 — 1/2 cases passed; ...
    """
    lines = [f"Assignment {result.assignment} — student {result.student}",
             f"Score: {result.score:g} / {result.max_score:g}"]
    if result.status != "ok":
        lines.append(f"The notebook was {result.status}: {result.reason}")
    for p in result.parts:
        lines.append("")
        head = f"Part {p.grade_id}: {p.score:g} / {p.max_score:g}"
        if p.status != "ok":
            head += f" ({p.status})"
        lines.append(head)
        if p.reason and p.status != "ok":
            lines += [f"  {ln}" for ln in p.reason.splitlines()]
        for c in p.checks:
            kind = "hidden check" if c.hidden else "visible check"
            mark = "pass" if c.passed else "FAIL"
            first, *rest = (c.message or "").splitlines() or [""]
            if p.status != "ok" and c.message == p.reason:
                lines.append(f"  [{mark}] {c.name} ({kind}): {c.points:g} / {c.max_points:g}")
                continue
            lines.append(f"  [{mark}] {c.name} ({kind}): {c.points:g} / {c.max_points:g}"
                         f" — {first}")
            lines += [f"      {ln}" for ln in rest]
    return "\n".join(lines)


def run_visible(assignment: str | AssignmentSpec, grade_id: str,
                namespace: dict[str, Any]) -> list[CheckResult]:
    """Run a part's *visible* checks in this process, on ``namespace`` (a notebook's globals).

    For the students' own kernel (advice, not a score): no sandbox, and the reference is
    computed here.  Hidden checks are not run.

    >>> from virtcore.vmm.handlers import HandlerTable
    >>> ns = {f"handle_{m}": fn for m, fn in HandlerTable.reference().items()}
    >>> [(c.name, c.passed) for c in run_visible("a1_trap_and_emulate", "handlers_io", ns)]
    [('io_directed', True), ('io_public', True)]
    """
    spec, module = _resolve(assignment)
    part = spec.part(grade_id)
    impl = module.build(namespace, grade_id, module.worker_setup(grade_id))
    out = []
    for check in part.checks:
        if check.hidden:
            continue
        cases = module.cases(part, check, _seed_fn("", spec.name, check))
        passed = 0
        first = None
        for case in cases:
            try:
                verdict = module.compare(part, check, case, module.run_case(impl, case))
            except Exception as e:
                from autograder.worker import student_traceback

                verdict = f"your code raised:\n{student_traceback(e) or e!r}"
            if verdict is None:
                passed += 1
            elif first is None:
                first = (case, verdict)
        n = len(cases)
        msg = ((f"all {n} cases passed" if n != 1 else "the case passed") if first is None else
               f"{passed}/{n} cases passed; first failure — {_case_name(first[0])}: {first[1]}")
        seed = first[0].get("seed") if first is not None else None
        out.append(CheckResult(check.name, round(check.points * passed / n, 4) if n else 0.0,
                               float(check.points), passed == n, msg, False,
                               seed if isinstance(seed, int) else None))
    return out

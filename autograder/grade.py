"""Grade one submitted notebook: solution cells in a confined worker, scores in the grader.

:func:`grade_notebook` is the whole pipeline for one (student, assignment):

1. read the submission's solution cells and the source notebook's preamble
   (:mod:`autograder.extract`) — a missing or corrupt notebook scores 0 with a reason;
2. scan every solution cell (:func:`autograder.integrity.scan`); a flagged cell's part scores
   0 (``"integrity"``) without running.  A cell flagged only for *using the reference* still
   runs (with the references switched off) when other parts are graded, since they may build
   on its definitions — if they reach the reference through it, they are caught at run time
   and score 0 too; a cell flagged for anything else (patching, builtins, processes…) never
   runs (:data:`RUN_FLAGGED`);
3. for each part: generate the cases of its checks here — visible checks from public seeds,
   hidden ones from ``derive_seed(secret, student, assignment, check, k)`` — and run **one
   worker per part** (:func:`autograder.sandbox.run_worker`), which executes the preamble and
   the solution cells and returns a trace per case;
4. compare each trace with the reference, computed here by the assignment module
   (``compare``): partial credit per check = its points × the fraction of cases passed;
   messages name the case (label and seed) and the first divergence.

Faults cost only the part they hit: a worker that crashes or times out while running *another*
part's cell makes that cell excluded (its part gets the crash) and the part is retried; one
that dies on this part's cell or cases gives this part 0 with the reason.  Nothing the worker
sends is trusted beyond being data: it is validated and compared with what the grader
computed itself, so patching anything inside the worker cannot raise a score.  The course
secret never leaves this process and is redacted from every message.

>>> r = NotebookResult("alice", "a9", 1.5, 3.0, "ok", [], "", 0.1)
>>> NotebookResult.from_json(r.to_json()) == r
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from autograder import assignments, extract, integrity, sandbox
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


def _redact(text: str, secret: str) -> str:
    if secret and secret in text:
        text = text.replace(secret, "<redacted>")
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


def _seed_fn(secret: str, student: str, assignment: str, check: Check) -> Callable[[int], int]:
    if check.hidden:
        return lambda k: derive_seed(secret, student, assignment, check.name, k)
    return lambda k: derive_seed(PUBLIC_SEED_KEY, assignment, check.name, k)


def _case_name(case: dict[str, Any]) -> str:
    label = str(case.get("label") or "case")
    seed = case.get("seed")
    if seed is not None and f"seed={seed}" not in label:
        label += f" (seed={seed})"
    return label


@dataclass
class _Notebook:
    spec: AssignmentSpec
    module: ModuleType
    student: str
    secret: str
    preamble: list[str]
    cells: list[extract.Cell]
    findings: dict[str, list[integrity.Finding]]
    never_run: set[str]
    timeout: float
    limits: sandbox.Limits | None
    bad_cells: dict[str, tuple[str, str]] = field(default_factory=dict)


def grade_notebook(path: Path | str | None, assignment: str | AssignmentSpec, student: str,
                   secret: bytes | str, *, source_notebook: Path | str,
                   timeout: float = 60.0, limits: sandbox.Limits | None = None
                   ) -> NotebookResult:
    """Grade one student's notebook for ``assignment``.

    Parameters
    ----------
    path : Path or None
        The submitted notebook (None or a missing file: status ``"missing"``).
    assignment : str or AssignmentSpec
        A name in :data:`autograder.assignments.REGISTRY` (or its spec).
    student : str
        The student id (hidden cases derive from it).
    secret : bytes or str
        The course secret (see :func:`normalize_secret`); never sent to the worker, never in
        a message.
    source_notebook : Path
        The instructor's source notebook: its preamble (set-up cells) is run before the
        student's cells.  Unreadable → :class:`~autograder.spec.GradingError`.
    timeout : float
        Wall-clock limit of each worker (one per part, plus retries after a crash elsewhere).
    limits : sandbox.Limits, optional
        Resource limits of the workers.

    Returns
    -------
    NotebookResult
    """
    start = time.monotonic()
    spec, module = _resolve(assignment)
    secret_s = normalize_secret(secret)
    preamble = extract.read_preamble(source_notebook)
    max_score = float(spec.points)
    try:
        cells = extract.read_submission(path)
    except extract.SubmissionError as e:
        why = ("the notebook is missing" if e.reason == "missing"
               else f"the notebook cannot be read ({e.reason})")
        parts = [_zero(p, "missing", why) for p in spec.parts]
        return NotebookResult(student, spec.name, 0.0, max_score, e.status, parts, e.reason,
                              time.monotonic() - start)
    findings: dict[str, list[integrity.Finding]] = {}
    defined = {c.grade_id: integrity.defined_names(c.source) for c in cells}
    for c in cells:
        own: set[str] = set()
        for other, names in defined.items():
            if other != c.grade_id:
                own |= names
        found = integrity.scan(c.source, forbidden=module.FORBIDDEN,
                               context=[*preamble, *(o.source for o in cells if o is not c)],
                               own=own)
        if found:
            findings[c.grade_id] = found
    never_run = {gid for gid, found in findings.items()
                 if any(f.rule not in RUN_FLAGGED for f in found)}
    nb = _Notebook(spec, module, student, secret_s, preamble, cells, findings, never_run,
                   timeout, limits)
    parts = [_grade_part(nb, p) for p in spec.parts]
    score = round(sum(p.score for p in parts), 6)
    faults = [f"{p.grade_id}: {p.status}" for p in parts if p.status != "ok"]
    return NotebookResult(student, spec.name, score, max_score, "ok", parts,
                          "; ".join(faults), time.monotonic() - start)


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


def _grade_part(nb: _Notebook, part: Part) -> PartResult:
    gid = part.grade_id
    ids = [c.grade_id for c in nb.cells]
    if gid not in ids:
        return _zero(part, "missing", f"the solution cell {gid!r} is missing from the notebook")
    if gid in nb.findings:
        shown = "; ".join(str(f) for f in nb.findings[gid][:3])
        return _zero(part, "integrity", _redact(f"integrity: {shown}", nb.secret))
    if gid in nb.bad_cells:
        return _zero(part, *nb.bad_cells[gid])
    plan: list[tuple[Check, dict[str, Any]]] = []
    for check in part.checks:
        seed_of = _seed_fn(nb.secret, nb.student, nb.spec.name, check)
        plan += [(check, case) for case in nb.module.cases(part, check, seed_of)]
    for _attempt in range(len(nb.cells) + 1):
        run_cells = [{"grade_id": c.grade_id, "source": c.source} for c in nb.cells
                     if c.grade_id not in nb.bad_cells and c.grade_id not in nb.never_run]
        task = {"assignment": nb.spec.name, "part": gid, "preamble": nb.preamble,
                "cells": run_cells, "cases": [case for _, case in plan],
                "case_timeout": float(getattr(nb.module, "CASE_TIMEOUT", 3.0)),
                "cell_timeout": float(getattr(nb.module, "CELL_TIMEOUT", 5.0))}
        run = sandbox.run_worker(task, timeout=nb.timeout, limits=nb.limits)
        if run.outcome == "ok":
            return _score(nb, part, plan, run)
        status = "timeout" if run.outcome == "timeout" else "crashed"
        detail = run.detail if run.outcome != "memory" else (
            f"ran out of memory ({run.detail}; the limit is"
            f" {(nb.limits or sandbox.Limits()).address_space_bytes >> 20} MiB)")
        dying = _dying_cell(run)
        if dying is not None and dying != gid:
            nb.bad_cells[dying] = (status, _redact(f"{status} while running the cell"
                                                   f" {dying}: {detail}", nb.secret))
            continue
        if dying == gid:
            reason = f"{status} while running the cell {gid}: {detail}"
            nb.bad_cells[gid] = (status, _redact(reason, nb.secret))
            return _zero(part, status, _redact(reason, nb.secret))
        k = _dying_case(run)
        fatal = run.last("fatal")
        if k is None and fatal is not None and isinstance(fatal.get("index"), int):
            k = int(fatal["index"])
        where = ""
        if k is not None and 0 <= k < len(plan):
            check, case = plan[k]
            where = f" on {_case_name(case)} of check {check.name}"
        return _zero(part, status, _redact(f"{status}{where}: {detail}", nb.secret))
    return _zero(part, "crashed", "the worker kept failing")  # pragma: no cover


def _error_type(msg: dict[str, Any]) -> str | None:
    if isinstance(msg.get("error_type"), str):
        return str(msg["error_type"])
    res = msg.get("result")
    if isinstance(res, dict) and isinstance(res.get("error"), dict):
        t = res["error"].get("type")
        return t if isinstance(t, str) else None
    return None


def _score(nb: _Notebook, part: Part, plan: list[tuple[Check, dict[str, Any]]],
           run: sandbox.WorkerRun) -> PartResult:
    gid = part.grade_id
    cell = next((m for m in run.messages if m.get("type") == "cell"
                 and m.get("grade_id") == gid), None)
    if cell is None:
        return _zero(part, "error", "the cell did not run")
    status = cell.get("status")
    err = _redact(str(cell.get("error") or ""), nb.secret)
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
    if build is None:
        return _zero(part, "error", "the worker did not build the implementation")
    if not build.get("ok"):
        text = _redact(str(build.get("error") or ""), nb.secret)
        stubs = [str(m.get("grade_id")) for m in run.messages
                 if m.get("type") == "cell" and m.get("status") == "not implemented"]
        if stubs:  # e.g. the class is defined by a cell that is still the released stub
            return _zero(part, "not implemented", f"not implemented yet: {text} (the cell"
                         f" {', '.join(stubs)} raised NotImplementedError)")
        if "NotImplementedError" in text:
            return _zero(part, "not implemented", f"not implemented yet:\n{text}")
        return _zero(part, "error", text)
    if build.get("touched"):
        return _zero(part, "integrity", f"integrity: used {build['touched'][0]} while building"
                     " (the reference implementation is not available while grading)")
    results = {m["index"]: m for m in run.messages
               if m.get("type") == "case" and isinstance(m.get("index"), int)}
    touched = [m["touched"][0] for m in results.values()
               if isinstance(m.get("touched"), list) and m["touched"]]
    if touched:
        return _zero(part, "integrity", f"integrity: called {touched[0]} while grading (the"
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
        if first is None:
            message = f"all {n} cases passed" if n != 1 else "the case passed"
            seed = None
        else:
            case, verdict = first
            message = (f"{passed}/{n} cases passed; first failure — {_case_name(case)}:"
                       f" {verdict}")
            seed = case.get("seed") if isinstance(case.get("seed"), int) else None
        checks.append(CheckResult(check.name, pts, float(check.points), passed == n,
                                  _redact(message, nb.secret), check.hidden, seed))
    score = round(sum(c.points for c in checks), 4)
    status = "ok"
    reason = ""
    if score == 0 and failures and all(f == "NotImplementedError" for f in failures):
        status = "not implemented"
        reason = "not implemented yet (every case raised NotImplementedError)"
    return PartResult(gid, score, float(part.points), status, checks, reason)


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
        cases = module.cases(part, check, _seed_fn("", "", spec.name, check))
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
        msg = (f"all {n} cases passed" if first is None else
               f"{passed}/{n} cases passed; first failure — {_case_name(first[0])}: {first[1]}")
        seed = first[0].get("seed") if first is not None else None
        out.append(CheckResult(check.name, round(check.points * passed / n, 4) if n else 0.0,
                               float(check.points), passed == n, msg, False,
                               seed if isinstance(seed, int) else None))
    return out

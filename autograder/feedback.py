"""Per-student feedback pages (``python -m autograder feedback <assignment>``).

Each graded submission gets ``feedback/<student>/<assignment>/feedback.html``: the score
per part and one line per check — passed or failed, visible or hidden, points, and the
grader's message (for a failure the first divergence).  What reaches the student:

- **everything from the student is escaped**: the page is built from the grading result
  only (never from the notebook), and every string — the student id, statuses, check
  names, messages (which quote the student's exceptions) — goes through
  :func:`html.escape`; the page has no script;
- **no hidden test code, no hidden seed, no course secret**: a hidden check's message has
  its case seeds replaced by ``seed=hidden`` (:func:`redact_hidden_seeds`), and the page's
  text is checked against the source notebook's hidden-test lines and the secret before it
  is written; a message that would show either (a student's exception text can quote
  anything) is replaced by :data:`WITHHELD` and the instructor gets a note; a page that
  still would is **not written for that student** (an error line; the others still get
  theirs);
- **one student never stops the others**: each page is written in its own ``try``; an
  unreadable result, a page that fails the check or an I/O error is one error line, and the
  command exits 1 after writing every other page.

For exchange submissions the page is also saved as ``<notebook>.html`` with the
submission's ``timestamp.txt`` and ``submission_secret.txt`` (read without following a
symlink), so ``nbgrader release_feedback`` delivers it.

>>> redact_hidden_seeds("case 'caps-3' (seed=12345): got 4, expected 5")
"case 'caps-3' (seed=hidden): got 4, expected 5"
"""

from __future__ import annotations

import html
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WITHHELD",
    "FeedbackReport",
    "feedback_html",
    "feedback_text",
    "page_text",
    "redact_hidden_seeds",
    "student_view",
    "write_all",
]

RESULT_FILE = "virtcore-result.json"
_SEED = re.compile(r"(?i)\b(seeds?\s*[=:]\s*)(\([\d, ]*\d\)|\[[\d, ]*\d\]|-?\d+)")
_EXTRA_BYTES = 4096


def redact_hidden_seeds(message: str) -> str:
    """``seed=123`` / ``seeds: (1, 2)`` → ``seed=hidden`` (hidden checks' messages).

    >>> redact_hidden_seeds("seeds: (1, 2) failed; seed = 7")
    'seeds: hidden failed; seed = hidden'
    """
    return _SEED.sub(lambda m: m.group(1) + "hidden", message)


def page_text(page: str) -> str:
    """What a browser shows of an HTML page: tags dropped, entities decoded.

    >>> page_text("<pre>a &lt; b</pre>")
    'a < b'
    """
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def student_view(result: Any) -> Any:
    """A copy of ``result`` with what students must not see removed.

    Hidden checks lose their ``seed`` and have the seeds in their messages redacted (a
    part's reason too when it repeats a hidden check's message): with a hidden case's
    seed a student could regenerate the case and tune the answer to it.
    """
    import copy

    view = copy.deepcopy(result)
    for p in view.parts:
        hidden_msgs = {c.message for c in p.checks if c.hidden}
        for c in p.checks:
            if c.hidden:
                c.seed = None
                c.message = redact_hidden_seeds(c.message or "")
        if p.reason in hidden_msgs:
            p.reason = redact_hidden_seeds(p.reason)
    return view


def feedback_text(result: Any) -> str:
    """The feedback a student reads (plain text): score, each part, each check.

    ``result`` is a :class:`~autograder.grade.NotebookResult`; this is the grader's
    :func:`autograder.grade.feedback_text` of :func:`student_view` (no hidden seed).
    """
    from autograder import grade

    return str(grade.feedback_text(student_view(result)))


def feedback_html(spec: Any, result: Any, text: str) -> str:
    """A self-contained HTML page (no script): the score per part and the per-check text.

    >>> from types import SimpleNamespace as NS
    >>> spec = NS(title="A<1>", parts=[NS(grade_id="p", points=1.0)])
    >>> res = NS(student="<b>x</b>", parts=[], status="ok", score=0.0, max_score=1.0)
    >>> "<b>x</b>" in feedback_html(spec, res, "<script>")
    False
    """
    esc = html.escape
    rows = []
    by_part = {p.grade_id: p for p in result.parts}
    for part in spec.parts:
        got = by_part.get(part.grade_id)
        score = f"{got.score:g}" if got else "0"
        status = got.status if got else result.status
        rows.append(f"<tr><td>{esc(str(part.grade_id))}</td><td>{esc(score)}</td>"
                    f"<td>{part.points:g}</td><td>{esc(str(status))}</td></tr>")
    title = f"{spec.title} — feedback for {result.student}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.2em .6em}}
pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head>
<body><h1>{esc(title)}</h1>
<p>Score: <b>{result.score:g} / {result.max_score:g}</b> ({esc(str(result.status))})</p>
<table><tr><th>part</th><th>score</th><th>points</th><th>status</th></tr>
{''.join(rows)}</table>
<h2>Checks</h2>
<pre>{esc(text)}</pre>
<p><small>Graded outside your notebook against virtcore's reference implementation.
Hidden checks run cases generated for you alone; re-grading gives the same cases.</small></p>
</body></html>
"""


@dataclass
class FeedbackReport:
    """What :func:`write_all` did: pages written, one error line per failed student, and
    notes (a message withheld)."""

    written: list[str]
    errors: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)


class _LeakError(Exception):
    pass


def _results(course: Path, assignment: str) -> Iterator[tuple[str, Any, str]]:
    """(student, result or None, error) for every cached result of ``assignment``."""
    from autograder.grade import NotebookResult

    for path in sorted((course / "autograded").glob(f"*/{assignment}/{RESULT_FILE}")):
        student = path.parent.parent.name
        try:
            if path.is_symlink() or not path.is_file():
                raise ValueError("not a regular file")
            data = json.loads(path.read_text(encoding="utf-8"))
            yield student, NotebookResult.from_json(data["result"]), ""
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            yield student, None, f"unreadable grading result ({type(e).__name__}): run grade"


def _read_small(path: Path) -> bytes | None:
    """A small regular file's bytes, never through a symlink (None if it is not one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _EXTRA_BYTES:
            return None
        return os.read(fd, _EXTRA_BYTES)
    finally:
        os.close(fd)


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


WITHHELD = "(message withheld: it would quote test code; ask your instructor)"


def _leaks(text: str, hidden: list[str], secret: str | None) -> list[str]:
    found = [ln for ln in hidden if ln in text]
    if secret and secret in text:
        found.append("the course secret")
    return found


def _withhold(result: Any, hidden: list[str], secret: str | None) -> Any:
    """:func:`student_view` with every message that quotes a hidden line or the secret
    replaced by :data:`WITHHELD` (a student's exception text can quote anything)."""
    view = student_view(result)
    if _leaks(view.reason or "", hidden, secret):
        view.reason = WITHHELD
    for p in view.parts:
        if _leaks(p.reason or "", hidden, secret):
            p.reason = WITHHELD
        for c in p.checks:
            if _leaks(c.message or "", hidden, secret):
                c.message = WITHHELD
    return view


def _one(course: Path, spec: Any, student: str, result: Any, hidden: list[str],
         secret: str | None) -> str:
    note = ""
    page = feedback_html(spec, result, feedback_text(result))
    if _leaks(page_text(page), hidden, secret):
        result = _withhold(result, hidden, secret)
        page = feedback_html(spec, result, feedback_text(result))
        note = "a message quoted hidden test code or the secret: withheld on the page"
    leaked = _leaks(page_text(page), hidden, secret)
    if leaked:
        raise _LeakError(f"the page would show {len(leaked)} hidden test line(s) or the"
                         " secret; not written")
    out = course / "feedback" / student / spec.name
    _write(out / "feedback.html", page)
    sub = course / "submitted" / student / spec.name
    token = _read_small(sub / "submission_secret.txt")
    if token is not None:
        # an exchange submission: also under the notebook's name, for `nbgrader
        # release_feedback`, which needs timestamp.txt and submission_secret.txt beside it
        _write(out / (Path(spec.notebook).stem + ".html"), page)
        _write(out / "submission_secret.txt", token)
        stamp = _read_small(sub / "timestamp.txt")
        if stamp is not None:
            _write(out / "timestamp.txt", stamp)
    return note


def write_all(course: Path, spec: Any, hidden: Iterable[str], secret: str | None) -> \
        FeedbackReport:
    """Write every student's page; a failure is that student's error line only."""
    from autograder.importer import valid_student_id

    hidden = list(hidden)
    report = FeedbackReport([], {})
    for student, result, error in _results(course, spec.name):
        if not valid_student_id(student):
            continue
        if result is None:
            report.errors[student] = error
            continue
        try:
            note = _one(course, spec, student, result, hidden, secret)
        except _LeakError as e:
            report.errors[student] = str(e)
        except Exception as e:  # one student's page never stops the others
            report.errors[student] = f"not written: {type(e).__name__}: {str(e)[:200]}"
        else:
            report.written.append(student)
            if note:
                report.notes[student] = note
    return report

"""A similarity report of the answer cells: copying between students, copying the reference.

Students have virtcore — and so the reference implementations — in their own kernel, and
each other's notebooks in their inboxes; the grader cannot see where an answer came from.
This report shows the instructor which answers look alike, **for the instructor's
judgement, not an automatic penalty**: two short correct answers can be alike by chance,
and the report never changes a score.

How two answers are compared (per graded part, i.e. per answer cell):

1. **Normalised tokens** (:func:`normalize`): the cell is tokenised with Python's
   :mod:`tokenize`; comments, blank lines and layout disappear; every identifier that is not
   an attribute name (``vcpu.pc`` keeps ``pc``), a keyword or a builtin becomes ``V<n>`` in
   order of first appearance, so consistently **renamed variables give the same sequence**;
   string literals become ``S``.  A cell that does not tokenise falls back to its words.
2. **Fingerprints**: the set of hashed k-grams (:data:`K` tokens) of that sequence, minus
   the k-grams of the released starter code of the cell (shared by everybody, MOSS's "base
   file" rule), so only what the student wrote counts.
3. **Similarity** = Jaccard index of the two sets, in [0, 1]; a pair is *flagged* at or
   above the threshold (default :data:`THRESHOLD`).  Answers with fewer than
   :data:`MIN_KGRAMS` fingerprints are too short to judge and are left out.

Every student's answer is compared with every other student's and with the **reference
solution** of the source notebook (read here, on the grader side; it is never shown to
students).  ``python -m autograder report <a>`` prints the top pairs, writes them all as
``<a>-similarity.csv`` and draws ``<a>-similarity.png`` (students × students, the highest
similarity over the parts, the reference as the last row).

>>> normalize("total = a + b  # sum") == normalize("s = x + y")
True
>>> normalize("print(len(items))")
['print', '(', 'len', '(', 'V1', ')', ')']
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import io
import keyword
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MIN_KGRAMS",
    "NOTE",
    "REFERENCE",
    "THRESHOLD",
    "K",
    "Pair",
    "answers_of",
    "compare",
    "fingerprints",
    "normalize",
    "similarity",
    "write_report",
]

#: Tokens per fingerprint.
K = 5
#: Answers with fewer fingerprints (after the starter code is removed) are not compared.
MIN_KGRAMS = 8
#: Default flagging threshold (Jaccard similarity of the fingerprints).
THRESHOLD = 0.8
#: The name the reference solution has in the report.
REFERENCE = "(reference)"
#: Printed with every report.
NOTE = ("Similarity is for the instructor's judgement, not an automatic penalty: short or"
        " standard answers can be alike by chance; read the flagged pairs side by side.")
_BUILTINS = frozenset(dir(builtins))
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENCODING, tokenize.ENDMARKER}


def normalize(code: str) -> list[str]:
    """The normalised token sequence of ``code`` (see the module docstring)."""
    names: dict[str, str] = {}
    out: list[str] = []
    prev = ""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return re.findall(r"\w+|[^\w\s]", code)
    for tok in toks:
        if tok.type in _SKIP:
            continue
        text = tok.string
        if tok.type == tokenize.NAME and not keyword.iskeyword(text) and \
                text not in _BUILTINS and prev != ".":
            text = names.setdefault(text, f"V{len(names) + 1}")
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_START", -1):
            text = "S"
        out.append(text)
        prev = tok.string
    return out


def fingerprints(code: str, base: str = "", k: int = K) -> frozenset[int]:
    """Hashed k-grams of the normalised ``code``, minus those of the starter code ``base``.

    >>> len(fingerprints("a = 1\\nb = 2", k=3)) > 0
    True
    >>> fingerprints("x = compute(1, 2)", base="y = compute(1, 2)", k=3)
    frozenset()
    """
    def grams(src: str) -> set[int]:
        toks = normalize(src)
        return {int.from_bytes(hashlib.blake2b(" ".join(toks[i:i + k]).encode(),
                                               digest_size=8).digest(), "big")
                for i in range(max(0, len(toks) - k + 1))}

    return frozenset(grams(code) - grams(base)) if base else frozenset(grams(code))


def similarity(a: frozenset[int], b: frozenset[int]) -> float:
    """Jaccard index of two fingerprint sets (0 when either is empty).

    >>> similarity(frozenset({1, 2, 3}), frozenset({2, 3, 4}))
    0.5
    """
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class Pair:
    """Two answers to one part and how alike they are (``b`` may be :data:`REFERENCE`)."""

    part: str
    a: str
    b: str
    score: float
    flagged: bool


def compare(answers: Mapping[str, Mapping[str, str]], reference: Mapping[str, str],
            starter: Mapping[str, str] | None = None, threshold: float = THRESHOLD,
            min_kgrams: int = MIN_KGRAMS) -> list[Pair]:
    """Every pair of students, and every student against the reference, per part.

    ``answers`` maps student → part → code; ``reference`` and ``starter`` map part → code.
    Sorted by decreasing similarity.

    >>> ref = {"p": "def f(xs):\\n    total = 0\\n    for x in xs:\\n        total += x * x\\n"
    ...             "    return total\\n"}
    >>> ann = ref["p"].replace("total", "acc").replace("xs", "values")
    >>> ans = {"ann": {"p": ann}, "bob": {"p": "def f(v):\\n    return sum(map(abs, v))\\n"}}
    >>> [(p.a, p.b, round(p.score, 2), p.flagged) for p in compare(ans, ref, min_kgrams=3)][0]
    ('ann', '(reference)', 1.0, True)
    """
    starter = starter or {}
    parts = sorted({p for a in answers.values() for p in a} | set(reference))
    out: list[Pair] = []
    for part in parts:
        base = starter.get(part, "")
        fps = {s: fingerprints(a[part], base) for s, a in answers.items() if part in a}
        fps = {s: f for s, f in fps.items() if len(f) >= min_kgrams}
        ref = fingerprints(reference.get(part, ""), base)
        names = sorted(fps)
        for i, s in enumerate(names):
            if len(ref) >= min_kgrams:
                sc = similarity(fps[s], ref)
                out.append(Pair(part, s, REFERENCE, sc, sc >= threshold))
            for t in names[i + 1:]:
                sc = similarity(fps[s], fps[t])
                out.append(Pair(part, s, t, sc, sc >= threshold))
    return sorted((p for p in out if p.score > 0),
                  key=lambda p: (-p.score, p.part, p.a, p.b))


# -- reading the course ------------------------------------------------------------------------


def _strip_markers(code: str) -> str:
    return "\n".join(ln for ln in code.splitlines()
                     if "BEGIN SOLUTION" not in ln and "END SOLUTION" not in ln)


def answers_of(course: Path, spec: Any) -> tuple[dict[str, dict[str, str]], dict[str, str],
                                                 dict[str, str], dict[str, str]]:
    """(student → part → code, reference, starter code, per-student read errors).

    Answers come from ``submitted/<student>/<assignment>/<notebook>`` (answer cells only,
    :func:`autograder.extract.read_submission`); the reference from the source notebook, the
    starter code from the released notebook when it exists.
    """
    from autograder.extract import read_notebook, read_submission, solution_cells
    from autograder.importer import valid_student_id

    parts = {p.grade_id for p in spec.parts}
    src = solution_cells(read_notebook(course / "source" / spec.name / spec.notebook))
    reference = {c.grade_id: _strip_markers(c.source) for c in src if c.grade_id in parts}
    starter: dict[str, str] = {}
    rel = course / "release" / spec.name / spec.notebook
    if rel.is_file() and not rel.is_symlink():
        try:
            starter = {c.grade_id: c.source for c in solution_cells(read_notebook(rel))
                       if c.grade_id in parts}
        except Exception:  # the release is the instructor's: a broken one just means no base
            starter = {}
    answers: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    root = course / "submitted"
    for d in sorted(root.glob(f"*/{spec.name}")) if root.is_dir() else []:
        student = d.parent.name
        nb = d / spec.notebook
        if not valid_student_id(student) or nb.is_symlink() or not nb.is_file():
            continue
        try:
            cells = read_submission(nb)
        except Exception as e:  # corrupt, too deep…: that student is left out, with a reason
            errors[student] = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            continue
        answers[student] = {c.grade_id: c.source for c in cells if c.grade_id in parts}
    return answers, reference, starter, errors


def write_report(course: Path, spec: Any, out: Path, threshold: float = THRESHOLD,
                 top: int = 15) -> tuple[list[Pair], list[str]]:
    """Write ``<a>-similarity.csv`` (and ``.png``) to ``out``; return the pairs and text lines."""
    answers, reference, starter, errors = answers_of(course, spec)
    pairs = compare(answers, reference, starter, threshold)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{spec.name}-similarity.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["part", "student", "other", "similarity", "flagged"])
        for p in pairs:
            w.writerow([p.part, p.a, p.b, f"{p.score:.3f}", "yes" if p.flagged else ""])
    flagged = [p for p in pairs if p.flagged]
    lines = [f"similarity of {len(answers)} submission(s) of {spec.name}, per answer cell,"
             f" against each other and the reference (threshold {threshold:g}):"
             f" {len(flagged)} pair(s) flagged",
             f"  {NOTE}"]
    for p in pairs[:top]:
        mark = "FLAG" if p.flagged else "    "
        lines.append(f"  {mark} {p.score:5.2f}  {p.part:<28} {p.a:<20} {p.b}")
    for s in sorted(errors):
        lines.append(f"  {s}: not compared ({errors[s]})")
    lines.append(f"similarity: {csv_path}")
    png = _heatmap(spec, answers, pairs, out)
    if png is not None:
        lines.append(f"similarity: {png}")
    return pairs, lines


def _heatmap(spec: Any, answers: Mapping[str, Any], pairs: Iterable[Pair],
             out: Path) -> Path | None:
    students = sorted(answers)
    if not 2 <= len(students) <= 150:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    idx = {s: i for i, s in enumerate(students)}
    n = len(students)
    grid = np.zeros((n + 1, n))
    for p in pairs:
        i = idx[p.a]
        j = n if p.b == REFERENCE else idx[p.b]
        grid[j, i] = max(grid[j, i], p.score)
        if j < n:
            grid[i, j] = max(grid[i, j], p.score)
    size = max(4.0, 0.22 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n), students, rotation=90, fontsize=6)
    ax.set_yticks(range(n + 1), [*students, REFERENCE], fontsize=6)
    ax.set_title(f"{spec.name}: highest answer similarity over the parts\n"
                 "(for the instructor's judgement, not a penalty)", fontsize=9)
    fig.colorbar(im, ax=ax, label="similarity (Jaccard of normalised 5-grams)")
    fig.tight_layout()
    path = out / f"{spec.name}-similarity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""The self-checks of every chapter: placeholders are never the answer, hints name real things.

For every chapter notebook (``notebooks/*.ipynb``, the ``chapter`` parametrization of
``tests/conftest.py``):

- **the questions it asks** are the string literals passed to ``ask(...)`` or
  ``check_answer(...)``; after the notebook's *import cells* ran (code cells made only of
  imports and ``UPPER_CASE = constant`` lines, e.g. ``SEED = 0``), each must be registered in
  ``virtcore.viz.selfcheck.REGISTRY``;
- **placeholders**: the literal after "e.g." in a ``check_answer`` cell's comment
  (``answer = ...  # your answer, e.g. 0xae05``) and every "e.g. <literal>" in the question's
  text must not be a correct answer for any seed 0–99 — a reader who runs the cell unchanged
  (or copies the example) must never be told "correct";
- **hint names**: every name a hint mentions — anything in backticks, and any lowercase
  snake_case identifier with an underscore written as a call (``isa_reference_table()``) — must
  resolve in the chapter's namespace after its import cells (a dotted name attribute by
  attribute; Python's builtins count). Formula variables (``credit_total = …``) are not names.

The conventions are the ones agreed in the project for ``virtcore.viz.selfcheck``.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtcore.viz import selfcheck

SEEDS = range(100)
PLACEHOLDER = re.compile(r"#\s*your answer,\s*e\.g\.\s*(.+?)\s*$", re.M)
TEXT_EXAMPLE = re.compile(
    r"e\.g\.\s*(\([^()\n]*\)|\[[^\[\]\n]*\]|'[^'\n]*'|\"[^\"\n]*\"|0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?)")
BACKTICKED = re.compile(r"`([A-Za-z_][\w.]*)(?:\([^`]*\))?`")
CALLED = re.compile(r"(?<![\w.`])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\(")


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _is_import_cell(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    if not tree.body:
        return False
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
                and isinstance(node.value, ast.Constant)):
            continue
        return False
    return True


@functools.cache
def namespace(path: Path) -> dict[str, Any]:
    """The chapter's names after its import cells (which also register its questions)."""
    ns: dict[str, Any] = {"__name__": "__chapter__"}
    for source in _code_cells(path):
        if _is_import_cell(source):
            exec(compile(source, f"{path.name}:imports", "exec"), ns)
    return ns


def asked(path: Path) -> list[str]:
    """The question ids the chapter passes to ``ask`` / ``check_answer``, in order."""
    out: list[str] = []
    for source in _code_cells(path):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("ask", "check_answer") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and node.args[0].value not in out):
                out.append(node.args[0].value)
    return out


def placeholders(path: Path) -> Iterator[tuple[str, str]]:
    """``(qid, placeholder source)`` of each ``check_answer`` cell (placeholder '' if missing)."""
    for source in _code_cells(path):
        if "check_answer(" not in source:
            continue
        qids = list(asked_in(source))
        m = PLACEHOLDER.search(source)
        for qid in qids:
            yield qid, m.group(1) if m else ""


def asked_in(source: str) -> list[str]:
    return re.findall(r"check_answer\(\s*[\"']([^\"']+)[\"']", source)


@functools.cache
def solutions(qid: str) -> tuple[Any, ...]:
    """The normalized answer of ``qid`` for every seed (computed once per test session)."""
    check = selfcheck.REGISTRY[qid]
    return tuple(check.normalize(selfcheck.solution(qid, seed=s)) for s in SEEDS)


def _never_correct(qid: str, literal: str) -> list[int]:
    """The seeds for which ``literal`` would be a correct answer to ``qid``."""
    check = selfcheck.REGISTRY[qid]
    value = ast.literal_eval(literal)
    try:
        given = check.normalize(value)
    except selfcheck.AnswerFormatError:
        return []  # not even an answer of the right kind
    return [s for s, expected in zip(SEEDS, solutions(qid)) if expected == given]


def hint_names(hint: str) -> list[str]:
    """Names a hint mentions (see the module docstring).

    >>> hint_names("see `registers_table`, `plot_trace(run(trace=True))` and isa_reference_table()")
    ['registers_table', 'plot_trace', 'isa_reference_table']
    >>> hint_names("credit_total = 300 × pCPUs; fair = ceil(total)")
    []
    """
    names = BACKTICKED.findall(hint)
    stripped = BACKTICKED.sub(" ", hint)
    names += [n for n in CALLED.findall(stripped) if n not in names]
    return names


def _resolves(name: str, ns: dict[str, Any]) -> bool:
    head, *rest = name.split(".")
    if head in ns:
        obj = ns[head]
    elif hasattr(builtins, head):
        obj = getattr(builtins, head)
    else:
        return False
    for part in rest:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _chapter(chapter_path: Path) -> tuple[Path, list[str]]:
    ns = namespace(chapter_path)
    assert "check_answer" in ns or not asked(chapter_path), (
        f"{chapter_path.name} asks questions but its import cells do not import check_answer")
    return chapter_path, asked(chapter_path)


def test_questions_asked_are_registered(chapter_path: Path) -> None:
    path, qids = _chapter(chapter_path)
    missing = [q for q in qids if q not in selfcheck.REGISTRY]
    assert not missing, f"{path.name} asks unregistered questions {missing}"


def test_placeholders_are_never_a_correct_answer(chapter_path: Path) -> None:
    path, qids = _chapter(chapter_path)
    bad = []
    for qid, literal in placeholders(path):
        if qid not in selfcheck.REGISTRY:
            continue
        if not literal:
            bad.append(f"{qid}: the check_answer cell has no '# your answer, e.g. <literal>'")
            continue
        try:
            seeds = _never_correct(qid, literal)
        except (ValueError, SyntaxError):
            bad.append(f"{qid}: placeholder {literal!r} is not a Python literal")
            continue
        if seeds:
            bad.append(f"{qid}: placeholder {literal} is correct for seeds {seeds[:8]}")
    for qid in qids:
        if qid not in selfcheck.REGISTRY:
            continue
        for seed in SEEDS:
            for literal in TEXT_EXAMPLE.findall(selfcheck.ask(qid, seed=seed).text):
                hits = _never_correct(qid, literal)
                if seed in hits:
                    bad.append(f"{qid}: the question's example {literal} is its answer "
                               f"at seed {seed}")
    assert not bad, f"{path.name}:\n" + "\n".join(bad)


def test_hint_names_resolve_in_the_chapter(chapter_path: Path) -> None:
    path, qids = _chapter(chapter_path)
    ns = namespace(path)
    bad = []
    for qid in qids:
        check = selfcheck.REGISTRY.get(qid)
        if check is None:
            continue
        unknown = [n for n in hint_names(check.hint) if not _resolves(n, ns)]
        if unknown:
            bad.append(f"{qid}: hint names {unknown}, unknown in the chapter's namespace")
    assert not bad, f"{path.name}:\n" + "\n".join(bad)


@pytest.mark.parametrize("hint", ["a `ghost_function` here", "call no_such_thing() now"])
def test_an_unknown_hint_name_is_caught(hint: str) -> None:
    assert not all(_resolves(n, {"ask": selfcheck.ask}) for n in hint_names(hint))


def test_a_correct_placeholder_is_caught() -> None:
    qid = "ch0.chapter-of"
    answer = selfcheck.solution(qid, seed=0)
    assert 0 in _never_correct(qid, repr(answer))

"""The glossary and the syllabus document stay consistent with the chapters and the course map.

- ``notebooks/glossary.md``: every row has the four columns (English, 中文, meaning, chapter) and a
  unique anchor; every ``glossary.md#anchor`` link in a chapter and every entry of the Chinese
  index points at a row that exists.
- ``docs/syllabus.md``: exactly the ids of :data:`virtcore.viz.course.SYLLABUS` (S1.1 … S6.5,
  N1 … N8), once each, each with a "taught in" cell; every notebook it names is in the course map.
"""

from __future__ import annotations

import re
from pathlib import Path

from virtcore.viz import course

REPO_ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = REPO_ROOT / "notebooks" / "glossary.md"
SYLLABUS_DOC = REPO_ROOT / "docs" / "syllabus.md"
ROW = re.compile(r'^\| <a id="([a-z0-9-]+)" name="\1"></a>\*\*[^*]+\*\* \|')


def _rows() -> list[str]:
    return [line for line in GLOSSARY.read_text(encoding="utf-8").splitlines()
            if line.startswith("| <a id=")]


def anchors() -> list[str]:
    return [m.group(1) for line in _rows() if (m := ROW.match(line))]


def test_glossary_rows_have_four_columns_and_unique_anchors() -> None:
    rows = _rows()
    assert len(rows) > 50
    malformed = [r[:80] for r in rows if not ROW.match(r) or r.count(" | ") != 3
                 or not r.endswith(" |")]
    assert not malformed, "rows not in the glossary's format:\n" + "\n".join(malformed)
    names = anchors()
    assert len(names) == len(set(names)), sorted({a for a in names if names.count(a) > 1})


def test_every_glossary_link_and_index_entry_resolves() -> None:
    known = set(anchors())
    bad = []
    for nb in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for anchor in re.findall(r"glossary\.md#([a-z0-9-]+)", nb.read_text(encoding="utf-8")):
            if anchor not in known:
                bad.append(f"{nb.name}: glossary.md#{anchor}")
    index = GLOSSARY.read_text(encoding="utf-8").split("## 中文索引", 1)[1]
    bad += [f"Chinese index: #{a}" for a in re.findall(r"\]\(#([a-z0-9-]+)\)", index)
            if a not in known]
    assert not bad, "links to glossary rows that do not exist:\n" + "\n".join(sorted(set(bad)))


def test_syllabus_document_states_every_claim_once_with_where_it_is_taught() -> None:
    text = SYLLABUS_DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| ((?:S\d+\.\d+)|(?:N\d)) \| (.+) \| (.+) \|$", text, re.M)
    ids = [r[0] for r in rows]
    assert sorted(ids) == sorted(course.SYLLABUS), (
        set(ids) ^ set(course.SYLLABUS), [i for i in ids if ids.count(i) > 1])
    assert all(claim.strip() and where.strip() for _, claim, where in rows)
    # a notebook it names is planned in the course map or exists
    known = {c.stem for c in course.COURSE if c.stem}
    known |= {p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")}
    named = set(re.findall(r"`(\d\d[ab]?-[a-z-]+|kvm-walkthrough)`", text))
    assert named and named <= known, named - known

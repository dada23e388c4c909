"""What is committed stays clean: notebooks without outputs, no nbgrader products, a .gitignore.

Notebooks checked
    In a git checkout: every tracked ``*.ipynb`` as recorded in the index (what is or will be
    committed), so a chapter that JupyterLab autosaved with outputs in the working tree does not
    fail the suite until it is staged; plus the not-yet-added, not-ignored notebooks under
    ``notebooks/`` and ``course/source/`` (about to be committed). Outside git: the notebooks
    under ``notebooks/`` and ``course/source/``. Finding no notebook at all fails.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("notebooks", "course/source")
NBGRADER_PRODUCTS = ("release", "submitted", "autograded", "feedback")
GITIGNORE_MUST_COVER = [
    "test-artefacts/x.png",
    ".venv/bin/python",
    "course/release/ps1/a.ipynb",
    "course/submitted/s1/ps1/a.ipynb",
    "course/autograded/s1/ps1/a.ipynb",
    "course/feedback/s1/ps1/a.html",
    "course/gradebook.db",
    "notebooks/.ipynb_checkpoints/00-start-here-checkpoint.ipynb",
]
GITIGNORE_MUST_NOT_COVER = [
    "notebooks/00-start-here.ipynb",
    "course/source/ps1/ps1.ipynb",
    "course/nbgrader_config.py",
    "virtcore/__init__.py",
    "tests/test_repo_hygiene.py",
]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
    )


def _is_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    proc = _git("rev-parse", "--show-toplevel")
    return proc.returncode == 0 and Path(proc.stdout.strip()).resolve() == REPO_ROOT


def tracked_files() -> list[str] | None:
    """Paths in the git index, or None when this is not a git checkout."""
    if not _is_git_checkout():
        return None
    proc = _git("ls-files", "-z")
    assert proc.returncode == 0, proc.stderr
    return [p for p in proc.stdout.split("\0") if p]


def committed_notebooks() -> list[tuple[str, str]]:
    """``(path, JSON text)`` of each notebook to check (see the module docstring)."""
    tracked = tracked_files()
    if tracked is None:  # not a git checkout
        found = sorted(
            p
            for base in SOURCE_DIRS
            for p in (REPO_ROOT / base).rglob("*.ipynb")
            if ".ipynb_checkpoints" not in p.parts
        )
        return [(str(p.relative_to(REPO_ROOT)), p.read_text(encoding="utf-8")) for p in found]
    out = []
    for path in sorted(p for p in tracked if p.endswith(".ipynb")):
        blob = _git("show", f":{path}")
        assert blob.returncode == 0, blob.stderr
        out.append((path, blob.stdout))
    new = _git("ls-files", "-z", "--others", "--exclude-standard", "--", *SOURCE_DIRS)
    for path in sorted(p for p in new.stdout.split("\0") if p.endswith(".ipynb")):
        out.append((path, (REPO_ROOT / path).read_text(encoding="utf-8")))
    return out


NOTEBOOKS = committed_notebooks()


def test_there_are_notebooks_to_check() -> None:
    assert NOTEBOOKS, "no committed notebooks found (git index, notebooks/, course/source/)"


@pytest.mark.parametrize(
    ("path", "text"), NOTEBOOKS or [("<none>", "")], ids=[p for p, _ in NOTEBOOKS] or ["none"]
)
def test_notebook_is_clean_nbformat4(path: str, text: str) -> None:
    """Valid nbformat 4, no outputs, no execution counts, a ``python3`` kernelspec."""
    assert text, "no notebooks to check"
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4, f"{path}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)
    dirty = [
        f"cell #{i}: "
        + ", ".join(
            (["outputs"] if cell.get("outputs") else [])
            + ([f"execution_count={cell.execution_count}"] if cell.get("execution_count") else [])
        )
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path} is committed with outputs (clear them: "
        f"`jupyter nbconvert --clear-output --inplace {path}`):\n" + "\n".join(dirty)
    )
    # Without a kernelspec JupyterLab asks the student to pick a kernel before anything runs.
    kernelspec = nb.metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3", f"{path}: kernelspec {kernelspec!r}"


def test_no_generated_nbgrader_files_are_tracked() -> None:
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    bad = [
        p
        for p in tracked
        if any(p.startswith(f"course/{d}/") for d in NBGRADER_PRODUCTS)
        or fnmatch.fnmatch(Path(p).name, "gradebook.db")
        or p.startswith(("test-artefacts/", ".venv/"))
    ]
    assert not bad, "generated files are tracked:\n" + "\n".join(bad)


def _ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.split())


def test_gitignore_covers_generated_files_only() -> None:
    assert (REPO_ROOT / ".gitignore").is_file(), ".gitignore is missing"
    if not _is_git_checkout():
        pytest.skip("not a git checkout (git check-ignore needs one)")
    ignored = _ignored(GITIGNORE_MUST_COVER + GITIGNORE_MUST_NOT_COVER)
    missing = [p for p in GITIGNORE_MUST_COVER if p not in ignored]
    wrong = [p for p in GITIGNORE_MUST_NOT_COVER if p in ignored]
    assert not missing, f".gitignore does not cover {missing}"
    assert not wrong, f".gitignore hides source files {wrong}"


# ---------------------------------------------------------------------------
# sources: nothing outside the repository; every cited id exists

#: Text that points outside the repository: the material beside it, a helper's working tree, a
#: home directory. (Assembled from pieces so that this file does not match itself.)
OUTSIDE = re.compile(
    "|".join([
        "virtualization" + "-facts",
        "/" + "work/",
        r"\.\./" + "shared",
        "shared/" + r"(?:syllabus|style|design|reference|seeds)",
        r"(?<![\w/-])(?:design|style|tooling-notes)" + r"\.md\b",  # files beside the repository
        r"(?<![\w.])/" + r"home/[a-z_][\w-]*/",
        r"(?<![\w.])/" + r"root/",
        r"(?<![\w.])/" + r"Users/[A-Za-z]",
    ])
)
#: deploy/ creates the course's accounts and names their home directories on purpose.
OUTSIDE_ALLOWED = ("deploy/",)
TEXT_SUFFIXES = {".py", ".ipynb", ".md", ".toml", ".cfg", ".txt", ".sh", ".yml", ".yaml", ".json",
                 ".rst", ".ini", ".html", ".j2", ""}
#: Directories whose files cite sources by id.
CITING_DIRS = ("virtcore/", "notebooks/", "course/source/", "autograder/", "docs/")

#: A citation: ``[ID]``, ``[ID §4.59]``, ``[ID1; ID2 fn()]``, ``[ID1, ID2]``. The bracket must not
#: follow a word character or a closing bracket (``regs[RAX]``, ``list[str]``) and must not be a
#: Markdown link (``[KVM](glossary.md#kvm)``); its first token must look like an id (capitals,
#: digits, hyphens, at least two characters, not a syllabus id such as N5 or S3.1). To tolerate
#: ordinary bracketed words (``[FAIL]``, ``[PV]``), a plain capitalised word counts as a citation
#: only in a bracket that is clearly one (``;`` between ids, or a ``§``); ids with a digit or a
#: hyphen (``[KVM-API]``, ``[PG74]``) always count.
CITATION = re.compile(r"(?<![\w\])`'\"])\[([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)"
                      r"((?:[ ,;§:][^\[\]\n]*)?)\](?!\()")
ID_TOKEN = re.compile(r"(?:^|[;,]\s*)([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)(?=$|[\s,;§:])")
NOT_AN_ID = re.compile(r"^(?:[SN]\d+|[A-Z])$")


def _tracked_text_files() -> list[str]:
    tracked = tracked_files()
    if tracked is None:
        tracked = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*")
                   if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts]
    here = str(Path(__file__).resolve().relative_to(REPO_ROOT))
    return [p for p in tracked
            if Path(p).suffix in TEXT_SUFFIXES and p != here and (REPO_ROOT / p).is_file()]


def _read(path: str) -> str:
    try:
        return (REPO_ROOT / path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def reference_ids() -> set[str]:
    """The ids ``docs/references.md`` defines: the first cell of each table row, ``| [ID] |``."""
    text = (REPO_ROOT / "docs" / "references.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\|\s*\[([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)\]\s*\|", text, re.M))


_KNOWN: set[str] = set()


def cited_ids(text: str) -> list[str]:
    """Every id cited in ``text`` (see :data:`CITATION`).

    >>> cited_ids("x [KVM-API §4.59; KVM-X86 f] [KVM](a.md) regs[RAX] [N5] [LWN15] [FAIL]")
    ['KVM-API', 'KVM-X86', 'LWN15']
    """
    out = []
    for m in CITATION.finditer(text):
        body = m.group(1) + m.group(2)
        surely = ";" in body or "§" in body
        for tok in ID_TOKEN.findall(body):
            if NOT_AN_ID.match(tok) or len(tok) < 2:
                continue
            if surely or "-" in tok or any(c.isdigit() for c in tok) or tok in _KNOWN:
                out.append(tok)
    return out


def test_citation_syntax_examples() -> None:
    _KNOWN.update(reference_ids())
    assert cited_ids("[KVM-API §4.59; KVM-X86 ``kvm_emulate_halt``]") == ["KVM-API", "KVM-X86"]
    assert cited_ids("[BHAR08, STOJ22] and [LOCAL]") == ["BHAR08", "STOJ22", "LOCAL"]
    assert cited_ids("[VSPEC; RING x.h]") == ["VSPEC", "RING"]  # clearly citations: checked
    assert cited_ids("see [KVM](glossary.md#kvm), list[ExitRecord], regs[RAX], [i], [0x10]") == []
    assert cited_ids("claims [S3.1] and [N5]; a range [1, 2]") == []


def test_no_text_refers_to_a_path_outside_the_repository() -> None:
    """No tracked text file points at material beside the repository or at a home directory."""
    bad = []
    for path in _tracked_text_files():
        for n, line in enumerate(_read(path).splitlines(), 1):
            if OUTSIDE.search(line) and not (path.startswith(OUTSIDE_ALLOWED)
                                             and "virtualization" not in line):
                bad.append(f"{path}:{n}: {line.strip()[:120]}")
    assert not bad, ("text refers to a path outside the repository — cite docs/references.md by "
                     "id instead:\n" + "\n".join(bad))


def test_every_cited_id_is_in_references_md() -> None:
    """Each ``[ID]`` cited in the library, chapters, assignments, grader and docs is defined."""
    known = reference_ids()
    assert len(known) > 20, "docs/references.md defines almost no ids"
    _KNOWN.update(known)
    bad = []
    for path in _tracked_text_files():
        if not path.startswith(CITING_DIRS) or path == "docs/references.md":
            continue
        for n, line in enumerate(_read(path).splitlines(), 1):
            unknown = [i for i in cited_ids(line) if i not in known]
            if unknown:
                bad.append(f"{path}:{n}: {', '.join(unknown)}")
    assert not bad, "cited ids missing from docs/references.md:\n" + "\n".join(bad)

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

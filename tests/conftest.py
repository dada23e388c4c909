"""Shared fixtures: the repository, its chapter notebooks, an artefacts directory, JupyterLab.

Chapters
    Every ``notebooks/*.ipynb`` (sorted, checkpoints excluded). Any test that takes a ``chapter``
    argument is parametrized over them. With no chapters the parametrization holds a single
    ``no-chapters`` case that FAILS, so an empty or misplaced ``notebooks/`` can never pass.
    For development only, ``VIRTCORE_NOTEBOOKS=<glob>`` (relative to the repository root, or
    absolute) replaces the list, e.g. ``VIRTCORE_NOTEBOOKS='/tmp/scratch/*.ipynb'``.

Artefacts
    ``test-artefacts/`` at the repository root (git-ignored): browser screenshots, logs.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
ARTEFACTS_DIR = REPO_ROOT / "test-artefacts"
NOTEBOOKS_ENV = "VIRTCORE_NOTEBOOKS"


def _load_jupyter_helpers() -> ModuleType:
    """Import ``tests/_jupyter.py`` by path (works under ``--import-mode=importlib``)."""
    name = "_virtcore_tests_jupyter"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_jupyter.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


jupyter_helpers = _load_jupyter_helpers()


def find_chapters() -> list[Path]:
    """The chapter notebooks: sorted ``notebooks/*.ipynb``, or the ``VIRTCORE_NOTEBOOKS`` glob."""
    pattern = os.environ.get(NOTEBOOKS_ENV)
    if pattern:
        base = Path(pattern) if Path(pattern).is_absolute() else REPO_ROOT / pattern
        found = [Path(p) for p in glob.glob(str(base), recursive=True)]
    else:
        found = list(NOTEBOOKS_DIR.glob("*.ipynb"))
    return sorted(p.resolve() for p in found if p.is_file() and ".ipynb_checkpoints" not in p.parts)


CHAPTERS = find_chapters()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that takes ``chapter`` over :data:`CHAPTERS` (see module doc)."""
    if "chapter" in metafunc.fixturenames:
        if CHAPTERS:
            metafunc.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
        else:
            metafunc.parametrize("chapter", [None], ids=["no-chapters"])


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which chapters the notebook and browser tests run."""
    source = os.environ.get(NOTEBOOKS_ENV) or "notebooks/*.ipynb"
    return [f"virtcore chapters ({source}): {len(CHAPTERS)} — {[p.name for p in CHAPTERS]}"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def chapters() -> list[Path]:
    """All chapter notebooks (sorted); fails the test when there are none."""
    if not CHAPTERS:
        pytest.fail(f"no chapter notebooks found ({NOTEBOOKS_ENV} or {NOTEBOOKS_DIR}/*.ipynb)")
    return CHAPTERS


@pytest.fixture
def chapter_path(chapter: Path | None) -> Path:
    """The parametrized chapter; fails (never skips) the ``no-chapters`` case."""
    if chapter is None:
        pytest.fail(
            f"no chapter notebooks found in {NOTEBOOKS_DIR} "
            f"(or in ${NOTEBOOKS_ENV}={os.environ.get(NOTEBOOKS_ENV)!r}); "
            "the chapter tests must run on at least one notebook"
        )
    return chapter


@pytest.fixture(scope="session")
def artefacts_dir() -> Path:
    """``test-artefacts/`` at the repository root (created on demand, git-ignored)."""
    ARTEFACTS_DIR.mkdir(exist_ok=True)
    return ARTEFACTS_DIR


@pytest.fixture(scope="session")
def kernel_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir whose only kernelspec, ``python3``, runs this very Python."""
    data_dir = tmp_path_factory.mktemp("jupyter-data")
    jupyter_helpers.write_kernelspec(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A private JupyterLab server (``tests/_jupyter.py``), stopped with SIGTERM at the end.

    Its root is the repository root (or, with ``VIRTCORE_NOTEBOOKS`` pointing elsewhere, the
    common ancestor of the repository and the chapters). The log is copied to
    ``test-artefacts/browser/jupyterlab.log``.
    """
    root = Path(os.path.commonpath([REPO_ROOT, *(p.parent for p in CHAPTERS)]))
    server = jupyter_helpers.start_lab(root, tmp_path_factory.mktemp("jupyterlab"))
    try:
        yield server
    finally:
        server.stop()
        out = ARTEFACTS_DIR / "browser"
        out.mkdir(parents=True, exist_ok=True)
        (out / "jupyterlab.log").write_text(server.log(), encoding="utf-8")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Attach the JupyterLab log (last 200 lines) to the report of a failing browser test."""
    report = yield
    server = getattr(item, "funcargs", {}).get("lab_server")
    if report.failed and report.when == "call" and server is not None:
        tail = "\n".join(server.log().splitlines()[-200:])
        report.sections.append(("JupyterLab log (last 200 lines)", tail))
    return report

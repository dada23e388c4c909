"""Every chapter runs top to bottom, headless, with this venv's Python and without errors.

Each chapter (``notebooks/*.ipynb``, see ``conftest.py``) is executed once per session with
nbclient in a fresh kernel whose kernelspec runs :data:`sys.executable` (the venv that runs
pytest, not a ``python3`` kernel registered elsewhere), in the notebook's directory.

Time limits
    Each cell may run for at most :data:`CELL_TIMEOUT` s, and a whole notebook (kernel start
    included) for at most :data:`NOTEBOOK_LIMIT` s. The notebook limit is enforced through
    nbclient's ``timeout_func``: every cell's timeout is the smaller of the cell limit and what
    is left of the notebook budget, so an over-long notebook stops with nbclient's own
    ``CellTimeoutError`` and nbclient still shuts its kernel down (``shutdown_kernel=
    "immediate"``). No signal or thread is needed, and no kernel is left behind. Between cells
    nbclient may wait up to its ``iopub_timeout`` (4 s) for late output, so a notebook stops at
    most a few seconds after its budget is spent; the elapsed time is then checked as well.

Errors
    Chapters must not show errors at all: a cell tagged ``raises-exception`` still fails these
    tests (show a library error with ``try``/``except`` and print it instead). Cells tagged
    ``skip-execution`` are not skipped, because JupyterLab's Run All does not skip them either.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

pytestmark = pytest.mark.notebook

CELL_TIMEOUT = 60
NOTEBOOK_LIMIT = 120
STARTUP_TIMEOUT = 60

#: stderr text that counts as an error shown to the reader.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Run:
    """The outcome of executing one notebook."""

    nb: Any
    seconds: float
    error: BaseException | None = None
    cell_index: int | None = None
    budget_bound: bool = False  # the failing cell's timeout was cut to what the notebook had left
    widget_state: dict[str, Any] = field(default_factory=dict)


_RUNS: dict[Path, Run] = {}


def _kernel_env(repo_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as in JupyterLab
    return env


def execute_notebook(path: Path, kernel_data_dir: Path, repo_root: Path) -> Run:
    """Execute ``path`` with nbclient under the time limits of the module docstring."""
    nb = nbformat.read(path, as_version=4)
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_data_dir / "kernels")])
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)
    start = time.monotonic()
    deadline = start + NOTEBOOK_LIMIT
    current: dict[str, int] = {}

    def timeout_for(cell: Any) -> int:
        left = math.ceil(deadline - time.monotonic())
        current["budget_bound"] = int(left < CELL_TIMEOUT)
        return max(1, min(CELL_TIMEOUT, left))

    def on_cell_execute(cell: Any, cell_index: int) -> None:
        current["index"] = cell_index

    client = NotebookClient(
        nb,
        km=km,
        timeout_func=timeout_for,
        startup_timeout=STARTUP_TIMEOUT,
        shutdown_kernel="immediate",
        skip_cells_with_tag="virtcore-tests-never-skip",
        on_cell_execute=on_cell_execute,
        resources={"metadata": {"path": str(path.parent)}},
    )
    run = Run(nb=nb, seconds=0.0)
    try:
        # cleanup_kc: nbclient shuts down a kernel it was given (km=) only when asked to.
        client.execute(env=_kernel_env(repo_root), cleanup_kc=True)
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as exc:
        run.error = exc
        run.cell_index = current.get("index")
        run.budget_bound = bool(current.get("budget_bound"))
    finally:
        if km.has_kernel:  # start-up failed before nbclient took charge of the kernel
            run_sync(km.shutdown_kernel)(now=True)
            run_sync(km.cleanup_resources)()
    run.seconds = time.monotonic() - start
    run.widget_state = dict(getattr(client, "widget_state", {}) or {})
    return run


@pytest.fixture
def executed(chapter_path: Path, kernel_data_dir: Path, repo_root: Path) -> Run:
    """The chapter, executed once per session (shared by the tests below)."""
    if chapter_path not in _RUNS:
        _RUNS[chapter_path] = execute_notebook(chapter_path, kernel_data_dir, repo_root)
    return _RUNS[chapter_path]


def _describe_failure(path: Path, run: Run) -> str:
    exc = run.error
    where = "kernel start-up" if run.cell_index is None else f"cell #{run.cell_index}"
    lines = [f"{path.name}: {type(exc).__name__} in {where} after {run.seconds:.1f} s"]
    if run.cell_index is not None:
        cell = run.nb.cells[run.cell_index]
        lines += ["--- source ---", cell.source]
    if isinstance(exc, CellTimeoutError):
        if run.budget_bound:
            limit = f"notebook limit {NOTEBOOK_LIMIT} s"
        else:
            limit = f"cell limit {CELL_TIMEOUT} s"
        lines.append(f"--- timed out ({limit}) ---")
    lines += ["--- error ---", ANSI.sub("", str(exc))]
    return "\n".join(lines)


def test_chapter_runs_headless(chapter_path: Path, executed: Run) -> None:
    """The chapter executes top to bottom without an error, within the time limits."""
    if executed.error is not None:
        pytest.fail(_describe_failure(chapter_path, executed), pytrace=False)
    assert executed.seconds <= NOTEBOOK_LIMIT + 5, (
        f"{chapter_path.name} took {executed.seconds:.1f} s (limit {NOTEBOOK_LIMIT} s)"
    )


def _error_outputs(outputs: list[Any]) -> list[str]:
    found = []
    for out in outputs:
        if out.get("output_type") == "error":
            found.append(f"{out.get('ename')}: {out.get('evalue')}")
        elif out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = "".join(out.get("text", ""))
            if ERROR_TEXT.search(text):
                found.append(f"stderr: {text.strip()[:500]}")
    return found


def test_chapter_every_cell_ran_without_error_output(chapter_path: Path, executed: Run) -> None:
    """Every non-empty code cell ran; no output, and no widget output, is an error."""
    problems = []
    for index, cell in enumerate(executed.nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell #{index} never ran: {cell.source.strip()[:80]!r}")
        problems += [f"cell #{index} shows {e}" for e in _error_outputs(cell.get("outputs", []))]
    for comm_id, state in executed.widget_state.items():
        outputs = state.get("outputs") if isinstance(state, dict) else None
        if isinstance(outputs, list):
            problems += [f"widget {comm_id} shows {e}" for e in _error_outputs(outputs)]
    assert not problems, f"{chapter_path.name}:\n" + "\n".join(problems)


def test_kernel_runs_this_python_and_this_tree(
    kernel_data_dir: Path, repo_root: Path, tmp_path: Path
) -> None:
    """The chapters' kernel is the venv's Python and imports virtcore from this checkout."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import sys, virtcore\n"
            "print(sys.prefix)\nprint(sys.executable)\nprint(virtcore.__file__)"
        )
    ]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    run = execute_notebook(path, kernel_data_dir, repo_root)
    assert run.error is None, _describe_failure(path, run)
    prefix, executable, virtcore_file = run.nb.cells[0].outputs[0]["text"].splitlines()
    assert (prefix, executable) == (sys.prefix, sys.executable)
    assert Path(virtcore_file).resolve().is_relative_to(repo_root / "virtcore"), virtcore_file

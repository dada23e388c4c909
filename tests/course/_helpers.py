"""Helpers for the course pipeline tests (loaded by path): a temporary course, the CLI, notebooks.

Every test here works in a copy of the course directory under pytest's tmp_path, never in
``course/`` itself.  The CLI runs as ``python -m autograder`` in a subprocess and nbgrader as
``python -m nbgrader``, with this virtual environment's ``bin/`` first on PATH (nbgrader runs
``alembic`` by name when it creates a gradebook).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parents[2]
COURSE = REPO / "course"
BIN = Path(sys.executable).parent
A1 = "a1_trap_and_emulate"
A2 = "a2_credit_scheduler"
NOTEBOOK = {A1: "trap_and_emulate.ipynb", A2: "credit_scheduler.ipynb"}
#: A fixed course secret: the per-student hidden cases are the same in every test run.
SECRET = "virtcore-pipeline-tests-0001"


def env() -> dict[str, str]:
    """The environment of every subprocess: venv bin first, no course secret or DB override."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["JUPYTER_PREFER_ENV_PATH"] = "1"
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    for k in ("VIRTCORE_COURSE_SECRET", "VIRTCORE_GRADEBOOK_URL", "VIRTCORE_EXCHANGE"):
        e.pop(k, None)
    e["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return e


def run_cli(course: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m autograder <args> --course <course>``; asserts success unless ``ok=False``."""
    proc = subprocess.run([sys.executable, "-m", "autograder", *args, "--course", str(course)],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=900,
                          check=False)
    if ok:
        assert proc.returncode == 0, (f"autograder {' '.join(args)} failed ({proc.returncode}):"
                                      f"\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_nbgrader(course: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m nbgrader <args>`` in the course directory."""
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env(),
                          capture_output=True, text=True, timeout=900, check=False)
    if ok:
        assert proc.returncode == 0, (f"nbgrader {' '.join(args)} failed ({proc.returncode}):"
                                      f"\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_course(dest: Path) -> Path:
    """A fresh course directory: the config and the sources, plus the fixed secret (mode 600)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(COURSE / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(COURSE / "source", dest / "source",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    secret = dest / ".course_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return dest


# -- notebooks ------------------------------------------------------------------------------------


def read_nb(path: Path) -> Any:
    return nbformat.read(str(path), as_version=4)


def write_nb(nb: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def nbg(cell: Any) -> dict[str, Any]:
    return cell.get("metadata", {}).get("nbgrader", {})


def strip_markers(source: str) -> str:
    """A solution cell's code without the ``### BEGIN/END SOLUTION`` lines."""
    return "\n".join(ln for ln in source.splitlines()
                     if "BEGIN SOLUTION" not in ln and "END SOLUTION" not in ln)


def solved(release: Path, source: Path, **replace: str) -> Any:
    """The released notebook with every answer cell filled in as a good student would.

    ``replace`` maps a grade id to the code to put in that answer cell instead.
    """
    src = {nbg(c).get("grade_id"): c.source
           for c in read_nb(source).cells if nbg(c).get("solution")}
    nb = read_nb(release)
    for cell in nb.cells:
        gid = nbg(cell).get("grade_id")
        if nbg(cell).get("solution") and gid in src:
            cell.source = replace.get(gid, strip_markers(src[gid]))
    return nb


def without_test_cells(nb: Any) -> Any:
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if not nbg(c).get("grade")]
    return nb


def with_edited_test_cells(nb: Any) -> Any:
    """Every test cell reduced to ``assert True`` and claiming 1000 points."""
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        if nbg(c).get("grade"):
            c.source = "assert True  # all good, trust me"
            c.metadata["nbgrader"]["points"] = 1000
    return nb


def result_json(course: Path, student: str, assignment: str) -> dict[str, Any]:
    path = course / "autograded" / student / assignment / "virtcore-result.json"
    return json.loads(path.read_text())


def notebook_namespace(assignment: str, grade_ids: tuple[str, ...]) -> dict[str, Any]:
    """Execute the source notebook's cells with these grade ids (in order); their namespace."""
    nb = read_nb(COURSE / "source" / assignment / NOTEBOOK[assignment])
    ns: dict[str, Any] = {"__name__": "__main__"}
    by_id = {nbg(c).get("grade_id"): c for c in nb.cells}
    for gid in grade_ids:
        exec(compile(strip_markers(by_id[gid].source), f"<{gid}>", "exec"), ns)
    return ns


def hardcoded_caps(visible_caps: set[int],
                   visible_domains: list[list[dict[str, Any]]] | None = None) -> str:
    """An answer cell for the caps part that is right only for the caps of the visible checks.

    With ``visible_domains`` (each visible case's domains), it enforces caps only on exactly
    those workloads: it then fails every hidden case that is not a copy of a visible one
    (hidden draws that happen to use only visible caps included).
    """
    table = {c: -(-c * 300 // 100) for c in sorted(visible_caps | {50, 1})}
    known = sorted(sorted((d["name"], d["weight"], d["cap"]) for d in doms)
                   for doms in visible_domains or [])
    guard = ("" if visible_domains is None else
             f"    if sorted((d.name, d.weight, d.cap) for d in sched.doms.values()) not in"
             f" {known!r}:\n        return  # not a visible workload\n")
    return f'''
def cap_peak(cap):
    """Hard-codes the answers of the visible checks."""
    return {table!r}.get(cap, 300)


def enforce_cap(sched, unit, unit_cap):
{guard}    if unit.credit < -unit_cap and not unit.parked:
        sched.park(unit)
    elif unit.credit >= 0 and unit.parked:
        sched.unpark(unit)
'''

"""Helpers of the attack catalogue (loaded by path): hostile notebooks graded by the real CLI.

Every submission is the course's own source notebook with its answer cells replaced: the
*blank* has every answer cell ``raise NotImplementedError()``; a hostile submission is the
blank with the cells of a ``solutions/<file>.py`` laid over it (so it scores only what its
attack wins); the *reference* is the source's own solutions.  :func:`grade_batch` writes
them into ``submitted/`` of a fresh course copy and runs ``python -m autograder grade`` once
for all of them, in parallel — the way an instructor grades a class.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = Path(__file__).resolve().parent / "solutions"
SECRET = "attack-catalogue-secret-0123456789abcdef"
NOTEBOOKS = {"a1_trap_and_emulate": "trap_and_emulate.ipynb",
             "a2_credit_scheduler": "credit_scheduler.ipynb",
             "a3_userspace_vmm": "userspace_vmm.ipynb"}
BLANK = "raise NotImplementedError()\n"


def _nbg(cell: Any) -> dict[str, Any]:
    return cell.get("metadata", {}).get("nbgrader", {})


def _strip(source: str) -> str:
    return "\n".join(ln for ln in source.splitlines()
                     if "BEGIN SOLUTION" not in ln and "END SOLUTION" not in ln) + "\n"


def cells_of(name: str) -> dict[str, str]:
    """The ``# %% <grade_id>`` blocks of a solution file."""
    text = (SOLUTIONS / name).read_text(encoding="utf-8")
    parts = re.split(r"^# %% (\w+)\n", text, flags=re.M)
    return {parts[i]: parts[i + 1].strip() + "\n" for i in range(1, len(parts), 2)}


def source_nb(assignment: str, root: Path = REPO) -> Any:
    return nbformat.read(str(root / "course" / "source" / assignment / NOTEBOOKS[assignment]),
                         as_version=4)


def submission(assignment: str, cells: dict[str, str] | None = None, *, blank: bool = True,
               extra: list[str] = ()) -> Any:  # type: ignore[assignment]
    """The source notebook with its answer cells replaced (blank unless ``blank=False``:
    then the source's solutions), ``cells`` laid over, and ``extra`` answer cells appended."""
    nb = copy.deepcopy(source_nb(assignment))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
        nbg = _nbg(cell)
        if nbg.get("solution"):
            gid = nbg.get("grade_id")
            cell.source = (cells or {}).get(gid, BLANK if blank else _strip(cell.source))
    for i, src in enumerate(extra):
        c = nbformat.v4.new_code_cell(src)
        c.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": f"extra_{i}",
                                  "locked": False, "schema_version": 3}
        nb.cells.append(c)
    return nb


def hostile(assignment: str, name: str) -> Any:
    """The blank with the cells of ``solutions/<name>`` laid over it."""
    return submission(assignment, cells_of(name))


def reference(assignment: str) -> Any:
    return submission(assignment, blank=False)


def env(tmp: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("VIRTCORE_")}
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '/usr/bin:/bin')}"
    e["PYTHONPATH"] = str(REPO)
    e["TMPDIR"] = str(tmp)  # every temporary file of the grader, and its sandboxes, in here
    e["JUPYTER_PREFER_ENV_PATH"] = "1"
    e["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return e


def new_course(dest: Path, *, repo: Path = REPO) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(repo / "course" / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(repo / "course" / "source", dest / "source",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    secret = dest / ".course_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return dest


def cli(course: Path, tmp: Path, *args: str, python: str = sys.executable, repo: Path = REPO,
        user: tuple[str, ...] = (), timeout: float = 1200,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m autograder <args> --course <course>`` (as ``user`` via setpriv if given)."""
    e = env(tmp)
    e["PYTHONPATH"] = str(repo)
    e.update(extra_env or {})
    cmd = [*user, python, "-m", "autograder", *args, "--course", str(course)]
    return subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True,
                          timeout=timeout, check=False)


def put(course: Path, assignment: str, student: str, nb: Any | bytes) -> Path:
    path = course / "submitted" / student / assignment / NOTEBOOKS[assignment]
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, bytes):
        path.write_bytes(nb)
    else:
        nbformat.write(nb, str(path))
    return path


def results(course: Path, assignment: str) -> dict[str, dict[str, Any]]:
    """student → the cached result (what ``grade`` recorded)."""
    out = {}
    for path in sorted((course / "autograded").glob(f"*/{assignment}/virtcore-result.json")):
        out[path.parent.parent.name] = json.loads(path.read_text())["result"]
    return out


def tree_hash(root: Path) -> str:
    """One hash of every file's path, mode and bytes under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(oct(path.stat().st_mode).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def leftovers(tmp: Path) -> list[str]:
    """Processes still running whose command line or environment mentions ``tmp``."""
    out = []
    mark = str(tmp).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            envb = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if mark in cmd or mark in envb:
            shown = cmd.replace(b"\0", b" ")[:200]
            out.append(f"{pid}: {shown!r}")
    return out


def gradebook_token(marker: str) -> str:
    """What :func:`fs_attack` tries to append to the gradebook (it never appears in messages)."""
    return "GB-" + marker[::-1]


def fs_attack(course: Path, marker: str, home: str, repo: Path = REPO) -> dict[str, str]:
    """An a1 ``handlers_io`` cell that reads the course secret (file, environment, the
    parent's environment), writes the gradebook, ``nbgrader_config.py``, the checkout and the
    instructor's home, and leaves files in /tmp, /var/tmp and /dev/shm — paths built so the
    scan cannot read them.  What it read comes back in its error message."""
    def parts(path: str) -> str:
        return " + ".join(repr(path[i:i + 5]) for i in range(0, len(path), 5))

    targets = [(str(course / "nbgrader_config.py"), f"\\nc.Exchange.root = '/tmp/{marker}'\\n"),
               (str(course / "gradebook.db"), gradebook_token(marker)),
               (str(repo / f"virtcore-pwned-{marker}"), marker),
               (str(Path(home) / f"virtcore-pwned-{marker}"), marker)]
    writes = "\n".join(f"_write({parts(p)}, {t!r})" for p, t in targets)
    return {"handlers_io": f'''
import os

_loot = []


def _read(path):
    try:
        with open(path, "rb") as f:
            _loot.append(f.read()[:4000].decode("latin-1"))
    except Exception as e:
        _loot.append(type(e).__name__)


def _write(path, text):
    try:
        with open(path, "a") as f:
            f.write(text)
        _loot.append("wrote " + path)
    except Exception as e:
        _loot.append(type(e).__name__)


_read({parts(str(course / ".course_secret"))})
_loot.append(os.environ.get("VIRTCORE_COURSE" + "_SECRET", "-"))
_read("/proc/%d/environ" % os.getppid())
_read("/proc/1/environ")
{writes}
for _d in ("/tmp", "/var/tmp", "/dev/shm"):
    _write(_d + "/virtcore-left-{marker}", "x")


def handle_in(vcpu, insn):
    raise ValueError("|".join(_loot))


handle_out = handle_in
'''}


#: The a1 class graded at once: two correct students, the blank, and the attacks.
A1_ATTACKS = {"execs_reference_source": "a1_execs_reference_source.py",
              "reads_course_source": "a1_reads_course_source.py",
              "kills_other_workers": "a1_kills_other_workers.py"}
A2_ATTACKS = {"execs_reference_source": "a2_execs_reference_source.py",
              "forges_results": "a2_forges_results.py",
              "forges_protocol": "a2_forges_protocol.py",
              "bad_decisions": "a2_bad_decisions.py"}
A3_ATTACKS = {"reads_grader_module": "a3_reads_grader_module.py",
              "vars_sys": "a3_vars_sys.py"}

"""Run the worker (:mod:`autograder.worker`) in a bubblewrap sandbox and collect its messages.

**What the sandbox is** (:func:`bwrap_command`).  Every graded part runs in a bubblewrap
(``bwrap``) sandbox of that part — by default a preloaded worker per part and grading
process that forks a fresh child for each submission (:mod:`autograder.zygote`):

- its own PID, mount, IPC, UTS, network and cgroup namespaces (and a user namespace when the
  grader is not root): it sees no other process (it cannot signal another student's worker
  or open its pipes through ``/proc/<pid>/fd``), has no network, and dies with its parent
  (``--die-with-parent``; ``--new-session`` against terminal injection);
- a root file system built from nothing: read-only binds of ``/usr`` (libc, the loader),
  the interpreter's own prefix, and the **staged library** (:func:`stage`) at ``/sandbox`` —
  nothing of the checkout, ``course/``, the gradebook, the course secret, cached results or
  anyone's home; private ``tmpfs`` at ``/tmp``, ``/var/tmp`` and ``/run`` and a private
  ``/dev`` (so ``/dev/shm`` is private too), all gone when the part ends;
- a clean environment (``PATH``, ``HOME=/tmp``, ``LANG``; nothing inherited, so no
  ``VIRTCORE_COURSE_SECRET``);
- an unprivileged user: as root, ``setpriv`` switches to a uid/gid of the sandbox's own
  (:func:`sandbox_uid`, from :data:`UID_BASE` on) with no groups, no capabilities and
  ``no_new_privs`` *before the interpreter starts*; as an ordinary user the
  user namespace maps the sandbox to that user, who can reach nothing of theirs inside;
- resource limits, set by the worker on itself before any student code runs
  (:class:`Limits`): address space, CPU seconds, file size, open files, no core dumps, no new
  processes.

**What is staged** (:func:`stage`): per (assignment, part) a directory with ``autograder/``
holding only :mod:`autograder.worker` and the harness modules the part needs
(:mod:`autograder.harness`), and a copy of ``virtcore`` in which the part's reference
implementations are *redacted* — their bodies replaced by a ``raise`` — as the assignment's
``sandbox_plan`` says.  Reading a source file, unmarshalling a ``.pyc`` or walking
``vars(sys)`` finds nothing: the reference is not in the sandbox.

**Without bubblewrap** :func:`sandbox_problem` says why; the grader refuses to grade unless
the caller asks for ``sandbox="none"`` (``grade --unsafe-no-sandbox``): then the worker is a
plain subprocess (the same staged library, scrubbed environment, limits, and the drop to
``nobody`` when root) — and the summary says so.

Messages: the task goes in on stdin (JSON); results come back as JSON lines on a dedicated
pipe (fd passed by number); standard output goes to ``/dev/null``; standard error is kept
(its last 8 KiB).  Nothing that comes back is trusted: the grader validates and recomputes.

Outcome (:class:`WorkerRun`): ``"ok"`` (it reported ``done``), ``"timeout"``, ``"memory"``,
``"crashed"`` (a signal, ``os._exit``, a non-zero exit, too much output) or ``"fault"`` (the
sandbox could not start, or the worker died before it was ready to run student code — an
infrastructure failure, retried by the grader and never cached).

>>> run = run_worker({"ping": True}, timeout=20, sandbox=default_sandbox())
>>> run.outcome, run.messages[-1]["type"]
('ok', 'done')
"""

from __future__ import annotations

import ast
import atexit
import compileall
import contextlib
import functools
import itertools
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autograder import zygote
from autograder.worker import NOBODY

__all__ = ["NOBODY", "REDACTED_MARK", "REPO_ROOT", "Limits", "WorkerRun", "adopt_stages",
           "bwrap_command", "default_sandbox", "prestage", "redact_source", "run_worker",
           "sandbox_problem", "stage"]
#: The checkout that holds ``autograder`` and ``virtcore`` (never bound into the sandbox).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: In the message of what a redacted reference raises (the grader scores it as ``integrity``).
REDACTED_MARK = "the reference implementation is not available while grading"
#: Where the staged library appears inside the sandbox.
SANDBOX_LIB = "/sandbox"

_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import autograder.worker as w;"
              " w.main(sys.argv[2:])")
_MAX_MESSAGES_BYTES = 16 * 1024 * 1024
_STDERR_KEEP = 8192
_BWRAP = ("/usr/bin/bwrap", "/bin/bwrap")
#: First uid of the range sandboxes run as when the grader is root: each sandbox gets a uid of
#: its own (:func:`sandbox_uid`), so no process outside it — not even another sandbox, or a
#: host service running as ``nobody`` — has the same uid and can signal it.  The range
#: (``VIRTCORE_SANDBOX_UID_BASE`` + up to 2**28) must belong to no account on the host.
UID_BASE = int(os.environ.get("VIRTCORE_SANDBOX_UID_BASE", "1500000000"))
_UID_SLOTS = 64
_uid_next = itertools.count()
_SETPRIV = "/usr/bin/setpriv"


@dataclass(frozen=True)
class Limits:
    """Resource limits of a worker (set with ``setrlimit`` in the worker before student code).

    >>> Limits().address_space_bytes == 3 << 29   # 1.5 GiB
    True
    """

    address_space_bytes: int = 3 << 29
    cpu_seconds: int = 60
    file_size_bytes: int = 1 << 20
    open_files: int = 64
    drop_privileges: bool = True


@dataclass
class WorkerRun:
    """What happened to one worker: outcome, the messages it sent, how it ended.

    ``detail`` says in words what went wrong (empty when ``outcome == "ok"``).
    """

    outcome: str
    messages: list[dict[str, Any]]
    detail: str = ""
    returncode: int | None = None
    stderr: str = ""
    seconds: float = 0.0
    garbage_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def last(self, kind: str) -> dict[str, Any] | None:
        """The last message of type ``kind`` (None if there is none)."""
        for m in reversed(self.messages):
            if m.get("type") == kind:
                return m
        return None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


# ------------------------------------------------------------------------------- staging


def redact_source(source: str, names: tuple[str, ...] | list[str], module: str = "") -> str:
    """``source`` with the bodies of ``names`` replaced by a ``raise``.

    ``names``: functions, classes (every method), ``Class.method``, or ``"*"`` (every
    function and class of the module).  Comments and the replaced bodies are gone (the module
    is re-generated from its syntax tree); names, signatures and everything else stay, so
    importing the module still works.

    >>> src = chr(10).join(["def f(x):", "    return 42  # the answer", "def g():",
    ...                     "    return 1"])
    >>> out = redact_source(src, ["f"], "m")
    >>> "42" in out, "return 1" in out
    (False, True)
    >>> ns = {}
    >>> exec(out, ns)
    >>> ns["f"](1)
    Traceback (most recent call last):
    ...
    m._ReferenceUnavailable: m.f: the reference implementation is not available while grading
    """
    tree = ast.parse(source)
    everything = "*" in names
    wanted = set(names)

    def strip(fn: ast.FunctionDef | ast.AsyncFunctionDef, qual: str) -> None:
        fn.body = [_raise_stmt(module, qual)]
        fn.decorator_list = [d for d in fn.decorator_list if isinstance(d, ast.Name)
                             and d.id in ("staticmethod", "classmethod", "property")]

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if everything or node.name in wanted:
                strip(node, node.name)
        elif isinstance(node, ast.ClassDef):
            whole = everything or node.name in wanted
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        whole or f"{node.name}.{item.name}" in wanted):
                    strip(item, f"{node.name}.{item.name}")
    marker = ast.parse("class _ReferenceUnavailable(Exception):\n"
                       f"    __module__ = {module or '__main__'!r}\n"
                       "    virtcore_redacted = True\n").body
    at = 0
    while at < len(tree.body):
        node = tree.body[at]
        if (isinstance(node, ast.ImportFrom) and node.module == "__future__") or (
                at == 0 and isinstance(node, ast.Expr)):
            at += 1
        else:
            break
    tree.body[at:at] = marker
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _raise_stmt(module: str, qual: str) -> ast.stmt:
    text = f"{module}.{qual}: {REDACTED_MARK}" if module else f"{qual}: {REDACTED_MARK}"
    return ast.parse(f"raise _ReferenceUnavailable({text!r})").body[0]


_STAGE_LOCK = threading.Lock()
_STAGE_ROOT: list[Path] = []
_STAGED: dict[tuple[str, str], Path] = {}


def _stage_root() -> Path:
    if not _STAGE_ROOT:
        root = Path(tempfile.mkdtemp(prefix="virtcore-stage-"))
        root.chmod(0o755)
        pid = os.getpid()

        def clean() -> None:
            if os.getpid() == pid:
                shutil.rmtree(root, ignore_errors=True)

        atexit.register(clean)
        _STAGE_ROOT.append(root)
    return _STAGE_ROOT[0]


def prestage(assignment: str) -> dict[str, Any]:
    """Stage every part of ``assignment`` now and say where (for :func:`adopt_stages`).

    The grading driver calls it once before it starts its pool, so that the pool's processes
    share one staged copy instead of each copying and compiling the library again (about a
    second of CPU per process and assignment).

    >>> where = prestage("a2_credit_scheduler")
    >>> sorted(where["parts"]) == sorted(p.grade_id for p in
    ...     __import__("autograder.assignments", fromlist=["x"]).module(
    ...         "a2_credit_scheduler").SPEC.parts)
    True
    """
    from autograder import assignments

    spec = assignments.module(assignment).SPEC
    parts = {p.grade_id: str(stage(assignment, p.grade_id)) for p in spec.parts}
    return {"root": str(_stage_root()), "assignment": assignment, "parts": parts}


def adopt_stages(where: dict[str, Any] | None) -> None:
    """In a pool process: use the stages :func:`prestage` made in the driver (which also
    removes them when it exits; this process never does)."""
    if not where:
        return
    with _STAGE_LOCK:
        if not _STAGE_ROOT:
            _STAGE_ROOT.append(Path(where["root"]))
        for gid, path in where["parts"].items():
            _STAGED[(str(where["assignment"]), str(gid))] = Path(path)


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


def _readable(top: Path) -> None:
    for d, _, files in os.walk(top):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


def _base() -> Path:
    base = _stage_root() / "_base"
    if not base.exists():
        tmp = _stage_root() / "_base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "virtcore", tmp / "virtcore", ignore=_ignore)
        _compile_tree(REPO_ROOT / "virtcore", tmp / "virtcore")
        tmp.rename(base)
    return base


def _compile_tree(src: Path, dst: Path) -> None:
    """Compiled files for every module of ``dst`` (a copy of ``src`` that kept the sources'
    times): this interpreter's own compiled file of the source where it is current (its
    header names the source's time and size, as the import system checks), else compiled now.
    """
    import importlib.util
    import py_compile

    tag = sys.implementation.cache_tag
    for path in dst.rglob("*.py"):
        rel = path.relative_to(dst)
        ours = src / rel.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        out = path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc"
        out.parent.mkdir(exist_ok=True)
        st = path.stat()
        try:
            with open(ours, "rb") as f:
                head = f.read(16)
        except OSError:
            head = b""
        current = (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER
                   and int.from_bytes(head[4:8], "little") == 0
                   and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                   and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)
        if current:
            shutil.copyfile(ours, out)
        else:
            py_compile.compile(str(path), cfile=str(out), doraise=False, quiet=2)


def stage(assignment: str, grade_id: str) -> Path:
    """The directory bound at ``/sandbox`` for one part of ``assignment`` (made once per process).

    It holds ``autograder/worker.py``, ``autograder/harness/`` with the modules the part's
    ``sandbox_plan`` names, and ``virtcore/`` with the plan's names redacted (in the source and
    the compiled file: a redacted module has no ``.pyc``).  Everything is world-readable and
    nothing is writable in the sandbox.
    """
    from autograder import assignments

    key = (assignment, grade_id)
    with _STAGE_LOCK:
        hit = _STAGED.get(key)
        if hit is not None and hit.exists():
            return hit
        module = assignments.module(assignment)
        redact, harness = module.sandbox_plan(grade_id)
        out = _stage_root() / f"{assignment}.{grade_id}"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        # hard links to the base copy (nothing in a stage is ever written in place: a
        # redacted module is a new file, its compiled file is removed)
        shutil.copytree(_base() / "virtcore", tmp / "virtcore", copy_function=os.link)
        for mod, names in redact.items():
            rel = Path(*mod.split("."))
            src = REPO_ROOT / rel.with_suffix(".py")
            (tmp / rel.with_suffix(".py")).unlink()
            (tmp / rel.with_suffix(".py")).write_text(
                redact_source(src.read_text(encoding="utf-8"), tuple(names), mod),
                encoding="utf-8")
            for pyc in ((tmp / rel).parent / "__pycache__").glob(f"{rel.name}.*.pyc"):
                pyc.unlink()
        pkg = tmp / "autograder"
        (pkg / "harness").mkdir(parents=True)
        (pkg / "__init__.py").write_text('"""The grader\'s worker, staged for the sandbox."""\n')
        shutil.copy2(REPO_ROOT / "autograder" / "worker.py", pkg / "worker.py")
        shutil.copy2(REPO_ROOT / "autograder" / "harness" / "__init__.py",
                     pkg / "harness" / "__init__.py")
        for name in harness:
            shutil.copy2(REPO_ROOT / "autograder" / "harness" / f"{name}.py",
                         pkg / "harness" / f"{name}.py")
        compileall.compile_dir(str(pkg), quiet=2, workers=1)
        _readable(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        _STAGED[key] = out
        return out


def _ping_lib() -> Path:
    lib = _stage_root() / "_ping"
    with _STAGE_LOCK:
        if not lib.exists():
            tmp = _stage_root() / "_ping.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "autograder").mkdir(parents=True)
            (tmp / "autograder" / "__init__.py").write_text("")
            shutil.copy2(REPO_ROOT / "autograder" / "worker.py", tmp / "autograder")
            _readable(tmp)
            tmp.rename(lib)
    return lib


# ------------------------------------------------------------------------------ bubblewrap


def _bwrap() -> str | None:
    for path in _BWRAP:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("bwrap")


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _python_binds(python: str) -> list[str]:
    """Read-only binds of the interpreter's prefix (with 0755 parents, e.g. under /root)."""
    exe = Path(os.path.realpath(python))
    prefix = Path(os.path.realpath(sys.base_prefix)) if (
        os.path.realpath(sys.executable) == str(exe)) else exe.parent.parent
    args: list[str] = []
    made: set[Path] = set()
    for where in sorted({prefix, exe.parent}):
        if where == Path("/usr") or Path("/usr") in where.parents or where == Path("/"):
            continue
        if any(p == where or p in where.parents for p in made):
            continue
        for parent in reversed(where.parents):
            if parent != Path("/"):
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(where), str(where)]
        made.add(where)
    return args


def sandbox_uid() -> int:
    """A uid for the next sandbox of a root grader, unused by every other live sandbox.

    ``UID_BASE`` + 64 × (this process's pid mod 2**22) + a counter mod 64: distinct across
    the grading processes (their pids differ) and across the up to 64 sandboxes one process
    keeps at once (its zygotes, one per part).

    >>> UID_BASE <= sandbox_uid() < UID_BASE + (1 << 28)
    True
    """
    return UID_BASE + (os.getpid() & 0x3FFFFF) * _UID_SLOTS + next(_uid_next) % _UID_SLOTS


def bwrap_command(argv: list[str], lib: Path, *, python: str | None = None,
                  root: bool | None = None, uid: int | None = None) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` in a part's sandbox (see the module doc).

    >>> cmd = bwrap_command(["python3", "-c", "pass"], Path("/tmp/stage"), root=True)
    >>> "--die-with-parent" in cmd, "--unshare-pid" in cmd, cmd[cmd.index("--chdir") + 1]
    (True, True, '/tmp')
    >>> any(a.startswith(str(REPO_ROOT)) for a in cmd)
    False
    """
    bw = _bwrap() or "bwrap"
    root = os.geteuid() == 0 if root is None else root
    if root:  # no user namespace: setpriv below makes the worker really a uid of its own
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
              "--unshare-cgroup-try"]
    else:
        ns = ["--unshare-all"]
    cmd = [bw, *ns, "--die-with-parent", "--new-session", *_system_binds(),
           *_python_binds(python or sys.executable),
           "--ro-bind", str(lib), SANDBOX_LIB,
           "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
           "--perms", "1777", "--tmpfs", "/var/tmp",
           "--tmpfs", "/run", "--hostname", "sandbox", "--chdir", "/tmp", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
           "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8",
           "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0", "--"]
    if root:
        uid = sandbox_uid() if uid is None else uid
        cmd += [_SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return cmd + argv


@functools.cache
def sandbox_problem() -> str | None:
    """Why no sandbox can be had here (None when bubblewrap works).

    Tries a real one: ``bwrap`` with the namespaces above (and ``setpriv`` as root) running
    this interpreter.
    """
    if not sys.platform.startswith("linux"):
        return "bubblewrap sandboxes need Linux"
    if _bwrap() is None:
        return ("bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap;"
                " Fedora: dnf install bubblewrap)")
    if os.geteuid() == 0 and not os.access(_SETPRIV, os.X_OK):
        return f"{_SETPRIV} is missing (util-linux): needed to drop root in the sandbox"
    lib = Path(tempfile.mkdtemp(prefix="virtcore-probe-"))
    try:
        lib.chmod(0o755)
        cmd = bwrap_command([os.path.realpath(sys.executable), "-I", "-S", "-c",
                             "import os; print(os.getuid())"], lib)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap could not start: {e}"
    finally:
        shutil.rmtree(lib, ignore_errors=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return (f"bubblewrap does not work here ({why}); unprivileged user namespaces may be"
                " disabled (sysctl kernel.unprivileged_userns_clone=1, or"
                " user.max_user_namespaces > 0)")
    seen = proc.stdout.strip()
    if os.geteuid() == 0 and not (seen.isdigit() and int(seen) >= UID_BASE):
        return "the sandbox did not drop root"
    return None


def default_sandbox() -> str:
    """``"bwrap"`` when :func:`sandbox_problem` finds none, else ``"none"``."""
    return "bwrap" if sandbox_problem() is None else "none"


# ----------------------------------------------------------------------------- running


def _make_cwd(drop: bool) -> Path:
    path = Path(tempfile.mkdtemp(prefix="virtcore-grade-"))
    if drop and os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return path


def _env(cwd: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(cwd),
            "TMPDIR": str(cwd), "PYTHONHASHSEED": "0"}


def run_worker(task: dict[str, Any], *, timeout: float, limits: Limits | None = None,
               python: str | None = None, sandbox: str = "bwrap",
               lib: Path | None = None,
               converse: Callable[[Channel], Any] | None = None,
               reply_timeout: float = 10.0) -> WorkerRun:
    """Run one worker on ``task`` and wait for it (at most ``timeout`` seconds of wall time).

    Parameters
    ----------
    task : dict
        JSON-serialisable task for :func:`autograder.worker.main` (its ``assignment`` and
        ``part`` choose the staged library unless ``lib`` is given).
    timeout : float
        Wall-clock limit; the sandbox is killed when it passes.
    limits : Limits, optional
    python : str, optional
        Interpreter (default: this one).
    sandbox : {"bwrap", "none"}
        ``"none"`` runs the worker as a plain subprocess — unsafe (``--unsafe-no-sandbox``).
    lib : Path, optional
        The staged library (default: :func:`stage` of the task's assignment and part).
    converse : callable, optional
        Makes the worker *serve* (an interactive part): its stdin stays open, and once it
        has reported ``build`` ok, ``converse(channel)`` is called here with a
        :class:`Channel` whose ``call(request)`` sends one request line and returns the
        worker's ``reply``.  What it returns is kept in ``WorkerRun.extra["conversation"]``;
        then stdin is closed and the worker ends with ``done``.  Without it (a1, a3, a4)
        nothing changes: the task goes in on stdin, which is closed.
    reply_timeout : float
        With ``converse``: the longest wait for one reply (and never past ``timeout``).

    Returns
    -------
    WorkerRun
    """
    lim = limits or Limits()
    cpu = max(1, min(lim.cpu_seconds, int(timeout) + 5))
    lim_json = json.dumps({**asdict(lim), "cpu_seconds": cpu})
    payload = json.dumps(task).encode()
    own_lib = lib is not None
    if lib is None:
        try:
            lib = _ping_lib() if task.get("ping") else stage(str(task["assignment"]),
                                                             str(task["part"]))
        except Exception as e:  # an infrastructure failure: retried, never a grade
            return WorkerRun("fault", [], f"staging the sandbox failed: {e}")
    py = os.path.realpath(python or sys.executable)  # a venv's python is a link outside
    cwd: Path | None = None
    if sandbox == "bwrap":
        problem = sandbox_problem()
        if problem is not None:
            return WorkerRun("fault", [], f"no sandbox: {problem}")
    elif sandbox != "none":
        raise ValueError(f"sandbox must be 'bwrap' or 'none', not {sandbox!r}")
    if sandbox == "bwrap" and zygote.enabled() and not task.get("ping") and not own_lib:
        return _run_in_zygote(task, lib, py, lim_json, payload, timeout, converse,
                              reply_timeout)
    start = time.monotonic()
    rfd, wfd = os.pipe()
    if sandbox == "bwrap":
        argv = bwrap_command([py, "-I", "-S", "-B", "-c", _BOOTSTRAP, SANDBOX_LIB, str(wfd),
                              lim_json], lib, python=py)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        popen_cwd = "/"
    else:
        cwd = _make_cwd(lim.drop_privileges)
        argv = [py, "-I", "-S", "-B", "-c", _BOOTSTRAP, str(lib), str(wfd), lim_json]
        env = _env(cwd)
        popen_cwd = str(cwd)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=popen_cwd, env=env, pass_fds=(wfd,), start_new_session=True, close_fds=True)
    except BaseException as e:
        os.close(rfd)
        os.close(wfd)
        if cwd is not None:
            shutil.rmtree(cwd, ignore_errors=True)
        if isinstance(e, OSError):
            return WorkerRun("fault", [], f"the worker could not start: {e}")
        raise
    os.close(wfd)
    try:
        if converse is not None:
            run = _converse(proc, rfd, payload, timeout, start, converse, reply_timeout,
                            bwrap=sandbox == "bwrap")
        else:
            run = _collect(proc, rfd, payload, timeout, start, bwrap=sandbox == "bwrap")
        run.extra["sandbox"] = sandbox
        return run
    finally:
        with contextlib.suppress(OSError):
            os.close(rfd)
        _kill(proc)
        if cwd is not None:
            shutil.rmtree(cwd, ignore_errors=True)


def _run_in_zygote(task: dict[str, Any], lib: Path, py: str, lim_json: str, payload: bytes,
                   timeout: float, converse: Callable[[Channel], Any] | None = None,
                   reply_timeout: float = 10.0) -> WorkerRun:
    """:func:`run_worker` through a preloaded worker of the part (:mod:`autograder.zygote`)."""
    harness, part = str(task.get("harness")), str(task.get("part"))
    key = (str(lib), py, harness, part)

    def make() -> zygote.Zygote:
        return zygote.Zygote(key, bwrap_command([], lib, python=py), harness, part, python=py)

    start = time.monotonic()
    try:
        with zygote.checkout(key, make) as z:
            child, rfd = z.fork(lim_json)
            serial = z.serial
            try:
                if converse is not None:
                    run = _converse(child, rfd, payload, timeout, start,  # type: ignore[arg-type]
                                    converse, reply_timeout)
                else:
                    run = _collect(child, rfd, payload, timeout, start)  # type: ignore[arg-type]
            finally:
                with contextlib.suppress(OSError):
                    os.close(rfd)
                _kill(child)  # type: ignore[arg-type]
    except zygote.ZygoteError as e:
        return WorkerRun("fault", [], str(e))
    run.extra["sandbox"] = "bwrap"
    run.extra["zygote"] = serial
    return run


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if isinstance(proc, zygote.ZygoteChild):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.returncode is None:
                proc.zygote.close()
        for stream in (proc.stdin, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


#: The messages a worker may send (anything else is garbage).
MESSAGE_TYPES = frozenset({"ready", "cell-start", "cell", "build", "case-start", "case", "done",
                           "fatal"})


def _collect(proc: subprocess.Popen[bytes], rfd: int, payload: bytes, timeout: float,
             start: float, *, bwrap: bool = False) -> WorkerRun:
    assert proc.stdin is not None
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
    sel.register(rfd, selectors.EVENT_READ, "result")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sent = 0
    buf = bytearray()
    total = 0
    stderr = bytearray()
    messages: list[dict[str, Any]] = []
    garbage = 0
    timed_out = flooded = False
    deadline = start + timeout
    open_reads = 2
    while open_reads:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            what = key.data
            if what == "stdin":
                try:
                    sent += os.write(proc.stdin.fileno(), payload[sent:sent + 65536])
                except (BrokenPipeError, OSError):
                    sent = len(payload)
                if sent >= len(payload):
                    sel.unregister(proc.stdin)
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                continue
            fd = rfd if what == "result" else proc.stderr.fileno()
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(key.fileobj)
                open_reads -= 1
                continue
            if what == "stderr":
                stderr += chunk
                if len(stderr) > 4 * _STDERR_KEEP:
                    del stderr[:-_STDERR_KEEP]
                continue
            total += len(chunk)
            if total > _MAX_MESSAGES_BYTES:
                flooded = True
                open_reads = 0
                break
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                try:
                    msg = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                    garbage += 1
                    continue
                if isinstance(msg, dict) and msg.get("type") in MESSAGE_TYPES:
                    messages.append(msg)
                else:
                    garbage += 1
    sel.close()
    return _conclude(proc, messages, garbage, stderr, timed_out, flooded, timeout, start,
                     bwrap=bwrap)


def _conclude(proc: subprocess.Popen[bytes], messages: list[dict[str, Any]], garbage: int,
              stderr: bytearray, timed_out: bool, flooded: bool, timeout: float, start: float,
              *, bwrap: bool) -> WorkerRun:
    """Wait for the worker (or kill it) and classify how it ended (:class:`WorkerRun`)."""
    deadline = start + timeout
    if timed_out or flooded:
        _kill(proc)
    else:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
    seconds = time.monotonic() - start
    rc = proc.returncode
    if bwrap and rc is not None and 128 < rc < 128 + 65:
        rc = -(rc - 128)  # bwrap reports a child killed by signal N as 128 + N
    err = stderr[-_STDERR_KEEP:].decode("utf-8", "replace")
    run = WorkerRun("ok", messages, "", rc, err, seconds, garbage)
    fatal = run.last("fatal")
    ready = run.last("ready") is not None
    if not ready and not timed_out and not flooded:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit status {rc}"
        run.outcome, run.detail = "fault", f"the sandbox failed before student code ran: {why}"
        return run
    if rc == -signal.SIGKILL and not timed_out and not flooded:
        run.extra["killed"] = True  # from outside? the grader retries before it believes it
    if timed_out:
        run.outcome, run.detail = "timeout", f"still running after {timeout:g} s (wall clock)"
    elif flooded:
        run.outcome, run.detail = "crashed", "sent more than 16 MiB of results"
    elif fatal is not None and fatal.get("kind") == "memory":
        run.outcome = "memory"
        run.detail = str(fatal.get("message") or "ran out of memory")
    elif fatal is not None and fatal.get("kind") == "timeout":
        run.outcome, run.detail = "timeout", str(fatal.get("message") or "took too long")
    elif rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            run.outcome, run.detail = "timeout", "CPU time limit exceeded (SIGXCPU)"
        else:
            run.outcome = "crashed"
            run.detail = f"killed by {_signal_name(sig)}"
            if sig == signal.SIGSEGV:
                run.detail += " (segmentation fault — e.g. unbounded recursion)"
            elif sig == signal.SIGKILL:
                run.detail += " (killed: out of memory, or the process killed itself)"
    elif fatal is not None:
        run.outcome, run.detail = "crashed", str(fatal.get("message") or "the worker failed")
    elif run.last("done") is None:
        run.outcome = "crashed"
        run.detail = (f"exited with code {rc} before it finished (os._exit or sys.exit?)"
                      if rc is not None else "exited before it finished")
    elif rc not in (0, None):
        run.outcome, run.detail = "crashed", f"exited with code {rc}"
    return run


# ------------------------------------------------------------------------ conversations
#: The type of the worker's answers to the grader's requests (see :class:`Channel`).
REPLY = "reply"
#: Longest line a reply may be.
_MAX_REPLY_BYTES = 1 << 16


class ChannelError(Exception):
    """The conversation with a serving worker ended: it sent something that is not the reply
    (garbage, an extra line, ``fatal``…), went away, flooded the channel or did not answer in
    time.  The channel is dead afterwards; the run's outcome says why."""


class Channel:
    """The grader's end of a conversation with a *serving* worker (``run_worker(converse=)``).

    ``call(request)`` writes ``request`` as one JSON line on the worker's stdin and returns the
    next line on the result pipe, which must be a ``{"type": "reply", …}`` object, within
    ``reply_timeout`` seconds (and the run's deadline).  Anything else ends the conversation
    with :class:`ChannelError` (never another exception): a line that is not a reply is
    counted as garbage (a ``fatal`` message is kept: it says why the worker stopped), and a
    line arriving before its request is a protocol error too.  ``calls`` counts the round
    trips.
    """

    def __init__(self, proc: subprocess.Popen[bytes], rfd: int, deadline: float,
                 reply_timeout: float) -> None:
        assert proc.stdin is not None
        assert proc.stderr is not None
        self.proc = proc
        self.rfd = rfd
        self.wfd = proc.stdin.fileno()
        self.deadline = deadline
        self.reply_timeout = reply_timeout
        self.errfd = proc.stderr.fileno()
        self.poller = select.poll()
        self.poller.register(rfd, select.POLLIN)
        self.poller.register(self.errfd, select.POLLIN)
        self.buf = bytearray()
        self.stderr = bytearray()
        self.messages: list[dict[str, Any]] = []
        self.garbage = 0
        self.total = 0
        self.calls = 0
        self.eof = self.timed_out = self.flooded = False
        self.dead: str | None = None
        #: Which case the conversation is on (the conversation sets it; for the report).
        self.case: int | None = None
        os.set_blocking(self.wfd, False)

    # -- reading -------------------------------------------------------------------------
    def _fill(self, until: float) -> bool:
        """Read what arrives before ``until``; False on timeout or end of the result pipe."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return False
            for fd, _ in self.poller.poll(min(left, 1.0) * 1000):
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if fd != self.rfd:
                    if not chunk:
                        self.poller.unregister(fd)
                    else:
                        self.stderr += chunk
                        if len(self.stderr) > 4 * _STDERR_KEEP:
                            del self.stderr[:-_STDERR_KEEP]
                    continue
                if not chunk:
                    self.eof = True
                    return False
                self.total += len(chunk)
                self.buf += chunk
                if self.total > _MAX_MESSAGES_BYTES + 256 * self.calls or (
                        len(self.buf) > _MAX_MESSAGES_BYTES):
                    self.flooded = True
                    return False
                return True

    def _line(self, until: float) -> bytes | None:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                return line
            if not self._fill(until):
                return None

    def _message(self, line: bytes) -> dict[str, Any] | None:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return msg if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None

    def _fail(self, why: str) -> ChannelError:
        self.dead = self.dead or why
        return ChannelError(self.dead)

    def refuse(self, why: str) -> ChannelError:
        """The error to raise for a reply the conversation cannot use (its content breaks the
        protocol): counted as garbage — the part's results are not trusted — and the channel
        is dead from then on."""
        self.garbage += 1
        return self._fail(f"protocol: {why}")

    # -- the conversation ----------------------------------------------------------------
    def until_build(self) -> dict[str, Any] | None:
        """The worker's messages up to its ``build`` (None if it never came)."""
        while True:
            line = self._line(self.deadline)
            if line is None:
                return None
            msg = self._message(line)
            if msg is None or msg["type"] not in MESSAGE_TYPES:
                self.garbage += 1
                continue
            self.messages.append(msg)
            if msg["type"] in ("build", "done", "fatal"):
                return msg

    def call(self, request: Any) -> dict[str, Any]:
        """Send ``request`` (JSON data) and return the worker's reply (a dict).

        Raises
        ------
        ChannelError
            No reply (see the class doc); the channel is dead from then on.
        """
        if self.dead:
            raise ChannelError(self.dead)
        if self.buf:
            self.garbage += 1
            raise self._fail("the worker wrote before it was asked")
        until = min(self.deadline, time.monotonic() + self.reply_timeout)
        raw = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        try:  # a request fits in the pipe: usually one write
            data = memoryview(raw)[os.write(self.wfd, raw):]
        except BlockingIOError:
            data = memoryview(raw)
        except OSError:
            raise self._fail("the worker stopped reading its requests") from None
        while data:
            try:
                n = os.write(self.wfd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                raise self._fail("the worker stopped reading its requests") from None
            data = data[n:]
            if data and not self._fill(until):  # drain while the worker is not reading
                break
        self.calls += 1
        line = None if data else self._line(until)
        if line is None:
            if self.timed_out:
                raise self._fail(f"no reply within {self.reply_timeout:g} s")
            if self.flooded:
                raise self._fail("flooded the result channel")
            raise self._fail("the worker went away")
        msg = self._message(line) if len(line) <= _MAX_REPLY_BYTES else None
        if msg is not None and msg["type"] == REPLY:
            return msg
        if msg is not None and msg["type"] == "fatal":
            self.messages.append(msg)
            raise self._fail("the worker stopped")
        self.garbage += 1
        raise self._fail("a line that is not a reply")

    def finish(self) -> None:
        """Close stdin (the worker ends with ``done``) and read the rest of its messages."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        while not (self.timed_out or self.flooded):
            line = self._line(self.deadline)
            if line is None:
                break
            msg = self._message(line)
            if msg is None or msg["type"] not in MESSAGE_TYPES:
                self.garbage += 1
            else:
                self.messages.append(msg)


def _converse(proc: subprocess.Popen[bytes], rfd: int, payload: bytes, timeout: float,
              start: float, converse: Callable[[Channel], Any], reply_timeout: float, *,
              bwrap: bool = False) -> WorkerRun:
    """:func:`_collect` for a serving worker: the task (one line), its messages up to
    ``build``, the conversation, then the rest; classified as any run."""
    ch = Channel(proc, rfd, start + timeout, reply_timeout)
    data = memoryview(payload + b"\n")
    while data and not ch.dead:
        try:
            n = os.write(ch.wfd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            break
        data = data[n:]
        if data and not ch._fill(ch.deadline):
            break
    result: Any = None
    build = None if data else ch.until_build()
    if build is not None and build.get("type") == "build" and build.get("ok") is True:
        with contextlib.suppress(ChannelError):  # the run's outcome says why it ended
            result = converse(ch)
    ch.finish()
    run = _conclude(proc, ch.messages, ch.garbage, ch.stderr, ch.timed_out, ch.flooded,
                    timeout, start, bwrap=bwrap)
    run.extra["conversation"] = result
    run.extra["round_trips"] = ch.calls
    run.extra["case"] = ch.case
    if ch.dead and run.outcome == "timeout" and ch.timed_out and "no reply" in ch.dead:
        run.detail = f"the scheduler did not answer within {reply_timeout:g} s"
    return run

"""Run the worker (:mod:`autograder.worker`) as a confined subprocess and collect its messages.

The worker is started as ``python -I -B -c <bootstrap> <repo root> <fd> <limits>``:

- **isolated** interpreter (``-I``: no ``PYTHON*`` variables, no user site, no current
  directory on ``sys.path``); the bootstrap puts the repository root on ``sys.path`` so that
  ``autograder`` and ``virtcore`` import from this checkout;
- **scrubbed environment**: ``PATH``, ``LANG``, ``HOME``/``TMPDIR`` = the worker's own temporary
  directory — no ``VIRTCORE_COURSE_SECRET``, nothing inherited;
- **cwd** = a fresh temporary directory (owned by ``nobody`` when the grader is root), removed
  afterwards;
- **new session** (its own process group), killed as a group on timeout;
- **resource limits**, set by the worker on itself before any student code runs
  (:class:`Limits`): address space, CPU seconds, file size, open files, no core dumps, no new
  processes (``RLIMIT_NPROC`` 0 once unprivileged).  They are set in the child rather than in a
  ``preexec_fn``, which is unsafe when the grader has threads;
- **privileges**: when the grader runs as root, the worker drops to uid/gid 65534 (``nobody``,
  no supplementary groups) after its imports and before student code, so it can read neither
  the course secret (mode 600) nor write the course directory or the gradebook.  Dropping after
  the imports is deliberate: the interpreter may live where ``nobody`` cannot read
  (``/root/.pyenv``), and nothing secret is in the worker's memory;
- **messages**: the task goes in on stdin (JSON); results come back as JSON lines on a
  dedicated pipe (fd passed by number), so whatever student code prints cannot corrupt them.
  Standard output goes to ``/dev/null``; standard error is kept (its last 8 KiB) for
  diagnosing crashes.

Outcome (:class:`WorkerRun`): ``"ok"`` (it reported ``done``), ``"timeout"`` (wall clock, a case
or cell budget, or the CPU limit), ``"memory"`` (it ran out of its address space), or
``"crashed"`` (a signal such as SIGSEGV, ``os._exit``, a non-zero exit, or too much output).

>>> run = run_worker({"ping": True}, timeout=20)
>>> run.outcome, run.messages[-1]["type"]
('ok', 'done')
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autograder.worker import NOBODY

__all__ = ["NOBODY", "REPO_ROOT", "Limits", "WorkerRun", "run_worker"]
#: The checkout that holds ``autograder`` and ``virtcore`` (put on the worker's ``sys.path``).
REPO_ROOT = Path(__file__).resolve().parent.parent

_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); import autograder.worker as w;"
              " w.main(sys.argv[2:])")
_MAX_MESSAGES_BYTES = 64 * 1024 * 1024
_STDERR_KEEP = 8192


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


def _make_cwd(drop: bool) -> Path:
    path = Path(tempfile.mkdtemp(prefix="virtcore-grade-"))
    if drop and os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return path


def _env(cwd: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(cwd),
            "TMPDIR": str(cwd), "PYTHONHASHSEED": "0"}


def run_worker(task: dict[str, Any], *, timeout: float, limits: Limits | None = None,
               python: str | None = None) -> WorkerRun:
    """Run one worker on ``task`` and wait for it (at most ``timeout`` seconds of wall time).

    Parameters
    ----------
    task : dict
        JSON-serialisable task for :func:`autograder.worker.main`.
    timeout : float
        Wall-clock limit; the whole process group is killed when it passes.
    limits : Limits, optional
    python : str, optional
        Interpreter (default: this one).

    Returns
    -------
    WorkerRun
    """
    lim = limits or Limits()
    cpu = max(1, min(lim.cpu_seconds, int(timeout) + 5))
    lim_json = json.dumps({**asdict(lim), "cpu_seconds": cpu})
    payload = json.dumps(task).encode()
    cwd = _make_cwd(lim.drop_privileges)
    rfd, wfd = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [python or sys.executable, "-I", "-B", "-c", _BOOTSTRAP, str(REPO_ROOT), str(wfd),
             lim_json],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=cwd, env=_env(cwd), pass_fds=(wfd,), start_new_session=True, close_fds=True)
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        shutil.rmtree(cwd, ignore_errors=True)
        raise
    os.close(wfd)
    try:
        return _collect(proc, rfd, payload, timeout, start)
    finally:
        with contextlib.suppress(OSError):
            os.close(rfd)
        _kill(proc)
        shutil.rmtree(cwd, ignore_errors=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
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


def _collect(proc: subprocess.Popen[bytes], rfd: int, payload: bytes, timeout: float,
             start: float) -> WorkerRun:
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
                except ValueError:
                    garbage += 1
                    continue
                if isinstance(msg, dict):
                    messages.append(msg)
                else:
                    garbage += 1
    sel.close()
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
    err = stderr[-_STDERR_KEEP:].decode("utf-8", "replace")
    run = WorkerRun("ok", messages, "", rc, err, seconds, garbage)
    fatal = run.last("fatal")
    if timed_out:
        run.outcome, run.detail = "timeout", f"still running after {timeout:g} s (wall clock)"
    elif flooded:
        run.outcome, run.detail = "crashed", "sent more than 64 MiB of results"
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

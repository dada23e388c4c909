"""Preloaded workers: one sandbox per part and grading process, a fresh child per submission.

Starting a part's sandbox costs far more than grading it: bubblewrap, the interpreter, and
importing the standard modules, the staged virtcore and the harness take about 0.2 s of CPU,
the student's cells and the cases usually less.  A *zygote* pays that once.  It is a worker
(:func:`autograder.worker.zygote_main`) started in the part's ordinary sandbox
(:func:`autograder.sandbox.bwrap_command`, the same staged library, the same namespaces and
unprivileged user); for each submission the grader sends it three new pipe ends over a Unix
socket (``SCM_RIGHTS``) and it forks a child that is exactly the worker of
:func:`autograder.sandbox.run_worker`, talking to the grader on those pipes: the zygote never
sees the task or the results.

Why sharing one sandbox *over time* keeps students apart:

- a child is a fresh copy of the preloaded process (copy-on-write): nothing a previous
  child did to its memory exists in the next;
- children cannot fork (``RLIMIT_NPROC`` 0), so nothing of a child outlives it; the zygote
  reaps it before it forks the next one;
- the zygote is undumpable (``PR_SET_DUMPABLE`` 0) and children have no capabilities: a
  child cannot ``ptrace`` it or read ``/proc/<zygote>/mem``, ``fd`` or ``environ``;
- the only writable places (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run``, private tmpfs)
  are wiped after every child, and a zygote that finds anything left there — or a System V
  IPC object — exits instead of forking again;
- a child that kills its zygote loses its own run (an infrastructure fault, retried with a
  new zygote); the next submission gets a new zygote;
- a zygote serves at most :data:`MAX_CHILDREN` children, then a new one starts.

What the sandbox holds is the same as for a one-off worker: the part's staged library (its
references redacted), no course file, no secret; only the part's own harness.

>>> enabled() in (True, False)
True
"""

from __future__ import annotations

import array
import atexit
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import IO, Any

__all__ = ["MAX_CHILDREN", "Zygote", "ZygoteChild", "ZygoteError", "checkout", "enabled",
           "shutdown"]

#: Children one zygote forks before it is replaced.
MAX_CHILDREN = 200
#: How long a zygote may take to start (imports included) before it counts as broken.
START_TIMEOUT = 30.0

_serial = itertools.count(1)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); import autograder.worker as w;"
         " w.zygote_main(sys.argv[2:])")


class ZygoteError(Exception):
    """The zygote could not start or stopped answering (an infrastructure fault)."""


def enabled() -> bool:
    """Whether :func:`autograder.sandbox.run_worker` uses zygotes (``VIRTCORE_ZYGOTE=0``
    turns them off: one fresh sandbox per part, as before)."""
    return os.environ.get("VIRTCORE_ZYGOTE", "1") != "0" and hasattr(os, "pidfd_open")


class ZygoteChild:
    """One forked worker, seen from the grader like a :class:`subprocess.Popen`.

    ``stdin`` (the task), ``stderr`` and the result descriptor are pipes between the grader
    and the child; its exit status comes from the zygote.
    """

    def __init__(self, zygote: Zygote, pid: int, stdin: IO[bytes], stderr: IO[bytes]) -> None:
        self.zygote = zygote
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.stderr: IO[bytes] | None = stderr
        self.returncode: int | None = None
        self.clean = True

    def poll(self) -> int | None:
        if self.returncode is None:
            self._status(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._status(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self.zygote.request_kill()

    def _status(self, timeout: float | None) -> None:
        msg = self.zygote.receive(timeout)
        if msg is None:
            if self.zygote.dead:  # the zygote died under it: as if killed from outside
                self.returncode = -signal.SIGKILL
            return
        if msg.get("exit") != self.pid or not isinstance(msg.get("status"), int):
            self.zygote.broken("an unexpected message from the zygote")
            self.returncode = -signal.SIGKILL
            return
        self.returncode = os.waitstatus_to_exitcode(int(msg["status"]))
        self.clean = bool(msg.get("clean"))
        self.zygote.children_done(self.clean)


class Zygote:
    """A preloaded worker for one part, in its own sandbox (see the module doc)."""

    def __init__(self, key: tuple[str, ...], argv_prefix: list[str], harness: str,
                 part: str, *, python: str) -> None:
        from autograder import sandbox

        self.key = key
        self.serial = next(_serial)  # which zygote of this process (for reports and tests)
        self.served = 0
        self.dead = False
        self.busy = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        opts = json.dumps({"harness": harness, "part": part})
        argv = [python, "-I", "-S", "-B", "-c", _BOOT, sandbox.SANDBOX_LIB,
                str(theirs.fileno()), opts]
        self.errlog = tempfile.TemporaryFile()  # noqa: SIM115 - kept open
        try:
            self.proc = subprocess.Popen(
                [*argv_prefix, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self.errlog, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                pass_fds=(theirs.fileno(),), start_new_session=True, close_fds=True)
        except OSError as e:
            ours.close()
            raise ZygoteError(f"the zygote could not start: {e}") from None
        finally:
            theirs.close()
        hello = self.receive(START_TIMEOUT)
        if not hello or hello.get("type") != "zygote":
            why = self._stderr() or f"exit status {self.proc.poll()}"
            self.close()
            raise ZygoteError(f"the zygote did not start: {why}")
        self.uid = hello.get("uid")

    # -- the protocol ------------------------------------------------------------------------
    def fork(self, limits_json: str) -> tuple[ZygoteChild, int]:
        """A new child with fresh pipes; returns it and the grader's end of its result pipe."""
        in_r, in_w = os.pipe()
        res_r, res_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            msg = json.dumps({"op": "fork", "limits": json.loads(limits_json)}).encode()
            fds = array.array("i", [in_r, res_w, err_w])
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as e:
            for f in (in_r, in_w, res_r, res_w, err_r, err_w):
                os.close(f)
            self.broken(f"sending to the zygote failed: {e}")
            raise ZygoteError(f"the zygote is gone ({e})") from None
        for f in (in_r, res_w, err_w):
            os.close(f)
        reply = self.receive(10.0)
        if not reply or not isinstance(reply.get("pid"), int):
            for f in (in_w, res_r, err_r):
                os.close(f)
            self.broken("the zygote did not fork")
            raise ZygoteError("the zygote did not fork a worker")
        self.served += 1
        child = ZygoteChild(self, int(reply["pid"]), open(in_w, "wb", buffering=0),  # noqa: SIM115
                            open(err_r, "rb", buffering=0))  # noqa: SIM115
        return child, res_r

    def receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The zygote's next message (None on timeout; a dead zygote is marked broken)."""
        if self.dead:
            return None
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.broken("the zygote exited")
            return None
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self.broken("garbage from the zygote")
            return None
        return msg

    def request_kill(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b'{"op": "kill"}')

    def children_done(self, clean: bool) -> None:
        if not clean or self.served >= MAX_CHILDREN:
            self.close()

    def broken(self, why: str) -> None:
        self.close()

    def close(self) -> None:
        if not self.dead:
            self.dead = True
            with contextlib.suppress(OSError):
                self.sock.close()
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            with contextlib.suppress(OSError):
                self.errlog.close()

    def _stderr(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            time.sleep(0.05)
            self.errlog.seek(0)
            text = self.errlog.read()[-4000:].decode("utf-8", "replace").strip()
            return text.splitlines()[-1] if text else ""
        return ""


_LOCK = threading.Lock()
_IDLE: dict[tuple[str, ...], list[Zygote]] = {}


@contextlib.contextmanager
def checkout(key: tuple[str, ...], make: Any) -> Any:
    """An idle zygote for ``key`` (``make()`` starts one when there is none), for one child.

    Each zygote serves one child at a time; concurrent callers (threads of a cluster worker)
    get separate zygotes.
    """
    with _LOCK:
        pool = _IDLE.setdefault(key, [])
        z = None
        while pool and z is None:
            cand = pool.pop()
            if not cand.dead:
                z = cand
    if z is None:
        z = make()
    try:
        yield z
    finally:
        if not z.dead:
            with _LOCK:
                _IDLE.setdefault(key, []).append(z)


def shutdown() -> None:
    """Stop every idle zygote of this process (also run at exit)."""
    with _LOCK:
        all_ = [z for pool in _IDLE.values() for z in pool]
        _IDLE.clear()
    for z in all_:
        z.close()


def _forget_after_fork() -> None:
    """In a forked child (a grading pool process, the analysis fork): the zygotes are the
    parent's — drop this process's copies of their sockets and never touch them again (a
    child using or closing them would talk over the parent, or kill its zygotes at exit)."""
    global _LOCK
    _LOCK = threading.Lock()
    for pool in _IDLE.values():
        for z in pool:
            with contextlib.suppress(OSError):
                z.sock.close()
    _IDLE.clear()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_forget_after_fork)

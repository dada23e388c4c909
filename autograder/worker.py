"""The worker: runs one part of one student's code on the grader's cases, returns traces.

Started by :func:`autograder.sandbox.run_worker` inside the part's sandbox (never
import-and-call it in the grader: it changes the process for good).  It imports nothing of the
grader but this module and the part's harness (:mod:`autograder.harness`), and the virtcore it
sees is the staged copy whose reference implementations for the part are redacted (calling
one raises an exception marked ``virtcore_redacted``; the cell or case is reported as
``integrity``).  In order:

1. set its resource limits (:class:`autograder.sandbox.Limits`), ignore ``SIGXFSZ``
   (writes past the file-size limit fail instead of killing it);
2. read the task (JSON on stdin) and import the harness, virtcore and the standard modules
   students commonly use;
3. let the harness capture what it needs (``worker_setup``);
4. drop privileges to ``nobody`` when still root (only without a sandbox: in one, ``setpriv``
   did it before the interpreter started); forbid new processes (``RLIMIT_NPROC`` 0);
5. send ``ready`` — nothing before it ran student code, so a worker that dies earlier is an
   infrastructure fault (retried), not the student's;
6. execute the preamble (errors ignored), then the student's solution cells in source order,
   each under a time budget, reporting each cell (``ok``, ``error``, ``not implemented``,
   ``timeout``, ``integrity``);
7. build the student's implementation for the part (``build``) and run every case
   (``run_case``) under a per-case time budget, sending each result as it is done;
8. send ``done``.

Messages are JSON lines on the result pipe: ``ready``, ``cell-start``/``cell``, ``build``,
``case-start``/``case``, ``done``, or ``fatal`` (``memory``, ``timeout``, ``error``) just
before the worker exits on its own.  A *serving* worker (task ``serve``: a2) runs no case
after ``build``: it answers the grader's requests, one JSON line each on its stdin, with one
``reply`` each (:meth:`_Runner.serve`), until stdin ends.

Student exceptions are values: the message keeps the exception and the student's own frames
only (``cell handlers_io, line 3, in handle_in``).  ``RecursionError`` is an ordinary error
of the case; ``MemoryError`` ends the worker (``fatal`` ``memory``) because the memory may
still be held; a case or cell that runs past its budget is interrupted by ``SIGALRM``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import linecache
import os
import resource
import signal
import sys
import traceback
from types import ModuleType
from typing import Any

__all__ = ["NOBODY", "BuildError", "main", "student_traceback", "zygote_main"]

#: uid and gid the worker drops to when started as root.
NOBODY = 65534

_PREIMPORT = ("abc", "bisect", "collections", "collections.abc", "copy", "dataclasses",
              "decimal", "enum", "fractions", "functools", "heapq", "itertools", "math",
              "numbers", "operator", "random", "re", "statistics", "string", "textwrap",
              "typing", "hashlib", "contextlib", "array", "struct", "types", "warnings",
              "weakref", "pprint", "time", "datetime", "json", "traceback", "linecache",
              "virtcore", "virtcore.hw", "virtcore.vmm", "virtcore.sched", "virtcore.rng",
              "virtcore.errors")
_MAX_TEXT = 2000
_CELL_PREFIX = "<cell "


class BuildError(Exception):
    """The student's namespace lacks what the part needs (raised by an assignment's ``build``)."""


class _Budget(BaseException):
    """Raised by SIGALRM when a cell or a case runs past its time budget."""


class _Sink:
    """Where student ``print`` goes: counted, kept up to a few KiB, never sent anywhere."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.size = 0

    def write(self, s: str) -> int:
        n = len(s)
        if self.size < 4096:
            self.kept.append(s[: 4096 - self.size])
        self.size += n
        return n

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Channel:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg, default=repr) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]


def student_traceback(exc: BaseException, limit: int = 6) -> str:
    """The exception and the student's own frames only (cells and preamble), newest last.

    >>> try:
    ...     exec(compile("def f():\\n    return 1 / 0\\nf()", "<cell p1>", "exec"), {})
    ... except ZeroDivisionError as e:
    ...     print(student_traceback(e))
    cell p1, line 3, in <module>
    cell p1, line 2, in f
    ZeroDivisionError: division by zero
    """
    frames = []
    try:
        summary = traceback.extract_tb(exc.__traceback__, limit=-500)
    except Exception:  # pragma: no cover - a traceback that cannot be walked
        summary = traceback.StackSummary()
    for fr in summary:
        if fr.filename.startswith(_CELL_PREFIX) or fr.filename.startswith("<preamble"):
            where = fr.filename.strip("<>")
            line = f"{where}, line {fr.lineno}, in {fr.name}"
            if fr.line:
                line += f": {fr.line.strip()}"
            frames.append(line)
    if len(frames) > limit:
        frames = [*frames[: limit // 2], f"... {len(frames) - limit} more frames ...",
                  *frames[-(limit - limit // 2):]]
    try:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except Exception:  # pragma: no cover - a broken __str__
        text = type(exc).__name__
    out = "\n".join([*frames, text])
    return out if len(out) <= _MAX_TEXT else out[: _MAX_TEXT - 1] + "…"


def _alarm(signum: int, frame: object) -> None:
    raise _Budget()


def _set_limits(lim: dict[str, Any]) -> None:
    def setl(kind: int, value: int, extra: int = 0) -> None:
        try:
            _, hard = resource.getrlimit(kind)
            if hard != resource.RLIM_INFINITY and value + extra > hard:
                value, extra = hard, 0
            resource.setrlimit(kind, (value, value + extra))
        except (ValueError, OSError):
            pass

    setl(resource.RLIMIT_AS, int(lim["address_space_bytes"]))
    # soft < hard: the soft limit sends SIGXCPU (reported as a timeout), the hard one SIGKILL
    setl(resource.RLIMIT_CPU, int(lim["cpu_seconds"]), 1)
    setl(resource.RLIMIT_FSIZE, int(lim["file_size_bytes"]))
    setl(resource.RLIMIT_NOFILE, int(lim["open_files"]))
    setl(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _drop_privileges(enabled: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"uid": os.getuid(), "dropped": False}
    if enabled and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - would mean the drop failed
            raise SystemExit("could not drop privileges")
        info = {"uid": os.getuid(), "dropped": True}
    os.umask(0o077)
    if hasattr(resource, "RLIMIT_NPROC"):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    return info


def _compile(source: str, name: str) -> Any:
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    return compile(source, name, "exec")


class _Runner:
    def __init__(self, channel: _Channel, task: dict[str, Any], module: ModuleType) -> None:
        self.ch = channel
        self.task = task
        self.module = module
        self.cell_seconds = float(task.get("cell_timeout", 5.0))
        self.case_seconds = float(task.get("case_timeout", 2.0))
        self.stdin = sys.stdin.buffer  # the grader's requests (a serving worker), taken now

    def timed(self, seconds: float, fn: Any, *args: Any) -> Any:
        signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def fatal(self, kind: str, message: str, **extra: Any) -> None:
        self.ch.send({"type": "fatal", "kind": kind, "message": message, **extra})
        os._exit(3)

    def run(self) -> None:
        task = self.task
        part = task["part"]
        setup = self.module.worker_setup(part)
        info = _drop_privileges(bool(task.get("drop_privileges", True)))
        sink = _Sink()
        sys.stdout = sink  # type: ignore[assignment]
        sys.stderr = sink  # type: ignore[assignment]
        self.ch.send({"type": "ready", **info})
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        for i, code in enumerate(task.get("preamble", [])):
            try:
                self.timed(self.cell_seconds, exec, _compile(code, f"<preamble {i}>"), ns)
            except MemoryError:
                self.fatal("memory", "the notebook's set-up code ran out of memory")
            except BaseException:  # the instructor's set-up: its errors are not the student's
                pass
        for cell in task.get("cells", []):
            gid = cell["grade_id"]
            self.ch.send({"type": "cell-start", "grade_id": gid})
            result = self.exec_cell(cell["source"], gid, ns)
            self.ch.send({"type": "cell", "grade_id": gid, **result})
        try:
            impl = self.module.build(ns, part, setup)
        except BuildError as e:
            self.ch.send({"type": "build", "ok": False, "error": str(e)[:_MAX_TEXT]})
            self.ch.send({"type": "done"})
            return
        except MemoryError:
            self.fatal("memory", "ran out of memory while collecting your definitions")
        except BaseException as e:
            self.ch.send({"type": "build", "ok": False, "error": student_traceback(e),
                          "touched": [str(e)[:_MAX_TEXT]] if _redacted(e) else []})
            self.ch.send({"type": "done"})
            return
        self.ch.send({"type": "build", "ok": True, "touched": []})
        if task.get("serve"):
            self.serve(impl)
            self.ch.send({"type": "done", "printed": sink.size})
            return
        for i, case in enumerate(task.get("cases", [])):
            self.ch.send({"type": "case-start", "index": i})
            try:
                out = self.timed(self.case_seconds, self.module.run_case, impl, case)
                res: dict[str, Any] = {"type": "case", "index": i, "result": out}
            except _Budget:
                self.fatal("timeout", f"case {i} ran longer than {self.case_seconds:g} s"
                           " (an infinite loop?)", index=i)
            except MemoryError:
                self.fatal("memory", f"case {i} ran out of memory", index=i)
            except BaseException as e:
                res = {"type": "case", "index": i, "error": student_traceback(e),
                       "error_type": type(e).__name__}
                if _redacted(e):
                    res["touched"] = [str(e)[:_MAX_TEXT]]
            self.ch.send(res)
        self.ch.send({"type": "done", "printed": sink.size})

    def serve(self, impl: Any) -> None:
        """Answer the grader's requests, one JSON line each, until stdin ends (a serving part).

        The harness's ``serve(impl)`` gives the function that answers one request; a request
        whose first item is ``["case", i, …]`` starts case ``i`` and its time budget, which
        counts only the time spent answering (not the grader's).  Each answer goes back as one
        ``reply``; the student's exception is a reply too (``error``, ``error_type``,
        ``touched``), and the grader fails that case.
        """
        answer = self.module.serve(impl)
        send = self.ch.send
        index, left = -1, self.case_seconds
        while True:
            line = self.stdin.readline()
            if not line:
                return
            req = json.loads(line)
            first = req[0] if isinstance(req, list) and req else None
            if isinstance(first, list) and first and first[0] == "case":
                index, left = int(first[1]), self.case_seconds
            try:
                signal.setitimer(signal.ITIMER_REAL, max(0.01, left))
                try:
                    reply = {"type": "reply", **answer(req)}
                finally:
                    left = signal.setitimer(signal.ITIMER_REAL, 0)[0]
            except _Budget:
                self.fatal("timeout", f"case {index} ran longer than {self.case_seconds:g} s"
                           " (an infinite loop?)", index=index)
            except MemoryError:
                self.fatal("memory", f"case {index} ran out of memory", index=index)
            except BaseException as e:
                reply = {"type": "reply", "error": student_traceback(e),
                         "error_type": type(e).__name__}
                if _redacted(e):
                    reply["touched"] = [str(e)[:_MAX_TEXT]]
            send(reply)

    def exec_cell(self, source: str, gid: str, ns: dict[str, Any]) -> dict[str, Any]:
        try:
            code = _compile(source, f"{_CELL_PREFIX}{gid}>")
        except (SyntaxError, ValueError) as e:
            return {"status": "error", "error": student_traceback(e) if not isinstance(
                e, SyntaxError) else _syntax(e, gid)}
        try:
            self.timed(self.cell_seconds, exec, code, ns)
        except _Budget:
            return {"status": "timeout",
                    "error": f"running the cell took longer than {self.cell_seconds:g} s"}
        except MemoryError:
            self.fatal("memory", f"cell {gid} ran out of memory", grade_id=gid)
        except NotImplementedError as e:
            return {"status": "not implemented", "error": student_traceback(e)}
        except BaseException as e:
            status = "integrity" if _redacted(e) else "error"
            return {"status": status, "error": student_traceback(e)}
        return {"status": "ok"}


def _redacted(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) comes from a redacted reference."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 20:
        if getattr(type(cur), "virtcore_redacted", False):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def _syntax(e: SyntaxError, gid: str) -> str:
    text = (e.text or "").rstrip("\n")
    return f"cell {gid}, line {e.lineno}: SyntaxError: {e.msg}" + (f"\n    {text}" if text else "")


def main(argv: list[str]) -> None:
    """Entry point of the worker process (``argv``: result fd, limits as JSON)."""
    fd = int(argv[0])
    limits = json.loads(argv[1]) if len(argv) > 1 else {}
    if limits:
        _set_limits(limits)
    ch = _Channel(fd)
    task = _read_task()
    if task.get("ping"):
        ch.send({"type": "ready", "uid": os.getuid()})
        ch.send({"type": "done"})
        return
    _preimport()
    import importlib

    module = importlib.import_module(f"autograder.harness.{task['harness']}")
    _serve(ch, task, module, limits)


def _read_task() -> dict[str, Any]:
    task = json.loads(sys.stdin.buffer.readline())  # one JSON line
    if not isinstance(task, dict):
        raise SystemExit("the task is not a JSON object")
    return task


def _preimport() -> None:
    for name in _PREIMPORT:
        with contextlib.suppress(ImportError):  # a module missing from this Python
            __import__(name)


def _serve(ch: _Channel, task: dict[str, Any], module: ModuleType, limits: dict[str, Any]) -> None:
    """Run ``task`` (steps 3–8 of the module doc) and end the process."""
    signal.signal(signal.SIGALRM, _alarm)
    task["drop_privileges"] = bool(limits.get("drop_privileges", True))
    runner = _Runner(ch, task, module)
    try:
        runner.run()
    except MemoryError:
        runner.fatal("memory", "ran out of memory")
    except _Budget:
        runner.fatal("timeout", "ran past its time budget")
    except BaseException as e:  # a bug of the worker itself, or a student's SystemExit
        runner.fatal("error", f"the worker stopped: {type(e).__name__}: {str(e)[:500]}")
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__
    os._exit(0)


# --------------------------------------------------------------------------- the zygote
#: What a zygote wipes after each child (the sandbox's only writable places).
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def zygote_main(argv: list[str]) -> None:
    """Entry point of a preloaded worker, a *zygote* (``argv``: control socket fd, options).

    Started once per (assignment, part) and grading process, in its own sandbox, by
    :class:`autograder.zygote.Zygote`.  It imports the standard modules, the staged virtcore
    and the part's harness once, makes itself undumpable (no ``ptrace``, no
    ``/proc/<pid>/mem`` for its children), then for each request forks a **fresh child** that
    is exactly a worker (:func:`main` from step 1 on) on the three descriptors the grader
    passed with the request (``SCM_RIGHTS``: task in, results out, standard error).  The
    zygote never reads a task or a result.  After each child it reaps it, wipes the writable
    scratch directories, checks that no System V IPC object survived, and reports the wait
    status; if anything is left it exits, and the grader starts a new one.  Children cannot
    fork (``RLIMIT_NPROC`` 0 as in every worker), so nothing of one child outlives it.
    """
    import importlib
    import socket

    sock = socket.socket(fileno=int(argv[0]))
    opts = json.loads(argv[1])
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _preimport()
    module = importlib.import_module(f"autograder.harness.{opts['harness']}")
    module.worker_setup(str(opts["part"]))  # warm what the part's runs import
    _undumpable()
    sock.sendall(json.dumps({"type": "zygote", "uid": os.getuid()}).encode())
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 3)
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)  # the grader went away
        try:
            req = json.loads(data)
        except ValueError:
            req = {}
        if not isinstance(req, dict) or req.get("op") != "fork" or len(fds) != 3:
            for f in fds:
                os.close(f)
            os._exit(2)
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                _child(fds, req.get("limits") or {}, module, str(opts["part"]))
            finally:
                os._exit(4)
        for f in fds:
            os.close(f)
        sock.sendall(json.dumps({"pid": pid}).encode())
        status = _reap(pid, sock)
        clean = _wipe()
        sock.sendall(json.dumps({"exit": pid, "status": status, "clean": clean}).encode())
        if not clean:
            os._exit(0)


def _undumpable() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        raise SystemExit("prctl(PR_SET_DUMPABLE, 0) failed")


def _child(fds: list[int], limits: dict[str, Any], module: ModuleType, part: str) -> None:
    task_in, result_out, err = fds
    os.dup2(task_in, 0)
    os.dup2(err, 2)
    keep = os.dup(result_out) if result_out < 3 else result_out
    for f in (task_in, err):
        if f > 2 and f != keep:
            os.close(f)
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0, never closed here
    if limits:
        _set_limits(limits)
    ch = _Channel(keep)
    task = _read_task()
    if task.get("part") != part or f"autograder.harness.{task.get('harness')}" != module.__name__:
        ch.send({"type": "fatal", "kind": "error", "message": "task for another zygote"})
        os._exit(3)
    _serve(ch, task, module, limits)


def _reap(pid: int, sock: Any) -> int:
    """Wait for the child (a ``kill`` request from the grader kills it); its wait status."""
    import select

    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, sock], [], [])
            if pidfd in ready:
                return os.waitpid(pid, 0)[1]
            data = sock.recv(4096)
            if not data or b'"kill"' in data:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not data:
                    os.waitpid(pid, 0)
                    os._exit(0)
    finally:
        os.close(pidfd)


def _wipe() -> bool:
    """Empty the scratch directories; True when nothing of the child is left."""
    import shutil

    def unlock(fn: Any, path: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            fn(path)

    left = False
    for top in _SCRATCH:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            if os.path.isdir(path) and not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)
                shutil.rmtree(path, onerror=unlock)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        with contextlib.suppress(OSError):
            left = left or bool(os.listdir(top))
    for kind in ("shm", "msg", "sem"):
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as f:
            left = left or len(f.read().splitlines()) > 1
    return not left

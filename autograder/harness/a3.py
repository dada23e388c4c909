"""Worker side of assignment 3 (a userspace VMM): the student's function on a model ``/dev/kvm``.

Staged into the sandbox with a copy of virtcore whose reference VMM loops
(``virtcore.kvm.cli.run_guest``, ``virtcore.kvm.qemu``) are redacted.  The reference pieces of
the *other* parts live in their own modules, staged only for the parts that need them:
:mod:`autograder.harness.a3_setup` (the canonical set-up, for ``vmm_run_loop`` and
``vmm_errors``) and :mod:`autograder.harness.a3_loop` (the loop, for ``vmm_setup`` and
``vmm_errors``); the reference ``run_vm`` never leaves the grader.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_MMIO,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_VCPU_MMAP_SIZE,
    ExitRecord,
    exit_name,
    ioctl_name,
    kvm_regs,
    kvm_run,
    kvm_sregs,
)

__all__ = ["COM1", "FUNCTIONS", "MAX_EXITS", "build", "guest_of", "run_case", "worker_setup"]

#: Part → the function its cell must define.
FUNCTIONS: dict[str, str] = {"vmm_setup": "setup_vm", "vmm_run_loop": "run_loop",
                             "vmm_errors": "run_vm"}
#: ``max_exits`` of a case unless it says otherwise (the longest generated run has ~30 exits).
MAX_EXITS = 1000
COM1 = 0x3F8
_REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")  # teaching r0..r7


def guest_of(case: dict[str, Any]) -> Any:
    """The case's guest as a :class:`virtcore.kvm.guests.Guest` (teaching ISA)."""
    from virtcore.kvm.guests import Guest

    return Guest(case["label"], "teaching", bytes.fromhex(case["code"]), int(case["gpa"]),
                 regs={str(k): int(v) for k, v in case["regs"].items()},
                 entry=None if case["entry"] is None else int(case["entry"]),
                 memory_size=int(case["memory_size"]), inputs=bytes.fromhex(case["inputs"]))


@dataclass
class _Machine:
    """What ``setup_vm`` returns when the notebook's ``Machine`` cannot be used."""

    kvm: Any
    vm: Any
    vcpu: Any
    run: Any
    memory: Any


@dataclass
class _Result:
    """What the run functions fill in when the notebook's ``VmResult`` cannot be used."""

    output: bytes = b""
    exits: list[Any] = field(default_factory=list)
    stop: str = ""
    error: int | None = None
    detail: int | None = None


class _RefusedError(Exception):
    """The reference ``setup_vm``'s refusal when the notebook has no ``VmmError``."""


class _Tracer:
    """A model ``/dev/kvm`` whose descriptors record the ioctls made (and can report an old
    API version), and what they created."""

    def __init__(self, api_version: int, budget: int) -> None:
        from virtcore.kvm.model import ModelSystemFd

        self.log: list[str] = []
        self.recording = True
        self.version = api_version
        self.vms: list[Any] = []
        self.vcpus: list[Any] = []
        self.kvm = ModelSystemFd("teaching", budget=budget, time_limit=None)
        self._wrap(self.kvm, "system")

    def _wrap(self, fd: Any, kind: str) -> None:
        orig = fd.ioctl
        tracer = self

        def ioctl(request: int, arg: Any = 0) -> Any:
            if tracer.recording:
                tracer.log.append(f"{kind}:{ioctl_name(request)}")
            out = orig(request, arg)
            if kind == "system" and request == KVM_GET_API_VERSION:
                return tracer.version  # the real checks (EINVAL for arg != 0) ran above
            if kind == "system" and request == KVM_CREATE_VM:
                tracer.vms.append(out)
                tracer._wrap(out, "vm")
            elif kind == "vm" and request == KVM_CREATE_VCPU:
                tracer.vcpus.append(out)
                tracer._wrap(out, "vcpu")
            return out

        ioctl.__doc__ = orig.__doc__
        fd.ioctl = ioctl
        if kind == "vcpu":
            orig_mmap = fd.mmap

            def mmap(length: int = KVM_VCPU_MMAP_SIZE) -> Any:
                if tracer.recording:
                    tracer.log.append(f"vcpu:mmap({length})")
                return orig_mmap(length)

            mmap.__doc__ = orig_mmap.__doc__
            fd.mmap = mmap

    def regs(self, vcpu: Any) -> dict[str, int] | None:
        """The registers of ``vcpu`` (not recorded), or None if it is not a vCPU of this VM."""
        if not any(vcpu is v for v in self.vcpus):
            return None
        regs = kvm_regs()
        self.recording = False
        try:
            vcpu.ioctl(KVM_GET_REGS, regs)
        finally:
            self.recording = True
        return _regs_json(regs)

    def close(self) -> None:
        for fd in (*self.vcpus, *self.vms):
            with contextlib.suppress(Exception):  # a descriptor the student broke
                fd.close()


def _regs_json(regs: Any) -> dict[str, int]:
    return {n: int(getattr(regs, n)) for n in (*_REG_NAMES, "rip", "rflags")}


def worker_setup(grade_id: str) -> dict[str, Any]:
    """In the worker, before the references go: import what the runs need (the worker may
    not be able to import anything once it dropped its privileges)."""
    import virtcore.kvm
    import virtcore.kvm.guests
    import virtcore.kvm.model
    from virtcore.hw import asm

    return {"assemble": asm.assemble, "open_kvm": virtcore.kvm.open_kvm}


def build(namespace: dict[str, Any], grade_id: str, setup: Any) -> dict[str, Any]:
    """The student's function for the part, from the executed cells (BuildError if missing)."""
    from autograder.worker import BuildError

    name = FUNCTIONS[grade_id]
    fn = namespace.get(name)
    if fn is None:
        raise BuildError(f"{name} is not defined: the cell {grade_id} must define {name}")
    if not callable(fn):
        raise BuildError(f"{name} is not a function (it is {type(fn).__name__})")
    types: dict[str, Any] = {}
    for key, default in (("Machine", _Machine), ("VmResult", _Result), ("VmmError", _RefusedError)):
        obj = namespace.get(key)
        types[key] = obj if isinstance(obj, type) else default
    if not issubclass(types["VmmError"], BaseException):
        types["VmmError"] = _RefusedError
    return {"part": grade_id, "fn": fn, "ns": namespace, **types}


def _crash(where: str, e: BaseException) -> dict[str, Any]:
    from autograder.worker import student_traceback

    return {"where": where, "type": type(e).__name__, "message": student_traceback(e),
            "oserror": isinstance(e, OSError),
            "errno": e.errno if isinstance(e, OSError) else None}


def _rec_json(rec: Any) -> tuple[list[Any] | None, str | None]:
    """One exit record as [reason, port/addr, size, direction/is_write, count, data hex]."""
    reason = getattr(rec, "reason", None)
    if isinstance(reason, bool) or not isinstance(reason, int):
        return None, (f"is not an ExitRecord (it is {type(rec).__name__}: {_short(rec)})"
                      if reason is None else f"has reason {_short(reason)}, not a KVM_EXIT_*"
                      " number")
    reason = int(reason)

    def num(name: str) -> int | None:
        v = getattr(rec, name, None)
        return int(v) if isinstance(v, int) else None

    data = getattr(rec, "data", b"")
    if isinstance(data, (bytes, bytearray, memoryview)):
        data_hex = bytes(data).hex()
    else:
        return None, f"has data {_short(data)}, not bytes"
    if reason == KVM_EXIT_IO:
        return [reason, num("port"), num("size"), num("direction"), num("count"), data_hex], None
    if reason == KVM_EXIT_MMIO:
        w = getattr(rec, "is_write", None)
        return [reason, num("phys_addr"), num("size"), None if w is None else int(bool(w)),
                None, data_hex], None
    return [reason, None, None, None, None, ""], None


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:59] + "…"


def _result_json(res: Any, what: str) -> dict[str, Any]:
    """A VmResult-like object as JSON data, with what could not be read under "problems"."""
    out: dict[str, Any] = {"problems": []}
    problems = out["problems"]
    missing = [k for k in ("output", "exits", "stop") if not hasattr(res, k)]
    if missing:
        problems.append(f"{what} returned {_short(res)}, not a VmResult (no"
                        f" {', '.join(missing)})")
        return out
    output = res.output
    if isinstance(output, (bytes, bytearray, memoryview)):
        out["output"] = bytes(output).hex()
    else:
        problems.append(f"result.output is {type(output).__name__}, not bytes")
    exits = res.exits
    if not isinstance(exits, (list, tuple)):
        problems.append(f"result.exits is {type(exits).__name__}, not a list of ExitRecord")
    else:
        recs = []
        for i, rec in enumerate(exits[:2 * MAX_EXITS + 10]):
            j, why = _rec_json(rec)
            if j is None:
                problems.append(f"result.exits[{i}] {why}")
                break
            recs.append(j)
        out["exits"] = recs
    stop = res.stop
    out["stop"] = stop if isinstance(stop, str) else _short(stop)
    for key in ("error", "detail"):
        v = getattr(res, key, None)
        out[key] = int(v) if isinstance(v, int) and not isinstance(v, bool) else (
            None if v is None else _short(v))
    return out


def _setup_state(tracer: _Tracer, machine: Any, guest: Any) -> dict[str, Any]:
    """What the student's setup left (for hints when the run diverges)."""
    import ctypes

    state: dict[str, Any] = {"log": list(tracer.log), "vms": len(tracer.vms),
                             "vcpus": len(tracer.vcpus)}
    vm = getattr(machine, "vm", None)
    vm = vm if any(vm is v for v in tracer.vms) else (tracer.vms[-1] if tracer.vms else None)
    if vm is not None:
        slots = []
        for sid, s in sorted(vm.slots.items()):
            code = b""
            with contextlib.suppress(Exception):
                code = ctypes.string_at(s.hva, min(len(guest.code), s.size))
            slots.append([sid, s.gpa, s.size, s.flags, code == guest.code[:len(code)]])
        state["slots"] = slots
    vcpu = getattr(machine, "vcpu", None)
    state["regs"] = tracer.regs(vcpu)
    if state["regs"] is not None and vcpu is not None:
        sregs = kvm_sregs()
        tracer.recording = False
        try:
            vcpu.ioctl(KVM_GET_SREGS, sregs)
        finally:
            tracer.recording = True
        state["cs"] = [int(sregs.cs.base), int(sregs.cs.selector)]
    run = getattr(machine, "run", None)
    state["mmap"] = run.mapping_size if isinstance(run, kvm_run) else None
    return state


def _run_setup(impl: dict[str, Any], case: dict[str, Any], guest: Any, inputs: bytes,
               tracer: _Tracer) -> dict[str, Any]:
    refuse = case["api_version"] != KVM_API_VERSION
    try:
        machine = impl["fn"](tracer.kvm, guest)
    except MemoryError:
        raise
    except Exception as e:
        if refuse and isinstance(e, impl["VmmError"]):
            return {"refusal": {"raised": True, "log": list(tracer.log)}}
        return {"error": _crash("setup_vm", e), "log": list(tracer.log)}
    if refuse:
        return {"refusal": {"raised": False, "returned": _short(machine),
                            "log": list(tracer.log)}}
    state = _setup_state(tracer, machine, guest)
    out: dict[str, Any] = {"state": state}
    run, vcpu = getattr(machine, "run", None), getattr(machine, "vcpu", None)
    if not isinstance(run, kvm_run):
        out["run_error"] = (f"setup_vm returned {_short(machine)}: its run is not the vCPU's"
                            " kvm_run (vcpu.mmap(size))")
        return out
    if state["regs"] is None:
        out["run_error"] = (f"setup_vm returned {_short(machine)}: its vcpu is not a vCPU"
                            " created through the kvm descriptor setup_vm was given"
                            " (vm.ioctl(KVM_CREATE_VCPU, 0) on a VM of that kvm; do not open"
                            " another)")
        return out
    result = _Result()
    tracer.recording = False
    try:
        from autograder.harness.a3_loop import ref_loop

        ref_loop(machine, result, inputs, int(case["max_exits"]))
    except OSError as e:
        if e.errno == errno.EINTR:
            result.exits.append(ExitRecord(KVM_EXIT_INTR))
            result.stop = exit_name(KVM_EXIT_INTR)
        else:
            out["run_error"] = f"KVM_RUN failed: {e}"
    except Exception as e:  # e.g. reading the exit's data outside a too-small mapping
        out["run_error"] = f"{type(e).__name__}: {e}"
    finally:
        tracer.recording = True
    out.update(_result_json(result, "the reference loop"))
    out["regs"] = tracer.regs(vcpu)
    return out


def _run_loop(impl: dict[str, Any], case: dict[str, Any], guest: Any, inputs: bytes,
              tracer: _Tracer) -> dict[str, Any]:
    from autograder.harness.a3_setup import ref_setup

    machine = ref_setup(tracer.kvm, guest, impl["VmmError"], _machine_type(impl))
    result = impl["VmResult"]()
    try:
        ret = impl["fn"](machine, result, inputs=inputs, max_exits=int(case["max_exits"]))
    except MemoryError:
        raise
    except Exception as e:
        return {"error": _crash("run_loop", e)}
    out = _result_json(result if ret is None else ret, "run_loop")
    out["regs"] = tracer.regs(machine.vcpu)
    return out


def _machine_type(impl: dict[str, Any]) -> Callable[..., Any]:
    cls = impl["Machine"]

    def make(**kw: Any) -> Any:
        try:
            return cls(**kw)
        except Exception:  # a Machine the notebook changed: the plain one
            return _Machine(**kw)

    return make


def _run_errors(impl: dict[str, Any], case: dict[str, Any], guest: Any, inputs: bytes,
                tracer: _Tracer) -> dict[str, Any]:
    from autograder.harness.a3_loop import ref_loop
    from autograder.harness.a3_setup import ref_setup

    ns = impl["ns"]
    refuse, make = impl["VmmError"], _machine_type(impl)

    def setup_vm(kvm: Any, guest: Any) -> Any:
        return ref_setup(kvm, guest, refuse, make)

    missing = object()
    saved = {k: ns.get(k, missing) for k in ("setup_vm", "run_loop")}
    ns["setup_vm"], ns["run_loop"] = setup_vm, ref_loop
    try:
        ret = impl["fn"](tracer.kvm, guest, inputs=inputs, max_exits=int(case["max_exits"]))
    except MemoryError:
        raise
    except Exception as e:
        return {"error": _crash("run_vm", e)}
    finally:
        for k, v in saved.items():
            if v is missing:
                ns.pop(k, None)
            else:
                ns[k] = v
    return _result_json(ret, "run_vm")


def run_case(impl: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """In the worker: run the student's function of the part on one case; JSON data.

    >>> from autograder.harness.a3_loop import ref_loop
    >>> from virtcore.hw.asm import assemble
    >>> code = assemble("movi r1, 'k'\\nout 0x3f8, r1\\nhlt", 0x1000).to_bytes().hex()
    >>> case = {"label": "t", "code": code, "gpa": 0x1000, "entry": None, "regs": {},
    ...         "memory_size": 4096, "inputs": "", "max_exits": 5, "budget": 100,
    ...         "api_version": 12}
    >>> got = run_case(build({"run_loop": ref_loop}, "vmm_run_loop", None), case)
    >>> got["stop"], bytes.fromhex(got["output"])
    ('KVM_EXIT_HLT', b'k')
    """
    guest = guest_of(case)
    inputs = bytes.fromhex(case["inputs"])
    tracer = _Tracer(int(case["api_version"]), int(case["budget"]))
    try:
        if impl["part"] == "vmm_setup":
            return _run_setup(impl, case, guest, inputs, tracer)
        if impl["part"] == "vmm_run_loop":
            return _run_loop(impl, case, guest, inputs, tracer)
        return _run_errors(impl, case, guest, inputs, tracer)
    finally:
        tracer.close()



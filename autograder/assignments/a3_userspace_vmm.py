"""Assignment 3 — a userspace VMM (用户态VMM): the students write the loop on ``KVM_RUN``.

The students program against virtcore's ``/dev/kvm`` model (:mod:`virtcore.kvm`, teaching-ISA
guests, pure Python): the real ioctl names and numbers, ``struct kvm_run`` and the
``KVM_EXIT_*`` values, and ``OSError`` with the kernel's errno for every mistake
(``reference/virtualization-facts.md`` §1.2–§1.8).  Their solution cells define three
functions, one per part, on the types the notebook gives (``Machine``, ``VmResult``,
``VmmError``)::

    setup_vm(kvm, guest) -> Machine                                  # vmm_setup
    run_loop(machine, result, inputs=b"", max_exits=1000) -> VmResult  # vmm_run_loop
    run_vm(kvm, guest, inputs=b"", max_exits=1000) -> VmResult         # vmm_errors

======================= ====================================================== ======
part                    what is checked                                        points
======================= ====================================================== ======
``vmm_setup``           the canonical sequence (§1.3): refuse unless            15
                        ``KVM_GET_API_VERSION`` is 12, ``KVM_CREATE_VM``, guest
                        RAM in a memory slot, ``KVM_CREATE_VCPU``, ``mmap`` of
                        ``KVM_GET_VCPU_MMAP_SIZE`` bytes, ``cs.base =
                        cs.selector = 0``, the registers — checked by running
                        the guest on the student's machine with the reference
                        loop
``vmm_run_loop``        the loop: OUT to COM1 (0x3f8) is serial output; IN      20
                        gets the next bytes of the input, written back into
                        ``kvm_run`` for the next ``KVM_RUN``; MMIO writes and
                        reads on a scratch device; ``KVM_EXIT_HLT`` ends the
                        run, any other exit stops it with its name;
                        ``max_exits`` — on a machine set up by the reference
``vmm_errors``          a structured result instead of a crash: refusal         10
                        (``stop="api_version"``), a failing KVM call
                        (``stop="error"``, ``error`` = its errno: ``EINVAL``
                        for a misaligned slot, ``ENOMEM`` …), ``EINTR`` from
                        ``KVM_RUN`` (a ``KVM_EXIT_INTR`` record), the detail of
                        ``KVM_EXIT_FAIL_ENTRY`` / ``KVM_EXIT_INTERNAL_ERROR`` —
                        with the reference ``setup_vm`` and ``run_loop``
======================= ====================================================== ======

How a case is checked: the case is a teaching-ISA guest (its code, load address, entry,
registers, RAM size), the bytes answered to IN instructions, ``max_exits``, the model's
instruction budget per ``KVM_RUN`` and the API version the system descriptor reports.  The
worker runs the student's function on a fresh model ``/dev/kvm`` whose descriptors record
the ioctls made, with virtcore's reference for the *other* parts (so a bug in one part costs
only that part): ``vmm_setup`` runs the guest on the student's machine with the reference
loop, ``vmm_run_loop`` gives the student's loop a machine set up by the reference, and
``vmm_errors`` runs the student's ``run_vm`` with the names ``setup_vm`` and ``run_loop``
bound to the reference for the duration of the call.  It returns the exit trace (reason,
port or address, size, direction, count, data — the fields
:meth:`virtcore.kvm.cli.RunReport.trace` compares between the model and a real KVM), the
serial output, why the run stopped and the final registers.  The grader runs the same guest
with the reference VMM loop, :func:`virtcore.kvm.cli.run_guest`, in its own process and
reports the first divergence, e.g. ``exit #3 at 0x1008 (out 0x3f8, r3), KVM_EXIT_IO: data
expected 42000000, got 01000000 — did the guest get the data of the IN at exit #2? …``.

Cases: *directed* guests written for the part (visible), *public* generated guests (fixed
seeds :data:`PUBLIC_SEEDS`, visible), *hidden* generated guests with per-student seeds
(:func:`generated_case`).  The reference loop (``run_guest``, the CLI, and QEMU-like loops
of :mod:`virtcore.kvm.qemu`) is switched off in the worker (:data:`REFERENCES`).

Simplification: errors in the generated cases happen before the guest runs (a refused
memory slot, ``ENOMEM`` on the first ``KVM_RUN``) or as exits, so the expected partial
output of a failed run is empty; the model raises nothing else in mid-run.

>>> [p.grade_id for p in SPEC.parts], SPEC.points
(['vmm_setup', 'vmm_run_loop', 'vmm_errors'], 45)
"""

from __future__ import annotations

import contextlib
import errno
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from autograder.spec import AssignmentSpec, Check, Part
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_GET_API_VERSION,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_VCPU_MMAP_SIZE,
    PAGE_SIZE,
    ExitRecord,
    GuestMemory,
    exit_name,
    ioctl_name,
    kvm_regs,
    kvm_run,
    kvm_sregs,
    kvm_userspace_memory_region,
    read_exit,
)

__all__ = [
    "BUDGET",
    "CASE_TIMEOUT",
    "CELL_TIMEOUT",
    "DIRECTED",
    "FAULTS",
    "FAULT_BUDGET",
    "FORBIDDEN",
    "FUNCTIONS",
    "HIDDEN_CASES",
    "MAX_EXITS",
    "PUBLIC_SEEDS",
    "REFERENCES",
    "SPEC",
    "build",
    "cases",
    "check_seeds",
    "compare",
    "expected_result",
    "generated_case",
    "guest_of",
    "reference_namespace",
    "run_case",
    "worker_setup",
]

#: Part → the function its cell must define.
FUNCTIONS: dict[str, str] = {"vmm_setup": "setup_vm", "vmm_run_loop": "run_loop",
                             "vmm_errors": "run_vm"}
#: ``max_exits`` of a case unless it says otherwise (the longest generated run has ~30 exits).
MAX_EXITS = 1000
#: Teaching-ISA instructions one ``KVM_RUN`` may execute before ``EINTR`` (the model's budget).
BUDGET = 20_000
#: The budget of the guests that loop without exits (``EINTR`` comes sooner).
FAULT_BUDGET = 2_000
#: Generated guests per hidden check.
HIDDEN_CASES = 5
CASE_TIMEOUT = 3.0
CELL_TIMEOUT = 5.0
COM1 = 0x3F8
#: The faults of the generated ``vmm_errors`` guests.
FAULTS = ("api_version", "einval", "fail_entry", "shutdown", "internal", "eintr", "enomem")

#: The fixed seeds of the public (visible) generated guests — the same for every student.
PUBLIC_SEEDS: dict[str, tuple[int, ...]] = {
    "setup_public": (1, 2, 3),
    "loop_public": (4, 5, 6),
}
_KIND = {"vmm_setup": "setup", "vmm_run_loop": "loop", "vmm_errors": "fault"}

SPEC = AssignmentSpec(
    name="a3_userspace_vmm",
    notebook="userspace_vmm.ipynb",
    title="A userspace VMM: the loop on KVM_RUN",
    parts=(
        Part("vmm_setup", 15, (
            Check("setup_directed", 5, False,
                  "the LWN guest, an old API version, code at 0x20000 after a data block"),
            Check("setup_public", 4, False, "generated guests with the public seeds"),
            Check("setup_hidden", 6, True, "generated guests with your own hidden seeds"),
        ), "the canonical sequence: API version, VM, memory slot, vCPU, kvm_run, registers",
            ("setup_vm",)),
        Part("vmm_run_loop", 20, (
            Check("loop_directed", 6, False,
                  "serial output, IN with input, MMIO scratch device, max_exits, a triple fault"),
            Check("loop_public", 6, False, "generated guests with the public seeds"),
            Check("loop_hidden", 8, True, "generated guests with your own hidden seeds"),
        ), "the loop on KVM_RUN: IO, MMIO, HLT and the other exits", ("run_loop",)),
        Part("vmm_errors", 10, (
            Check("errors_directed", 5, False,
                  "one guest per fault: old API, EINVAL, entry failure, shutdown, internal"
                  " error, EINTR, ENOMEM"),
            Check("errors_hidden", 5, True, "faulty guests with your own hidden seeds"),
        ), "KVM errors and failure exits as a structured result", ("run_vm",)),
    ),
)

#: Switched off in the worker before student code runs: the reference VMM loops.
REFERENCES: dict[str, tuple[str, ...]] = {
    "virtcore.kvm.cli": ("run_guest", "main"),
    "virtcore.kvm.qemu": ("QemuVMM", "KvmApiVcpu"),
}

#: Flagged by the static scan.
FORBIDDEN: tuple[str, ...] = (
    "virtcore.kvm.cli.run_guest",
    "virtcore.kvm.cli.main",
    "virtcore.kvm.qemu.QemuVMM",
    "virtcore.kvm.qemu.KvmApiVcpu",
)

# ------------------------------------------------------------------------------ the guests

_OTHER_PORTS = (0x80, 0x2F8, 0x60, 0x3F9, 0x70)
_IN_PORTS = (0x3F8, 0x60)
_MMIO_BASES = (0xD000_0000, 0xFEB0_0000, 0x0800_0000)
_PRINTABLE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !?.-"
_SETUP_GPAS = (0x0, 0x1000, 0x2000, 0x5000, 0x8000, 0x10000, 0x40000, 0x100000)
_REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")  # teaching r0..r7


def _li(reg: str, value: int) -> str:
    return f"li   {reg}, {value & 0xFFFF_FFFF:#x}"


def _chunk(rng: Any, i: int) -> tuple[list[str], int, int]:
    """A random piece of guest code: (assembly lines, exits it causes, INs it executes)."""
    kind = rng.choices(("print", "port", "echo", "mmio_w", "mmio_r", "mmio_rw", "outloop"),
                       weights=(3, 2, 3, 2, 2, 2, 1))[0]
    base = rng.choice(_MMIO_BASES)
    off = 4 * rng.randrange(16)
    if kind == "print":
        text = [rng.choice(_PRINTABLE) for _ in range(rng.randint(1, 4))]
        return [ln for ch in text for ln in (f"movi r1, {ord(ch)}", f"out  {COM1:#x}, r1")], \
            len(text), 0
    if kind == "port":
        return [_li("r2", rng.getrandbits(32)), f"out  {rng.choice(_OTHER_PORTS):#x}, r2"], 1, 0
    if kind == "echo":
        lines = [f"in   r3, {rng.choice(_IN_PORTS):#x}", f"addi r3, {rng.randint(0, 5)}",
                 f"out  {COM1:#x}, r3"]
        if rng.random() < 0.5:
            lines.append("out  0x80, r3")
        return lines, len(lines) - 1, 1
    if kind == "mmio_w":
        return [_li("r4", base), _li("r5", rng.getrandbits(32)), f"st   r5, [r4+{off}]"], 1, 0
    if kind == "mmio_r":
        port = rng.choice((COM1, 0x80))
        return [_li("r4", base), f"ld   r6, [r4+{off}]", f"out  {port:#x}, r6"], 2, 0
    if kind == "mmio_rw":
        return [_li("r4", base), _li("r5", rng.getrandbits(32)), f"st   r5, [r4+{off}]",
                f"ld   r6, [r4+{off}]", "out  0x80, r6"], 3, 0
    n = rng.randint(2, 6)
    return [f"movi r2, {n}", f"L{i}: out  0x80, r2", "addi r2, -1", "cmpi r2, 0",
            f"jnz  L{i}"], n, 0


def _inputs(rng: Any, ins: int) -> bytes:
    need = 4 * ins  # an IN of the teaching ISA is size 4, count 1: four bytes each
    n = rng.randint(max(0, need - 5), need + 3)
    return bytes(rng.getrandbits(8) for _ in range(n))


def _case(label: str, seed: int | None, source: str, *, gpa: int = 0x1000,
          entry: int | None = None, regs: dict[str, int] | None = None,
          memory_size: int = PAGE_SIZE, inputs: bytes = b"", max_exits: int = MAX_EXITS,
          budget: int = BUDGET, api_version: int = KVM_API_VERSION) -> dict[str, Any]:
    from virtcore.hw.asm import assemble

    origin = gpa & ~3
    code = assemble(source, origin).to_bytes()
    return {"label": label, "seed": seed, "code": code.hex(), "gpa": gpa, "entry": entry,
            "regs": dict(regs or {}), "memory_size": memory_size, "inputs": inputs.hex(),
            "max_exits": max_exits, "budget": budget, "api_version": api_version}


def _loop_guest(rng: Any, label: str, seed: int) -> dict[str, Any]:
    gpa = rng.choice((0x1000, 0x2000, 0x3000))
    lines: list[str] = []
    exits = ins = 0
    for i in range(rng.randint(4, 9)):
        more, e, n = _chunk(rng, i)
        lines += more
        exits += e
        ins += n
    end = rng.choices(("hlt", "shutdown", "internal"), weights=(8, 1, 1))[0]
    if end == "hlt":
        lines.append("hlt")
    elif end == "shutdown":  # a trap with no handler in the guest: a triple fault
        lines.append(rng.choice(("syscall", ".word 0xffffffff")))
    else:  # a jump where no memory is: code fetch from MMIO space, KVM cannot emulate it
        lines.append(f"jmp  {gpa + PAGE_SIZE + PAGE_SIZE * rng.randint(1, 8):#x}")
    exits += 1
    max_exits = MAX_EXITS
    if exits > 2 and rng.random() < 0.2:
        max_exits = rng.randint(1, exits - 1)
    return _case(label, seed, "\n".join(lines), gpa=gpa, inputs=_inputs(rng, ins),
                 max_exits=max_exits)


def _setup_guest(rng: Any, label: str, seed: int) -> dict[str, Any]:
    gpa = rng.choice(_SETUP_GPAS)
    size = PAGE_SIZE * rng.randint(1, 4)
    data = [rng.getrandbits(32) for _ in range(rng.choice((0, 0, 1, 2, 3, 5)))]
    names = rng.sample(_REG_NAMES[:7], rng.randint(1, 4))
    regs = {n: rng.getrandbits(32) for n in names}
    lines = [".word " + ", ".join(f"{w:#x}" for w in data)] if data else []
    lines.append("start:")
    for n in names:
        r = f"r{_REG_NAMES.index(n)}"
        lines.append(f"out  0x80, {r}")
        if rng.random() < 0.5:
            lines.append(f"out  {COM1:#x}, {r}")
    if data:
        lines += [_li("r4", gpa), f"ld   r5, [r4+{4 * rng.randrange(len(data))}]",
                  "out  0x80, r5"]
    if rng.random() < 0.4:  # a stack at the top of RAM
        regs["rsp"] = gpa + size
        lines += [_li("r1", rng.getrandbits(32)), "push r1", "pop  r2", "out  0x80, r2"]
    ins = 0
    for i in range(rng.randint(1, 3)):
        more, _, n = _chunk(rng, i)
        lines += more
        ins += n
    lines.append("hlt")
    entry = gpa + 4 * len(data) if data else rng.choice((None, gpa))
    return _case(label, seed, "\n".join(lines), gpa=gpa, entry=entry, regs=regs,
                 memory_size=size, inputs=_inputs(rng, ins))


def _prints(rng: Any, lo: int = 1, hi: int = 3) -> list[str]:
    return [ln for _ in range(rng.randint(lo, hi))
            for ln in (f"movi r1, {ord(rng.choice(_PRINTABLE))}", f"out  {COM1:#x}, r1")]


def _fault_guest(rng: Any, label: str, seed: int, fault: str | None = None) -> dict[str, Any]:
    fault = fault or rng.choice(FAULTS)
    lines = _prints(rng)
    kw: dict[str, Any] = {}
    if fault == "api_version":
        kw["api_version"] = rng.choice((0, 10, 11, 13, 99))
        lines.append("hlt")
    elif fault == "einval":  # a load address KVM refuses: not page aligned
        kw["gpa"] = PAGE_SIZE * rng.randint(1, 16) + 4 * rng.randint(1, PAGE_SIZE // 4 - 1)
        lines.append("hlt")
    elif fault == "fail_entry":  # a register value the (32-bit) guest CPU cannot hold
        kw["regs"] = {rng.choice(_REG_NAMES[:7]): rng.randint(1 << 32, (1 << 48) - 1)}
        lines.append("hlt")
    elif fault == "shutdown":
        lines.append(rng.choice(("syscall", ".word 0xffffffff")))
    elif fault == "internal":
        if rng.random() < 0.5:
            lines.append(f"jmp  {0x1000 + PAGE_SIZE * rng.randint(1, 8):#x}")
        else:  # a push where no memory is: not an ld/st, KVM cannot emulate it as MMIO
            kw["regs"] = {"rsp": 0x1000 + PAGE_SIZE * rng.randint(2, 8)}
            lines.append("push r1")
    elif fault == "eintr":  # loops without an exit: the run budget ends KVM_RUN with EINTR
        lines += ["spin: addi r2, 1", "jmp  spin"]
        kw["budget"] = FAULT_BUDGET
    elif fault == "enomem":  # more RAM than the model's teaching backend holds
        from virtcore.kvm.model import TEACHING_MEMORY_LIMIT

        kw["memory_size"] = TEACHING_MEMORY_LIMIT + PAGE_SIZE * rng.randint(1, 4)
        lines.append("hlt")
    else:
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    return _case(label, seed, "\n".join(lines), **kw)


def generated_case(kind: str, seed: int, label: str | None = None) -> dict[str, Any]:
    """The generated guest of one case, from its seed (JSON data).

    ``kind``: ``"setup"`` (random load address, RAM size, entry after a data block,
    initial registers printed first), ``"loop"`` (serial output, IN with input, other
    ports, MMIO writes and reads, counted loops; ends with ``hlt``, sometimes a triple
    fault or a fetch from MMIO space; sometimes a small ``max_exits``) or ``"fault"``
    (a few characters, then one of :data:`FAULTS`).

    >>> c = generated_case("loop", 4)
    >>> c == generated_case("loop", 4), sorted(c)[:4]
    (True, ['api_version', 'budget', 'code', 'entry'])
    >>> generated_case("fault", 1)["label"]
    'fault guest seed=1'
    """
    from virtcore.rng import make_rng

    rng = make_rng(seed)
    label = label or f"{kind} guest seed={seed}"
    if kind == "setup":
        return _setup_guest(rng, label, seed)
    if kind == "loop":
        return _loop_guest(rng, label, seed)
    if kind == "fault":
        return _fault_guest(rng, label, seed)
    raise ValueError(f"kind must be 'setup', 'loop' or 'fault', not {kind!r}")


def guest_of(case: dict[str, Any]) -> Any:
    """The case's guest as a :class:`virtcore.kvm.guests.Guest` (teaching ISA).

    >>> g = guest_of(generated_case("setup", 2))
    >>> g.isa, g.gpa % 4096, len(g.code) % 4
    ('teaching', 0, 0)
    """
    from virtcore.kvm.guests import Guest

    return Guest(case["label"], "teaching", bytes.fromhex(case["code"]), int(case["gpa"]),
                 regs={str(k): int(v) for k, v in case["regs"].items()},
                 entry=None if case["entry"] is None else int(case["entry"]),
                 memory_size=int(case["memory_size"]), inputs=bytes.fromhex(case["inputs"]))


_HELLO = "movi r1, 'H'\nout 0x3f8, r1\nmovi r1, 'i'\nout 0x3f8, r1\nhlt"

#: Directed guests per part: (name, case keywords).  Visible: the notebook shows them.
DIRECTED: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "vmm_setup": (
        ("the LWN guest", {"source": """
            add  r0, r1          ; rax = rbx = 2
            addi r0, '0'
            out  0x3f8, r0
            movi r0, 10
            out  0x3f8, r0
            hlt""", "regs": {"rax": 2, "rbx": 2}}),
        ("KVM_GET_API_VERSION returns 11", {"source": _HELLO, "api_version": 11}),
        ("code at 0x20000 after a data block", {"source": """
                .word 0xdeadbeef, 0x0badf00d
        start:  out  0x80, r0
                out  0x3f8, r1
                li   r4, 0x20000
                ld   r5, [r4+4]
                out  0x80, r5
                li   r1, 0x11223344
                push r1
                pop  r2
                out  0x80, r2
                hlt""", "gpa": 0x20000, "entry": 0x20008, "memory_size": 0x2000,
            "regs": {"rax": 0x12345678, "rbx": ord("k"), "rsp": 0x22000}}),
    ),
    "vmm_run_loop": (
        ("hello", {"source": _HELLO}),
        ("echo", {"source": "in r0, 0x3f8\naddi r0, 1\nout 0x3f8, r0\nhlt", "inputs": b"A"}),
        ("mmio", {"source": """
            lui  r1, 0
            ori  r1, 0x8000
            ld   r0, [r1+0]      ; no slot at 0x8000: an MMIO read
            addi r0, 1
            st   r0, [r1+4]      ; an MMIO write
            hlt"""}),
        ("three INs, five bytes of input", {"source": """
            in   r3, 0x3f8
            out  0x3f8, r3
            in   r2, 0x60
            out  0x80, r2
            in   r1, 0x3f8       ; the input is used up: zeros
            out  0x80, r1
            hlt""", "inputs": b"hello"}),
        ("scratch device", {"source": """
            li   r4, 0xd0000000
            li   r5, 0x6b6f
            st   r5, [r4+0]
            ld   r6, [r4+0]      ; reads back what was written
            out  0x3f8, r6
            ld   r6, [r4+8]      ; never written: 'A', 'B', 'C', 'D'
            out  0x3f8, r6
            out  0x80, r6
            hlt"""}),
        ("out loop, max_exits=20", {"source": """
            movi r2, 50
      loop: out  0x80, r2
            addi r2, -1
            cmpi r2, 0
            jnz  loop
            hlt""", "max_exits": 20}),
        ("triple fault", {"source": "movi r1, 'x'\nout 0x3f8, r1\nsyscall\nhlt"}),
    ),
    "vmm_errors": (
        ("KVM_GET_API_VERSION returns 11", {"source": _HELLO, "api_version": 11}),
        ("load address 0x1800 (EINVAL)", {"source": _HELLO, "gpa": 0x1800}),
        ("rbx = 1 << 40 (KVM_EXIT_FAIL_ENTRY)", {"source": _HELLO, "regs": {"rbx": 1 << 40}}),
        ("triple fault (KVM_EXIT_SHUTDOWN)", {"source": "movi r1, 'o'\nout 0x3f8, r1\n"
                                                       "movi r1, 'k'\nout 0x3f8, r1\nsyscall"}),
        ("jump to MMIO space (KVM_EXIT_INTERNAL_ERROR)",
         {"source": "movi r1, '!'\nout 0x3f8, r1\njmp 0x9000"}),
        ("endless loop (EINTR)", {"source": "movi r1, '.'\nout 0x3f8, r1\nspin: jmp spin",
                                  "budget": FAULT_BUDGET}),
        ("65 MiB of RAM (ENOMEM)", {"source": _HELLO, "memory_size": (64 << 20) + PAGE_SIZE}),
    ),
}


def cases(part: Part, check: Check, seed_of: Callable[[int], int]) -> list[dict[str, Any]]:
    """The cases of ``check`` (see :mod:`autograder.assignments`).

    >>> part = SPEC.part("vmm_run_loop")
    >>> [c["label"] for c in cases(part, part.checks[0], lambda k: k)][:2]
    ["directed guest 'hello'", "directed guest 'echo'"]
    >>> [c["seed"] for c in cases(part, part.checks[1], lambda k: k)]
    [4, 5, 6]
    >>> len(cases(part, part.checks[2], lambda k: 1000 + k)) == HIDDEN_CASES
    True
    """
    gid = part.grade_id
    if check.name.endswith("_directed"):
        return [_case(f"directed guest {name!r}", None, **kw) for name, kw in DIRECTED[gid]]
    kind = _KIND[gid]
    if not check.hidden:
        return [generated_case(kind, s, f"public guest seed={s}")
                for s in PUBLIC_SEEDS[check.name]]
    return [generated_case(kind, seed_of(k), f"hidden guest #{k + 1}")
            for k in range(HIDDEN_CASES)]


# ------------------------------------------------------------------- the reference parts


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


def _ref_setup(kvm: Any, guest: Any, refuse: type[Exception] = _RefusedError,
               machine: Callable[..., Any] = _Machine) -> Any:
    """The canonical sequence (facts §1.3) — the reference ``setup_vm``."""
    version = kvm.ioctl(KVM_GET_API_VERSION, 0)
    if version != KVM_API_VERSION:
        raise refuse(f"KVM_GET_API_VERSION returned {version}; this VMM needs"
                     f" {KVM_API_VERSION}")
    vm = kvm.ioctl(KVM_CREATE_VM, 0)
    memory = GuestMemory(guest.memory_size)
    memory.write(0, guest.code)
    vm.ioctl(KVM_SET_USER_MEMORY_REGION, kvm_userspace_memory_region(
        slot=0, flags=0, guest_phys_addr=guest.gpa, memory_size=guest.memory_size,
        userspace_addr=memory.address))
    vcpu = vm.ioctl(KVM_CREATE_VCPU, 0)
    run = vcpu.mmap(kvm.ioctl(KVM_GET_VCPU_MMAP_SIZE, 0))
    sregs = kvm_sregs()
    vcpu.ioctl(KVM_GET_SREGS, sregs)
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.ioctl(KVM_SET_SREGS, sregs)
    regs = kvm_regs(rip=guest.gpa if guest.entry is None else guest.entry, rflags=0x2,
                    **guest.regs)
    vcpu.ioctl(KVM_SET_REGS, regs)
    return machine(kvm=kvm, vm=vm, vcpu=vcpu, run=run, memory=memory)


def _ref_loop(machine: Any, result: Any, inputs: bytes = b"",
              max_exits: int = MAX_EXITS) -> Any:
    """The loop of :func:`virtcore.kvm.cli.run_guest` — the reference ``run_loop``.

    ``OSError`` from ``KVM_RUN`` (``EINTR`` included) is passed on to the caller.
    """
    run, vcpu = machine.run, machine.vcpu
    pending = bytearray(inputs)
    scratch: dict[int, int] = {}  # the MMIO scratch device: address -> byte
    exits = result.exits
    while len(exits) < max_exits:
        vcpu.ioctl(KVM_RUN, 0)
        rec = read_exit(run)
        if rec.reason == KVM_EXIT_IO:
            if rec.direction == KVM_EXIT_IO_OUT:
                if rec.port == COM1:
                    result.output = bytes(result.output) + rec.data[::rec.size]
            else:
                n = rec.size * rec.count
                data = bytes(pending[:n]).ljust(n, b"\0")
                del pending[:n]
                run.set_io_data(data)
                rec = replace(rec, data=data)
        elif rec.reason == KVM_EXIT_MMIO:
            if rec.is_write:
                for i, b in enumerate(rec.data):
                    scratch[rec.phys_addr + i] = b
            else:
                data = bytes(scratch.get(rec.phys_addr + i, 0x41 + i) for i in range(rec.size))
                run.set_mmio_data(data)
                rec = replace(rec, data=data)
        exits.append(rec)
        if rec.reason not in (KVM_EXIT_IO, KVM_EXIT_MMIO):
            result.stop = rec.name
            return result
    result.stop = "max_exits"
    return result


def _ref_run_vm(kvm: Any, guest: Any, inputs: bytes = b"", max_exits: int = MAX_EXITS, *,
                setup: Callable[..., Any] = _ref_setup, loop: Callable[..., Any] = _ref_loop,
                result_type: Callable[[], Any] = _Result,
                refused: type[Exception] = _RefusedError) -> Any:
    """The reference ``run_vm``: set up, loop, and every failure as a result."""
    result = result_type()
    try:
        machine = setup(kvm, guest)
    except refused:
        result.stop = "api_version"
        return result
    except OSError as e:
        result.stop, result.error = "error", e.errno
        return result
    try:
        loop(machine, result, inputs=inputs, max_exits=max_exits)
    except OSError as e:
        if e.errno == errno.EINTR:
            result.exits.append(ExitRecord(KVM_EXIT_INTR))
            result.stop = exit_name(KVM_EXIT_INTR)
        else:
            result.stop, result.error = "error", e.errno
        return result
    if result.stop == exit_name(KVM_EXIT_FAIL_ENTRY):
        result.detail = machine.run.fail_entry.hardware_entry_failure_reason
    elif result.stop == exit_name(KVM_EXIT_INTERNAL_ERROR):
        result.detail = machine.run.internal.suberror
    return result


def reference_namespace() -> dict[str, Any]:
    """A namespace with the three reference functions and the notebook's types — a full-marks
    submission, for tests and doctests (never sent to a worker).

    >>> from virtcore.kvm import open_kvm
    >>> ns = reference_namespace()
    >>> case = generated_case("loop", 6)
    >>> r = ns["run_vm"](open_kvm(), guest_of(case), bytes.fromhex(case["inputs"]))
    >>> r.stop, r.output.hex() == expected_result(case)["output"], len(r.exits) > 3
    ('KVM_EXIT_HLT', True, True)
    """
    def setup_vm(kvm: Any, guest: Any) -> Any:
        return _ref_setup(kvm, guest)

    def run_vm(kvm: Any, guest: Any, inputs: bytes = b"", max_exits: int = MAX_EXITS) -> Any:
        return _ref_run_vm(kvm, guest, inputs, max_exits)

    return {"setup_vm": setup_vm, "run_loop": _ref_loop, "run_vm": run_vm,
            "Machine": _Machine, "VmResult": _Result, "VmmError": _RefusedError}


# ------------------------------------------------------------------------------ the worker


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
    import virtcore.kvm.cli
    import virtcore.kvm.guests
    import virtcore.kvm.model
    import virtcore.kvm.qemu  # its loops are switched off by REFERENCES
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
    if state["regs"] is not None:
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
        _ref_loop(machine, result, inputs, int(case["max_exits"]))
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
    machine = _ref_setup(tracer.kvm, guest, impl["VmmError"], _machine_type(impl))
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
    ns = impl["ns"]
    refuse, make = impl["VmmError"], _machine_type(impl)

    def setup_vm(kvm: Any, guest: Any) -> Any:
        return _ref_setup(kvm, guest, refuse, make)

    missing = object()
    saved = {k: ns.get(k, missing) for k in ("setup_vm", "run_loop")}
    ns["setup_vm"], ns["run_loop"] = setup_vm, _ref_loop
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

    >>> ns = reference_namespace()
    >>> impl = build(ns, "vmm_run_loop", None)
    >>> got = run_case(impl, generated_case("loop", 5))
    >>> compare(SPEC.part("vmm_run_loop"), SPEC.part("vmm_run_loop").checks[1],
    ...         generated_case("loop", 5), got) is None
    True
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


# ------------------------------------------------------------------------------ comparing


_REF_CACHE: OrderedDict[str, dict[str, Any]] = OrderedDict()


def expected_result(case: dict[str, Any]) -> dict[str, Any]:
    """The reference result of a case, computed here with :func:`virtcore.kvm.cli.run_guest`.

    Keys: ``exits`` (records as in :func:`run_case`), ``pcs`` (the guest's rip after each
    exit, for messages), ``output`` (hex), ``stop``, ``error`` (errno or None), ``detail``
    and ``regs`` (None for a failed set-up).  ``detail`` of ``KVM_EXIT_INTERNAL_ERROR`` is
    the record's suberror; of ``KVM_EXIT_FAIL_ENTRY``, the model's only entry failure,
    "invalid guest state" (VMX exit reason 33 with bit 31 set).

    >>> e = expected_result(_case("t", None, "movi r1, 'k'\\nout 0x3f8, r1\\nhlt"))
    >>> bytes.fromhex(e["output"]), e["stop"], [x[0] for x in e["exits"]]
    (b'k', 'KVM_EXIT_HLT', [2, 5])
    >>> expected_result(_case("t", None, "hlt", gpa=0x1800))["error"] == errno.EINVAL
    True
    """
    key = json.dumps({k: v for k, v in case.items() if k not in ("label", "seed")},
                     sort_keys=True)
    hit = _REF_CACHE.get(key)
    if hit is not None:
        _REF_CACHE.move_to_end(key)
        return hit
    out = _expected(case)
    _REF_CACHE[key] = out
    if len(_REF_CACHE) > 512:
        _REF_CACHE.popitem(last=False)
    return out


def _expected(case: dict[str, Any]) -> dict[str, Any]:
    from virtcore.kvm.cli import run_guest
    from virtcore.kvm.model import ENTRY_FAILURE_INVALID_GUEST_STATE

    out: dict[str, Any] = {"exits": [], "pcs": [], "output": "", "stop": "", "error": None,
                           "detail": None, "regs": None}
    if case["api_version"] != KVM_API_VERSION:
        out["stop"] = "api_version"
        return out
    try:
        rep = run_guest(guest_of(case), isa="teaching", inputs=bytes.fromhex(case["inputs"]),
                        max_exits=int(case["max_exits"]), budget=int(case["budget"]),
                        time_limit=None, regs_per_exit=True)
    except OSError as e:
        out["stop"], out["error"] = "error", e.errno
        return out
    out["exits"] = [_rec_json(e)[0] for e in rep.exits]
    out["pcs"] = [int(r.rip) for r in rep.regs_at_exit]
    out["output"] = rep.output.encode("latin-1").hex()
    last = rep.exits[-1]
    out["stop"] = "max_exits" if last.reason in (KVM_EXIT_IO, KVM_EXIT_MMIO) else last.name
    if last.reason == KVM_EXIT_FAIL_ENTRY:
        out["detail"] = ENTRY_FAILURE_INVALID_GUEST_STATE
    elif last.reason == KVM_EXIT_INTERNAL_ERROR:
        out["detail"] = last.suberror
    out["regs"] = _regs_json(rep.regs)
    return out


def _hx(v: object) -> str:
    return hex(v) if isinstance(v, int) and not isinstance(v, bool) else repr(v)


def _rec_text(r: list[Any]) -> str:
    reason, where, size, way, count, data = r
    name = exit_name(reason) if isinstance(reason, int) else repr(reason)
    if reason == KVM_EXIT_IO:
        d = {KVM_EXIT_IO_OUT: "out", KVM_EXIT_IO_IN: "in"}.get(way, f"direction={way}")
        text = f"{name} {d} port={_hx(where)} size={size} count={count}"
    elif reason == KVM_EXIT_MMIO:
        d = {1: "write", 0: "read"}.get(way, f"is_write={way}")
        text = f"{name} {d} addr={_hx(where)} len={size}"
    else:
        return name
    return text + (f" data={data}" if data else " (no data)")


def _insn_at(case: dict[str, Any], pc: int) -> str:
    from virtcore.hw.asm import format_instruction

    code = bytes.fromhex(case["code"])
    off = pc - (int(case["gpa"]) & ~3)
    if off < 0 or off + 4 > len(code) or off % 4:
        return ""
    try:
        return format_instruction(int.from_bytes(code[off:off + 4], "little"), pc)
    except Exception:
        return ""


def _where(case: dict[str, Any], exp: dict[str, Any], i: int) -> str:
    """``exit #3 at 0x1010 (in r3, 0x60)``: the instruction behind the i-th expected exit."""
    text = f"exit #{i + 1}"
    if i < len(exp["exits"]) and i < len(exp["pcs"]):
        rec, rip = exp["exits"][i], exp["pcs"][i]
        reason, way = rec[0], rec[3]
        # rip at the exit: past an OUT, an MMIO write or a HLT; still at an IN or MMIO read
        done = (reason == KVM_EXIT_IO and way == KVM_EXIT_IO_OUT) or (
            reason == KVM_EXIT_MMIO and way == 1) or reason == KVM_EXIT_HLT
        pc = rip - 4 if done else rip
        insn = _insn_at(case, pc) if reason in (KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_HLT) else ""
        if insn:
            text += f" at {pc:#x} ({insn})"
    return text


def _feed_hint(exits: list[list[Any]], before: int) -> str:
    """Advice when an output depends on data the VMM had to give the guest earlier."""
    for j in range(min(before, len(exits)) - 1, -1, -1):
        r = exits[j]
        if r[0] == KVM_EXIT_IO and r[3] == KVM_EXIT_IO_IN:
            return (f" — did the guest get the data of the IN at exit #{j + 1}? Write it into"
                    " the kvm_run area (run.set_io_data(data), at run.io.data_offset) before"
                    " the next KVM_RUN")
        if r[0] == KVM_EXIT_MMIO and r[3] == 0:
            return (f" — did the guest get the data of the MMIO read at exit #{j + 1}? Write"
                    " it into run.mmio.data (run.set_mmio_data(data)) before the next KVM_RUN")
    return ""


_FIELDS = {KVM_EXIT_IO: ("port", "size", "direction", "count", "data"),
           KVM_EXIT_MMIO: ("phys_addr", "len", "is_write", None, "data")}


def _diff_exits(case: dict[str, Any], exp: dict[str, Any], got: dict[str, Any]) -> str | None:
    et, gt = exp["exits"], got["exits"]
    for i, (e, g) in enumerate(zip(et, gt)):
        if e == g:
            continue
        where = _where(case, exp, i)
        if e[0] != g[0]:
            msg = f"{where}: expected {_rec_text(e)}, got {_rec_text(g)}"
            if g[0] == KVM_EXIT_INTERNAL_ERROR and e[0] != KVM_EXIT_INTERNAL_ERROR:
                msg += _feed_hint(et, i)
            return msg
        diffs = []
        for k, name in enumerate(_FIELDS.get(e[0], ())):
            a, b = e[1 + k], g[1 + k]
            if name is None or a == b:
                continue
            if name == "data":
                diffs.append(f"data expected {a or '(none)'}, got {b or '(none)'}")
            else:
                diffs.append(f"{name} expected {_hx(a)}, got {_hx(b)}")
        msg = f"{where}, {exit_name(e[0])}: {'; '.join(diffs)}"
        if e[-1] != g[-1] and not g[-1] and (
                (e[0] == KVM_EXIT_IO and e[3] == KVM_EXIT_IO_IN)
                or (e[0] == KVM_EXIT_MMIO and e[3] == 0)):
            msg += " — the record of an IN or an MMIO read carries the data the VMM gave"
        elif e[-1] != g[-1]:
            msg += _feed_hint(et, i)
        return msg
    if len(gt) < len(et):
        e = et[len(gt)]
        return (f"the run stopped after {len(gt)} exit{'s' if len(gt) != 1 else ''} (stop"
                f" {got.get('stop')!r}), expected {len(et)}: {_where(case, exp, len(gt))} would"
                f" be {_rec_text(e)}" + _stop_hint(exp, got))
    if len(gt) > len(et):
        g = gt[len(et)]
        last = et[-1] if et else None
        hint = ""
        if last is not None and last[0] == KVM_EXIT_HLT:
            hint = " — KVM_EXIT_HLT ends the run"
        elif exp["stop"] == "max_exits":
            hint = f" — stop after max_exits={case['max_exits']} exits"
        elif last is not None:
            hint = f" — {exit_name(last[0])} stops the run (stop = its name)"
        return (f"expected the run to stop after exit #{len(et)}"
                + (f" ({_rec_text(last)})" if last is not None else "")
                + f", but it went on: exit #{len(et) + 1} was {_rec_text(g)}{hint}")
    return None


def _stop_hint(exp: dict[str, Any], got: dict[str, Any]) -> str:
    if got.get("stop") == "max_exits" and exp["stop"] != "max_exits":
        return " — count the exits: stop when len(result.exits) reaches max_exits, no sooner"
    return ""


def _errname(n: object) -> str:
    return f"{n} ({errno.errorcode.get(n, '?')})" if isinstance(n, int) else repr(n)


def _compare_run(case: dict[str, Any], exp: dict[str, Any], got: dict[str, Any], *,
                 regs: bool) -> str | None:
    if "exits" not in got:
        return "; ".join(got.get("problems") or ["no exits came back"])
    msg = _diff_exits(case, exp, got)
    if msg is None and got.get("problems"):
        msg = "; ".join(got["problems"])
    if msg is not None:
        return msg
    if got.get("stop") != exp["stop"]:
        hint = ""
        if exp["stop"] == "max_exits":
            hint = " — the run reached max_exits: stop = 'max_exits'"
        elif exp["stop"].startswith("KVM_EXIT_"):
            hint = " — stop is the name of the exit that ended the run (exit_name(reason))"
        return f"stop expected {exp['stop']!r}, got {got.get('stop')!r}{hint}"
    if got.get("output") != exp["output"]:
        try:
            mine = bytes.fromhex(got.get("output") or "")
        except ValueError:
            mine = b"?"
        return (f"serial output expected {bytes.fromhex(exp['output'])!r}, got {mine!r} — COM1"
                " (port 0x3f8) takes the low byte of each OUT to it; other ports print nothing")
    if regs and exp["regs"] is not None and got.get("regs") != exp["regs"]:
        gr = got.get("regs") or {}
        diffs = [f"{k} expected {v:#x}, got {_hx(gr.get(k))}" for k, v in exp["regs"].items()
                 if gr.get(k) != v]
        return ("final registers: " + "; ".join(diffs[:3])
                + _feed_hint(exp["exits"], len(exp["exits"])))
    return None


def _setup_hints(case: dict[str, Any], state: dict[str, Any] | None) -> list[str]:
    """What is wrong with the machine setup_vm built (compared with the canonical sequence)."""
    if not isinstance(state, dict):
        return []
    hints: list[str] = []
    gpa, size = int(case["gpa"]), int(case["memory_size"])
    entry = gpa if case["entry"] is None else int(case["entry"])
    log = state.get("log") or []
    if "system:KVM_GET_API_VERSION" not in log:
        hints.append("KVM_GET_API_VERSION was never called")
    slots = state.get("slots")
    if isinstance(slots, list):
        mine = [s for s in slots if isinstance(s, list) and len(s) == 5]
        at = [s for s in mine if s[1] <= gpa < s[1] + s[2]]
        if not at:
            where = ", ".join(f"{s[1]:#x}+{s[2]:#x}" for s in mine) or "none"
            hints.append(f"no memory slot holds the guest at {gpa:#x} (slots: {where})")
        elif not at[0][4] or at[0][1] != gpa:
            hints.append(f"the guest's code is not at {gpa:#x}: copy guest.code to the start of"
                         " the memory (memory.write(0, guest.code)) and map it at guest.gpa")
        elif at[0][2] != size:
            hints.append(f"the memory slot has {at[0][2]:#x} bytes, the guest {size:#x}"
                         " (guest.memory_size)")
    if state.get("vcpus") == 0:
        hints.append("no vCPU was created (KVM_CREATE_VCPU)")
    mm = state.get("mmap")
    if isinstance(mm, int) and mm < KVM_VCPU_MMAP_SIZE:
        hints.append(f"kvm_run was mapped with {mm} bytes: map KVM_GET_VCPU_MMAP_SIZE bytes"
                     f" ({KVM_VCPU_MMAP_SIZE}) — the port-I/O data lives past struct kvm_run")
    cs = state.get("cs")
    if isinstance(cs, list) and cs != [0, 0]:
        hints.append(f"cs.base is {_hx(cs[0])} and cs.selector {_hx(cs[1])}: set both to 0"
                     " (KVM_GET_SREGS, change, KVM_SET_SREGS)")
    regs = state.get("regs")
    if isinstance(regs, dict):
        want = dict.fromkeys(_REG_NAMES, 0)
        want.update({str(k): int(v) for k, v in case["regs"].items()})
        want["rip"] = entry
        bad = [f"{n} is {_hx(regs.get(n))}, expected {v:#x}" for n, v in want.items()
               if regs.get(n) != v]
        if bad:
            hints.append("after setup_vm " + ", ".join(bad[:3]) + " (a fresh kvm_regs with rip"
                         " = guest.entry or guest.gpa, rflags = 0x2 and guest.regs)")
    return hints


def _compare_refusal(case: dict[str, Any], got: dict[str, Any]) -> str | None:
    ref = got.get("refusal")
    version = case["api_version"]
    if not isinstance(ref, dict):
        return f"KVM_GET_API_VERSION returned {version}: setup_vm must raise VmmError"
    log = ref.get("log") or []
    if "system:KVM_GET_API_VERSION" not in log:
        return (f"KVM_GET_API_VERSION returned {version}, but setup_vm never asked: check it"
                " first and refuse (raise VmmError) unless it is 12")
    if not ref.get("raised"):
        return (f"KVM_GET_API_VERSION returned {version}: setup_vm must raise VmmError, it"
                f" returned {ref.get('returned')}")
    made = [c for c in log if c.endswith(("KVM_CREATE_VM", "KVM_CREATE_VCPU"))]
    if made:
        return (f"KVM_GET_API_VERSION returned {version}: setup_vm raised VmmError, but only"
                f" after {made[0].split(':')[1]} — refuse before creating anything")
    return None


def compare(part: Part, check: Check, case: dict[str, Any], got: Any) -> str | None:
    """Compare the student's result with the reference (computed here); None when they agree.

    >>> ns = reference_namespace()
    >>> part = SPEC.part("vmm_run_loop")
    >>> case = cases(part, part.checks[0], lambda k: k)[1]          # the 'echo' guest
    >>> compare(part, part.checks[0], case, run_case(build(ns, part.grade_id, None), case))
    >>> def forgetful(machine, result, inputs=b"", max_exits=1000):
    ...     class Run:          # hides set_io_data: the IN's data never reaches the guest
    ...         def __getattr__(self, name):
    ...             return (lambda data: None) if name == "set_io_data" else getattr(
    ...                 machine.run, name)
    ...     return ns["run_loop"](replace(machine, run=Run()), result, inputs, max_exits)
    >>> got = run_case(build({**ns, "run_loop": forgetful}, part.grade_id, None), case)
    >>> print(compare(part, part.checks[0], case, got))  # doctest: +NORMALIZE_WHITESPACE
    exit #2 at 0x1008 (out 0x3f8, r0), KVM_EXIT_IO: data expected 42000000, got 01000000 —
    did the guest get the data of the IN at exit #1? Write it into the kvm_run area
    (run.set_io_data(data), at run.io.data_offset) before the next KVM_RUN
    """
    if not isinstance(got, dict):
        return "the worker returned no usable result for this guest"
    gid = part.grade_id
    if gid == "vmm_setup" and case["api_version"] != KVM_API_VERSION:
        return _compare_refusal(case, got)
    exp = expected_result(case)
    err = got.get("error")
    if isinstance(err, dict):
        return _crash_message(gid, exp, err, got)
    if gid == "vmm_setup":
        hints = _setup_hints(case, got.get("state"))
        if got.get("run_error"):
            msg: str | None = f"running the guest on your machine failed: {got['run_error']}"
        else:
            msg = _compare_run(case, exp, got, regs=True)
        if msg is not None and hints:
            msg += "; " + "; ".join(hints[:3])
        return msg
    if gid == "vmm_run_loop":
        return _compare_run(case, exp, got, regs=True)
    return _compare_errors(case, exp, got)


def _compare_errors(case: dict[str, Any], exp: dict[str, Any], got: dict[str, Any]) -> str | None:
    problems = got.get("problems") or []
    if "stop" not in got and problems:
        return "; ".join(problems)
    stop, want = got.get("stop"), exp["stop"]
    if want == "api_version" and stop != want:
        return (f"KVM_GET_API_VERSION returned {case['api_version']}: expected"
                f" stop='api_version' (setup_vm raised VmmError), got stop={stop!r}")
    if want == "error" and (stop != "error" or got.get("error") != exp["error"]):
        return (f"a KVM call failed with errno {_errname(exp['error'])}: expected stop='error'"
                f" and error={exp['error']}, got stop={stop!r}, error={got.get('error')!r}")
    if want == exit_name(KVM_EXIT_INTR) and stop != want:
        return (f"KVM_RUN failed with EINTR (the run budget ran out): expected a"
                f" KVM_EXIT_INTR record and stop={want!r}, got stop={stop!r}"
                + (f", error={got.get('error')!r}" if got.get("error") is not None else ""))
    if stop != want:
        return f"stop expected {want!r}, got {stop!r}"
    if got.get("error") != exp["error"]:
        return f"error expected {exp['error']!r} (no KVM call failed), got {got.get('error')!r}"
    if got.get("detail") != exp["detail"]:
        where = {exit_name(KVM_EXIT_FAIL_ENTRY): " (run.fail_entry.hardware_entry_failure"
                 "_reason)", exit_name(KVM_EXIT_INTERNAL_ERROR): " (run.internal.suberror)"}
        return (f"detail expected {_hx(exp['detail'])}{where.get(want, '')}, got"
                f" {_hx(got.get('detail'))}")
    return _compare_run(case, exp, got, regs=False)


def _crash_message(gid: str, exp: dict[str, Any], err: dict[str, Any],
                   got: dict[str, Any]) -> str:
    where = str(err.get("where") or FUNCTIONS[gid])
    text = str(err.get("message") or err.get("type") or "an exception")
    msg = f"your {where} raised:\n{text}"
    if gid == "vmm_errors" and err.get("oserror"):
        msg += ("\n— report a failed KVM call in the VmResult (stop='error', error=e.errno;"
                " EINTR from KVM_RUN: a KVM_EXIT_INTR record) instead of raising")
    elif gid == "vmm_errors" and exp["stop"] == "api_version":
        msg += "\n— a refused API version is stop='api_version', not an exception"
    elif gid == "vmm_setup" and err.get("oserror"):
        log = got.get("log") or []
        if log:
            msg += f"\n(the last call was {log[-1].split(':')[-1]})"
    return msg


def check_seeds(grade_id: str, namespace: dict[str, Any], seeds: Iterable[int]) -> list[str]:
    """Run a part's generated guests with these ``seeds`` on the function ``namespace``
    defines, in this process: the failure messages ([] when all pass).

    For a notebook's own test cells (advice, not a score: no sandbox, the reference runs
    here, as in :func:`autograder.grade.run_visible`).

    >>> check_seeds("vmm_errors", reference_namespace(), (7, 8))
    []
    """
    part = SPEC.part(grade_id)
    impl = build(namespace, grade_id, worker_setup(grade_id))
    out = []
    for seed in seeds:
        case = generated_case(_KIND[grade_id], seed)
        try:
            msg = compare(part, part.checks[-1], case, run_case(impl, case))
        except Exception as e:  # a bug of the grader would surface here, not be hidden
            msg = f"{type(e).__name__}: {e}"
        if msg is not None:
            out.append(f"{case['label']}: {msg}")
    return out

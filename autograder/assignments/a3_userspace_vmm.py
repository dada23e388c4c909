"""Assignment 3 — a userspace VMM (用户态VMM): the students write the loop on ``KVM_RUN``.

The students program against virtcore's ``/dev/kvm`` model (:mod:`virtcore.kvm`, teaching-ISA
guests, pure Python): the real ioctl names and numbers, ``struct kvm_run`` and the
``KVM_EXIT_*`` values, and ``OSError`` with the kernel's errno for every mistake
[KVM-API; KVM-H; LWN15].  Their solution cells define three
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

import errno
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from autograder.harness.a3 import (
    COM1,
    FUNCTIONS,
    MAX_EXITS,
    _Machine,
    _rec_json,
    _RefusedError,
    _regs_json,
    _Result,
    build,
    guest_of,
    run_case,
    worker_setup,
)
from autograder.harness.a3_loop import ref_loop as _ref_loop
from autograder.harness.a3_setup import ref_setup as _ref_setup
from autograder.spec import AssignmentSpec, Check, Part
from virtcore.kvm.api import (
    KVM_API_VERSION,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_VCPU_MMAP_SIZE,
    PAGE_SIZE,
    ExitRecord,
    exit_name,
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

#: Teaching-ISA instructions one ``KVM_RUN`` may execute before ``EINTR`` (the model's budget).
BUDGET = 20_000
#: The budget of the guests that loop without exits (``EINTR`` comes sooner).
FAULT_BUDGET = 2_000
#: Generated guests per hidden check.
HIDDEN_CASES = 5
CASE_TIMEOUT = 3.0
CELL_TIMEOUT = 5.0
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


#: The harness modules staged per part: the reference pieces of the *other* parts only.
_HARNESS = {"vmm_setup": ("a3", "a3_loop"), "vmm_run_loop": ("a3", "a3_setup"),
            "vmm_errors": ("a3", "a3_setup", "a3_loop")}


def sandbox_plan(grade_id: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """What the sandbox of a part holds: the reference VMM loops redacted in its copy of
    virtcore, and the harness with the reference set-up (for ``vmm_run_loop``), the reference
    loop (for ``vmm_setup``) or both (for ``vmm_errors``, graded on the error handling).

    >>> sandbox_plan("vmm_run_loop")[1]
    ('a3', 'a3_setup')
    """
    return dict(REFERENCES), _HARNESS[grade_id]


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
    >>> from dataclasses import replace
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

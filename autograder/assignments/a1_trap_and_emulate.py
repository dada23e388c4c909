"""Assignment 1 — trap and emulate (陷入与模拟): the students write the VMM's handlers.

The student's solution cells define functions with exactly the signature of virtcore's
handler table (:mod:`virtcore.vmm.handlers`)::

    def handle_cli(vcpu, insn):          # -> Action (None counts as CONTINUE)
        vcpu.interrupts_enabled = False
        vcpu.pc += 4
        return Action.CONTINUE

Parts (nbgrader grade ids) and the handlers each must define:

========================== ========================================== ======
part                       handlers                                   points
========================== ========================================== ======
``handlers_interrupt_flag`` ``handle_cli``, ``handle_sti``, ``handle_hlt``  10
``handlers_io``             ``handle_in``, ``handle_out``                10
``handlers_control``        ``handle_rdcr``, ``handle_wrcr``,            15
                            ``handle_iret``, ``handle_syscall``,
                            ``handle_invlpg``
``popf_binary_translation`` ``handle_pushf``, ``handle_popf`` (reached   10
                            through binary translation: the translated
                            guest-kernel code calls them, with no trap)
========================== ========================================== ======

How a part is checked: guest kernels run under virtcore's hypervisor (trap-and-emulate;
binary translation for the POPF part) with the **student's handlers for the part's
instructions** and virtcore's reference handlers for every other instruction — so a bug in
one part never costs another.  Each handler call is recorded (clock, pc, instruction, and
the vCPU's whole state after the handler: pc, FLAGS, mode, registers, control registers,
halted, the returned action); at the end the final state is recorded (how it stopped,
registers, FLAGS, mode, memory, serial output, clock).  The grader runs the same guest with
the reference handlers *in its own process* and compares: the first divergence is reported,
e.g. ``after trap #3 (cli at pc=0x8, clock 3): pc expected 0xc, got 0x8 — the cli handler
did not advance pc (vcpu.pc += 4)``.

Checks per part: *directed* guests written for the part (visible), *public* generated guests
(:func:`virtcore.vmm.popek.generate_guest` with the fixed seeds in :data:`PUBLIC_SEEDS`,
visible), *hidden* generated guests with per-student seeds.  Every generated guest is kept
only if the reference run calls at least one of the part's handlers.  Step budget:
:data:`MAX_STEPS` guest instructions per run (the longest reference run of 600 generated
guests takes ~700).

>>> [p.grade_id for p in SPEC.parts]
['handlers_interrupt_flag', 'handlers_io', 'handlers_control', 'popf_binary_translation']
>>> SPEC.points
45
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from autograder.harness.a1 import HANDLERS, build, run_case, trace_guest, worker_setup
from autograder.spec import AssignmentSpec, Check, Part

__all__ = [
    "CASE_TIMEOUT",
    "CELL_TIMEOUT",
    "DIRECTED",
    "FORBIDDEN",
    "HANDLERS",
    "HIDDEN_CASES",
    "MAX_STEPS",
    "PUBLIC_SEEDS",
    "REFERENCES",
    "SPEC",
    "build",
    "cases",
    "check_seeds",
    "compare",
    "run_case",
    "trace_guest",
    "worker_setup",
]

_PREFIX = {"handlers_interrupt_flag": "interrupt_flag", "handlers_io": "io",
           "handlers_control": "control", "popf_binary_translation": "popf"}
_TECHNIQUE = {"popf_binary_translation": "bt"}

#: Guest instructions per run (each run; the reference never needs more than ~700).
MAX_STEPS = 3000
#: Generated guests per hidden check.
HIDDEN_CASES = 6
#: Body length of generated guests (:func:`~virtcore.vmm.popek.generate_guest`).
GUEST_LENGTH = 40
CASE_TIMEOUT = 3.0
CELL_TIMEOUT = 5.0

#: The fixed seeds of the public (visible) generated guests — the same for every student.
PUBLIC_SEEDS: dict[str, tuple[int, ...]] = {
    "interrupt_flag_public": (1, 2, 3),
    "io_public": (4, 5, 6),
    "control_public": (7, 8, 9),
    "popf_public": (10, 11, 12),
}


def _part(grade_id: str, points: tuple[float, float, float], description: str) -> Part:
    pre = _PREFIX[grade_id]
    names = ", ".join(f"handle_{m}" for m in HANDLERS[grade_id])
    d, p, h = points
    return Part(grade_id, d + p + h, (
        Check(f"{pre}_directed", d, False,
              f"directed guests for {', '.join(HANDLERS[grade_id])}"),
        Check(f"{pre}_public", p, False, "generated guests with the public seeds"),
        Check(f"{pre}_hidden", h, True, "generated guests with your own hidden seeds"),
    ), f"{description} ({names})", tuple(f"handle_{m}" for m in HANDLERS[grade_id]))


SPEC = AssignmentSpec(
    name="a1_trap_and_emulate",
    notebook="trap_and_emulate.ipynb",
    title="Trap and emulate: the VMM handlers",
    parts=(
        _part("handlers_interrupt_flag", (3, 3, 4),
              "the virtual interrupt flag and waiting: cli, sti, hlt"),
        _part("handlers_io", (3, 3, 4), "port I/O on the VM's own virtual devices: in, out"),
        _part("handlers_control", (4, 4, 7),
              "virtual control registers, return from trap and system calls: rdcr, wrcr,"
              " iret, syscall, invlpg"),
        _part("popf_binary_translation", (4, 2, 4),
              "the POPF problem: pushf/popf, made to trap by binary translation"),
    ),
)

_REFS = tuple(f"handle_{m}" for m in
              ("cli", "sti", "hlt", "in", "out", "rdcr", "wrcr", "iret", "invlpg", "syscall",
               "hcall", "pushf", "popf"))

#: Switched off in the worker before student code runs.
REFERENCES: dict[str, tuple[str, ...]] = {
    "virtcore.vmm.handlers": (*_REFS, "_REFERENCE", "HandlerTable.reference"),
}

#: Flagged by the static scan (every path they can be reached by).
FORBIDDEN: tuple[str, ...] = (
    *(f"virtcore.vmm.handlers.{n}" for n in _REFS),
    "virtcore.vmm.handlers._REFERENCE",
    "virtcore.vmm.handlers.HandlerTable.reference",
    "virtcore.vmm.HandlerTable.reference",
)


def sandbox_plan(grade_id: str) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """What the sandbox of a part holds: the virtcore names redacted in its copy (the part's own
    reference handlers; the other parts' stay, the hypervisor runs on them) and the harness
    modules staged (:mod:`autograder.harness.a1`).

    >>> sandbox_plan("handlers_io")
    ({'virtcore.vmm.handlers': ('handle_in', 'handle_out')}, ('a1',))
    """
    return {"virtcore.vmm.handlers": tuple(f"handle_{m}" for m in HANDLERS[grade_id])}, ("a1",)


_HANDLER = """
; ---- the guest kernel's trap handler: counts traps, steps over faults, one timer tick
handler: push r4
        push r5
        li   r5, 0x2100
        ld   r4, [r5+0]
        addi r4, 1
        st   r4, [r5+0]          ; traps taken
        rdcr r4, cause
        st   r4, [r5+4]          ; the last cause
        cmpi r4, 32
        jlt  h_sync
        cmpi r4, 48
        jlt  h_irq
h_sync: rdcr r4, epc             ; synchronous: step over the instruction
        addi r4, 4
        wrcr epc, r4
        rdcr r4, cause
        cmpi r4, 0x80
        jnz  h_out
        rdcr r4, estatus         ; a syscall returns to kernel mode
        li   r5, 0xfffeffff
        and  r4, r5
        wrcr estatus, r4
        jmp  h_out
h_irq:  movi r4, 0
        out  0x40, r4            ; one tick is enough: stop the timer
h_out:  pop  r5
        pop  r4
        iret
"""

#: Directed guests per part: (name, assembly source).  Visible: the notebook may show them.
DIRECTED: dict[str, tuple[tuple[str, str], ...]] = {
    "handlers_interrupt_flag": (
        ("cli-sti", "cli\nsti\ncli\nsti\ncli\nhlt"),
        ("wait-for-timer", """
start:  li   r1, handler
        wrcr tvec, r1
        movi r2, 50
        out  0x40, r2            ; a timer tick every 50 ticks
        sti
        hlt                      ; wait for it
        movi r3, 7
        cli
        hlt
""" + _HANDLER),
        ("wait-twice", """
start:  li   r1, handler
        wrcr tvec, r1
        movi r2, 30
        out  0x40, r2
        cli
        sti
        hlt
        movi r2, 40
        out  0x40, r2
        sti
        nop
        hlt
        cli
        hlt
""" + _HANDLER),
    ),
    "handlers_io": (
        ("serial", """
        movi r1, 'o'
        out  0x3f8, r1
        movi r1, 'k'
        out  0x3f8, r1
        in   r2, 0x3fd           ; line status
        in   r3, 0x80            ; nobody there: floats high
        out  0x80, r1            ; ignored
        in   r4, 0x3fb
        cli
        hlt
"""),
        ("timer", """
start:  li   r1, handler
        wrcr tvec, r1
        movi r2, 25
        out  0x40, r2
        in   r6, 0x40
        sti
        hlt
        in   r4, 0x40
        movi r1, '!'
        out  0x3f8, r1
        cli
        hlt
""" + _HANDLER),
    ),
    "handlers_control": (
        ("registers", """
        li   r1, 0x1234
        wrcr cr2, r1
        rdcr r2, cr2
        li   r1, 0x3000
        wrcr cr3, r1
        rdcr r3, cr3
        invlpg r1
        li   r1, 0x40
        wrcr tvec, r1
        rdcr r4, tvec
        rdcr r6, cr0
        movi r1, 0
        wrcr cr0, r1
        cli
        hlt
"""),
        ("syscall", """
start:  li   r1, handler
        wrcr tvec, r1
        movi r0, 3
        syscall
        li   r5, 0x2100
        ld   r2, [r5+4]          ; the cause the handler saw
        rdcr r3, epc
        movi r0, 5
        syscall
        cli
        hlt
""" + _HANDLER),
        ("user-mode", """
start:  li   r1, handler
        wrcr tvec, r1
        li   r3, user
        wrcr epc, r3
        li   r3, 0x10202
        wrcr estatus, r3
        iret                     ; to user mode, IF on
user:   movi r1, 5
        cli                      ; privileged in user mode: #GP into the guest kernel
        rdcr r2, cr2             ; again
        movi r0, 1
        syscall                  ; back to kernel mode
        rdcr r4, estatus
        cli
        hlt
""" + _HANDLER),
    ),
    "popf_binary_translation": (
        ("irq-save-restore", ""),  # virtcore.vmm.fixes.POPF_GUEST, filled in below
        ("pushf-sees-virtual-if", """
        sti
        pushf
        pop  r1
        cli
        pushf
        pop  r2
        li   r3, 0x283
        push r3
        popf
        pushf
        pop  r4
        li   r3, 0x2
        push r3
        popf
        hlt
"""),
        ("popf-in-user-mode", """
start:  li   r1, handler
        wrcr tvec, r1
        li   r3, user
        wrcr epc, r3
        li   r3, 0x10202
        wrcr estatus, r3
        iret                     ; user mode, IF on
user:   li   r3, 0x2
        push r3
        popf                     ; user mode: IF must stay on
        pushf
        pop  r2
        movi r0, 1
        syscall
        cli
        hlt
""" + _HANDLER),
    ),
}


def _fill_popf_guest() -> None:
    from virtcore.vmm.fixes import POPF_GUEST

    rows = DIRECTED["popf_binary_translation"]
    DIRECTED["popf_binary_translation"] = (("irq-save-restore", POPF_GUEST), *rows[1:])


_fill_popf_guest()


# ------------------------------------------------------------------------------ running


def _case_from_source(label: str, source: str, seed: int | None, technique: str,
                      pages: int = 4) -> dict[str, Any]:
    from virtcore.hw.asm import assemble

    prog = assemble(source)
    return {"label": label, "seed": seed, "words": list(prog.words), "origin": prog.origin,
            "pages": pages, "technique": technique, "max_steps": MAX_STEPS}


def _case_from_seed(label: str, seed: int, grade_id: str) -> dict[str, Any]:
    from virtcore.vmm.popek import generate_guest

    popf = grade_id == "popf_binary_translation"
    g = generate_guest(seed, length=GUEST_LENGTH, popf=popf)
    return {"label": label, "seed": seed, "words": list(g.program.words),
            "origin": g.program.origin, "pages": g.memory_pages,
            "technique": _TECHNIQUE.get(grade_id, "trap"), "max_steps": MAX_STEPS}


_REF_CACHE: OrderedDict[str, dict[str, Any]] = OrderedDict()


def _reference(case: dict[str, Any]) -> dict[str, Any]:
    """The reference trace of a case (computed in the grader's process, cached)."""
    key = json.dumps([case["words"], case["origin"], case["pages"], case["technique"],
                      case["max_steps"]])
    hit = _REF_CACHE.get(key)
    if hit is not None:
        _REF_CACHE.move_to_end(key)
        return hit
    from virtcore.vmm.handlers import HandlerTable

    out = trace_guest(dict(HandlerTable.reference()), case)
    _REF_CACHE[key] = out
    if len(_REF_CACHE) > 512:
        _REF_CACHE.popitem(last=False)
    return out


def cases(part: Part, check: Check, seed_of: Callable[[int], int]) -> list[dict[str, Any]]:
    """The cases of ``check`` (see :mod:`autograder.assignments`).

    >>> part = SPEC.part("handlers_io")
    >>> [c["label"] for c in cases(part, part.checks[0], lambda k: k)]
    ["directed guest 'serial'", "directed guest 'timer'"]
    >>> [c["seed"] for c in cases(part, part.checks[1], lambda k: k)]
    [4, 5, 6]
    """
    gid = part.grade_id
    tech = _TECHNIQUE.get(gid, "trap")
    mine = set(HANDLERS[gid])

    def exercises(case: dict[str, Any]) -> bool:  # a case the part's handlers play no role in
        return any(r[2] in mine for r in _reference(case)["traps"])  # grades nothing

    if check.name.endswith("_directed"):
        return [c for c in (_case_from_source(f"directed guest {name!r}", src, None, tech)
                            for name, src in DIRECTED[gid]) if exercises(c)]
    if not check.hidden:
        return [c for c in (_case_from_seed(f"public guest seed={s}", s, gid)
                            for s in PUBLIC_SEEDS[check.name]) if exercises(c)]
    out: list[dict[str, Any]] = []
    k = 0
    while len(out) < HIDDEN_CASES and k < 20 * HIDDEN_CASES:
        seed = seed_of(k)
        k += 1
        case = _case_from_seed(f"hidden guest #{len(out) + 1}", seed, gid)
        if any(r[2] in mine for r in _reference(case)["traps"]):
            out.append(case)
    return out


# ---------------------------------------------------------------------------- comparing

def _insn_text(case: dict[str, Any], pc: object) -> str:
    from virtcore.hw.asm import format_instruction

    try:
        i = (int(pc) - int(case["origin"])) // 4  # type: ignore[call-overload]
        return format_instruction(case["words"][i], int(pc))  # type: ignore[call-overload]
    except Exception:
        return "?"


def _hexv(v: object) -> str:
    return hex(v) if type(v) is int else str(v)


def _diff_record(e: list[Any], g: list[Any]) -> list[str]:
    """Field differences of two trap records (after-handler states), in words."""
    out = []
    from virtcore.hw.isa import CR, FLAG_IF

    labels = ["pc", "FLAGS", "mode", "halted"]
    for i, name in enumerate(labels):
        a, b = e[3 + i], g[3 + i]
        if a != b:
            if name == "FLAGS" and type(a) is int and type(b) is int and (a ^ b) & FLAG_IF:
                out.append(f"virtual IF expected {int(bool(a & FLAG_IF))}, got"
                           f" {int(bool(b & FLAG_IF))} (FLAGS {a:#x} vs {b:#x})")
            elif name == "halted":
                out.append(f"halted expected {bool(a)}, got {bool(b)}")
            else:
                out.append(f"{name} expected {_hexv(a)}, got {_hexv(b)}")
    er, gr = e[7], g[7]
    if er != gr:
        if len(er) != len(gr):
            out.append(f"registers expected {len(er)} values, got {len(gr)}")
        else:
            for i, (a, b) in enumerate(zip(er, gr)):
                if a != b:
                    out.append(f"r{i} expected {_hexv(a)}, got {_hexv(b)}")
    ec, gc = e[8], g[8]
    if ec != gc:
        names = [c.name for c in CR]
        if len(ec) != len(gc):
            out.append("control registers changed shape")
        else:
            for n, a, b in zip(names, ec, gc):
                if a != b:
                    out.append(f"virtual {n} expected {_hexv(a)}, got {_hexv(b)}")
    if e[9] != g[9]:
        out.append(f"returned action expected {e[9]!r}, got {g[9]!r}")
    if e[10] != g[10]:
        out.append(f"vCPU stop reason expected {e[10]!r}, got {g[10]!r}")
    return out


def _valid(got: object) -> bool:
    if not isinstance(got, dict):
        return False
    need = {"stop": str, "traps": list, "serial": str, "memory": list, "clock": int}
    if not all(isinstance(got.get(k), t) for k, t in need.items()):
        return False
    return all(isinstance(r, list) and len(r) == 11 for r in got["traps"])


def compare(part: Part, check: Check, case: dict[str, Any], got: Any) -> str | None:
    """Compare the student's trace with the reference (computed here); None when equal.

    >>> from virtcore.vmm.handlers import HandlerTable
    >>> case = _case_from_source("t", "cli\\nhlt", None, "trap")
    >>> part = SPEC.part("handlers_interrupt_flag")
    >>> ref = dict(HandlerTable.reference())
    >>> compare(part, part.checks[0], case, trace_guest(ref, case)) is None
    True
    >>> def lazy_cli(vcpu, insn):
    ...     vcpu.interrupts_enabled = False
    >>> got = trace_guest({**ref, "cli": lazy_cli}, case, ("cli",))
    >>> print(compare(part, part.checks[0], case, got))  # doctest: +NORMALIZE_WHITESPACE
    after trap #1 (cli at pc=0x0, clock 1): pc expected 0x4, got 0x0 —
    the cli handler did not advance pc (vcpu.pc += 4)
    """
    if not _valid(got):
        return "the worker returned no usable trace for this guest"
    exp = _reference(case)
    mine = set(HANDLERS[part.grade_id])
    et, gt = exp["traps"], got["traps"]
    for i, (e, g) in enumerate(zip(et, gt)):
        if e == g:
            continue
        if e[:3] != g[:3]:
            return (f"trap #{i + 1}: expected the guest to trap at pc={_hexv(e[1])}"
                    f" ({_insn_text(case, e[1])}) at clock {e[0]}, but it trapped at"
                    f" pc={_hexv(g[1])} ({_insn_text(case, g[1])}) at clock {g[0]} — an"
                    " earlier handler left the guest in a different state")
        diffs = _diff_record(e, g)
        where = (f"after trap #{i + 1} ({_insn_text(case, e[1])} at pc={_hexv(e[1])},"
                 f" clock {e[0]})")
        msg = f"{where}: {'; '.join(diffs[:4])}"
        if e[3] != g[3] and g[3] == e[1] and e[3] == e[1] + 4 and e[2] in mine:
            msg += f" — the {e[2]} handler did not advance pc (vcpu.pc += 4)"
        return msg
    err = got.get("error")
    if isinstance(err, dict) and err.get("at") == len(gt) and len(et) >= len(gt):
        text = str(err.get("message", ""))
        if err.get("after"):
            return (f"after trap #{len(gt)} the hypervisor stopped: {text}"
                    if gt else f"the hypervisor stopped: {text}")
        pc = err.get("pc")
        return (f"trap #{len(gt) + 1} ({_insn_text(case, pc)} at pc={_hexv(pc)}, clock"
                f" {err.get('clock')}): your handle_{err.get('mnemonic')} raised:\n{text}")
    if len(et) != len(gt):
        if len(gt) < len(et):
            e = et[len(gt)]
            return (f"expected {len(et)} traps, the guest stopped after {len(gt)}"
                    f" ({got['stop']!r}); next expected: {_insn_text(case, e[1])} at"
                    f" pc={_hexv(e[1])}, clock {e[0]}")
        g = gt[len(et)]
        hint = ""
        if got["stop"] == "budget" and exp["stop"] != "budget":
            count, pc = (got.get("repeats") or [0, 0])[:2]
            hint = (f"; the guest did not finish within {case['max_steps']} steps"
                    + (f" and trapped {count + 1} times in a row at pc={_hexv(pc)}"
                       f" ({_insn_text(case, pc)})" if count >= 2 else ""))
        return (f"expected {len(et)} traps, got more: trap #{len(et) + 1} at"
                f" pc={_hexv(g[1])} ({_insn_text(case, g[1])}), clock {g[0]}{hint}")
    return _final_diff(exp, got, case)


def _final_diff(exp: dict[str, Any], got: dict[str, Any], case: dict[str, Any]) -> str | None:
    out = []
    if exp["stop"] != got["stop"]:
        out.append(f"stopped: expected {exp['stop']!r}, got {got['stop']!r}")
    for k in ("pc", "flags", "mode"):
        if exp.get(k) != got.get(k):
            out.append(f"final {k} expected {_hexv(exp.get(k))}, got {_hexv(got.get(k))}")
    er, gr = exp.get("regs"), got.get("regs")
    if er != gr and isinstance(er, list) and isinstance(gr, list):
        for i, (a, b) in enumerate(zip(er, gr)):
            if a != b:
                out.append(f"final r{i} expected {_hexv(a)}, got {_hexv(b)}")
    if exp["serial"] != got["serial"]:
        out.append(f"serial output expected {bytes.fromhex(exp['serial'])!r}, got"
                   f" {_serial(got['serial'])!r}")
    if exp["clock"] != got["clock"]:
        out.append(f"clock expected {exp['clock']}, got {got['clock']}")
    if exp["memory"] != got["memory"]:
        em = dict(exp["memory"])
        gm = {i: w for i, w in got["memory"] if isinstance(i, int)} if all(
            isinstance(x, list) and len(x) == 2 for x in got["memory"]) else {}
        for i in sorted(set(em) | set(gm)):
            if em.get(i, 0) != gm.get(i, 0):
                out.append(f"memory word at {4 * i:#x} expected {em.get(i, 0):#x}, got"
                           f" {_hexv(gm.get(i, 0))}")
                break
    if not out:
        return None
    return "final state: " + "; ".join(out[:4])


def _serial(hexstr: str) -> bytes | str:
    try:
        return bytes.fromhex(hexstr)
    except ValueError:
        return hexstr


def check_seeds(grade_id: str, namespace: dict[str, Any], seeds: Iterable[int]) -> list[str]:
    """Run a part's generated guests with these ``seeds`` on the handlers ``namespace``
    defines, in this process, with the hidden check's comparison: the failure messages ([]
    when all pass).

    For a notebook's own test cells (advice, not a score: no sandbox, the reference runs
    here, as in :func:`autograder.grade.run_visible`).

    >>> from virtcore.vmm.handlers import HandlerTable
    >>> ns = {f"handle_{m}": fn for m, fn in HandlerTable.reference().items()}
    >>> check_seeds("handlers_io", ns, (101, 102))
    []
    """
    part = SPEC.part(grade_id)
    impl = build(namespace, grade_id, worker_setup(grade_id))
    out = []
    for seed in seeds:
        case = _case_from_seed(f"guest seed={seed}", seed, grade_id)
        try:
            msg = compare(part, part.checks[-1], case, run_case(impl, case))
        except Exception as e:  # a bug of the grader would surface here, not be hidden
            msg = f"{type(e).__name__}: {e}"
        if msg is not None:
            out.append(f"{case['label']}: {msg}")
    return out

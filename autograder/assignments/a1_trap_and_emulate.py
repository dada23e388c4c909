"""Assignment 1 — trap and emulate (陷入与模拟): the students decide what the VMM must see, then
write its handlers.

The design part (``design_treatment``) comes first: the student's ``treatment(row)`` says what
the VMM must do with one row of an ISA table — run it ``"direct"``, let it ``"trap"`` and
emulate it, or ``"translate"`` it because it would neither behave nor trap (:func:`treatment`
is the grader's own answer, Popek and Goldberg's rule [PG74]).  It is asked about the real
:data:`virtcore.hw.TABLE` (visible), about made-up ISAs with the public seeds (visible) and
about made-up ISAs drawn for each submission (hidden; :func:`synthetic_rows`: invented
mnemonics with random combinations of privileged, sensitivity, kind and user-mode behaviour),
so only the rule passes — a table of the real mnemonics does not.

The other parts' solution cells define functions with exactly the signature of virtcore's
handler table (:mod:`virtcore.vmm.handlers`)::

    def handle_cli(vcpu, insn):          # -> Action (None counts as CONTINUE)
        vcpu.interrupts_enabled = False
        vcpu.pc += 4
        return Action.CONTINUE

Parts (nbgrader grade ids) and what each part's cell must define:

========================== ========================================== ======
part                       what the cell defines                      points
========================== ========================================== ======
``design_treatment``        ``treatment(row)`` → "direct" | "trap" |      5
                            "translate"
``handlers_interrupt_flag`` ``handle_cli``, ``handle_sti``, ``handle_hlt``   5
``handlers_io``             ``handle_in``, ``handle_out``                10
``handlers_control``        ``handle_rdcr``, ``handle_wrcr``,            15
                            ``handle_iret``, ``handle_syscall``,
                            ``handle_invlpg``
``popf_binary_translation`` ``handle_pushf``, ``handle_popf`` (reached   10
                            through binary translation: the translated
                            guest-kernel code calls them, with no trap)
========================== ========================================== ======

Why these weights: a part's points follow how much of it the student decides.  The design
is the student's alone and every later part rests on it (5); Part 1's three handlers are
spelled out almost line by line by the notebook's text (5, taken from its former 10 when
the design became graded); I/O must reach the VM's own devices for any port, timer included
(10); the control part has five handlers, ``iret``'s mode and ``syscall``'s reflection among
them (15); POPF's handlers are worked out from the ISA, stack faults included (10).

How a handler part is checked: guest kernels run under virtcore's hypervisor (trap-and-emulate;
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

>>> [p.grade_id for p in SPEC.parts]  # doctest: +NORMALIZE_WHITESPACE
['design_treatment', 'handlers_interrupt_flag', 'handlers_io', 'handlers_control',
 'popf_binary_translation']
>>> [p.points for p in SPEC.parts], SPEC.points
([5, 5, 10, 15, 10], 45)
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from autograder.harness.a1 import (
    DESIGN,
    HANDLERS,
    TREATMENTS,
    build,
    row_to_json,
    run_case,
    trace_guest,
    worker_setup,
)
from autograder.spec import AssignmentSpec, Check, Part

__all__ = [
    "CASE_TIMEOUT",
    "CELL_TIMEOUT",
    "DESIGN",
    "DESIGN_HIDDEN_CASES",
    "DESIGN_PUBLIC_SEEDS",
    "DIRECTED",
    "FORBIDDEN",
    "HANDLERS",
    "HIDDEN_CASES",
    "MAX_STEPS",
    "PUBLIC_SEEDS",
    "REFERENCES",
    "SPEC",
    "TREATMENTS",
    "build",
    "cases",
    "check_seeds",
    "compare",
    "run_case",
    "synthetic_rows",
    "trace_guest",
    "treatment",
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


#: Made-up ISAs of the design part's public (visible) check: their seeds, the same for everyone.
DESIGN_PUBLIC_SEEDS: tuple[int, ...] = (1, 2, 3)
#: Made-up ISAs per hidden check of the design part (drawn per submission).
DESIGN_HIDDEN_CASES = 6
#: Rows of a made-up ISA.
SYNTHETIC_ROWS = 12

_DESIGN_PART = Part(DESIGN, 5, (
    Check("design_table", 1, False, "the real ISA table, virtcore.hw.TABLE"),
    Check("design_public", 1, False, "made-up ISAs with the public seeds"),
    Check("design_hidden", 3, True, "made-up ISAs drawn for your submission"),
), "what the VMM must do with each instruction: direct, trap or translate (treatment)",
    ("treatment",))

SPEC = AssignmentSpec(
    name="a1_trap_and_emulate",
    notebook="trap_and_emulate.ipynb",
    title="Trap and emulate: the VMM handlers",
    parts=(
        _DESIGN_PART,
        _part("handlers_interrupt_flag", (2, 1, 2),
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
    modules staged (:mod:`autograder.harness.a1`).  The design part redacts
    :func:`virtcore.vmm.popek.classify`, the library's sorting of rows into Popek–Goldberg
    classes (its ``violations`` are the rows to translate).

    >>> sandbox_plan("handlers_io")
    ({'virtcore.vmm.handlers': ('handle_in', 'handle_out')}, ('a1',))
    >>> sandbox_plan("design_treatment")
    ({'virtcore.vmm.popek': ('classify',)}, ('a1',))
    """
    if grade_id == DESIGN:
        return {"virtcore.vmm.popek": ("classify",)}, ("a1",)
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


# ------------------------------------------------------------------------- the design part

def treatment(row: dict[str, Any]) -> str:
    """The grader's answer for one ISA row (JSON data, as :func:`row_to_json` gives it).

    Popek and Goldberg [PG74]: the guest kernel runs deprivileged (in user mode), so

    - a **privileged** instruction (it traps when run in user mode) reaches the monitor by
      itself: ``"trap"`` — the VMM emulates it on the virtual CPU (陷入并模拟).  That holds
      whether or not it is sensitive: it cannot run directly, it traps; in their VMM every
      privileged instruction has an interpreter routine;
    - a **sensitive** instruction that is *not* privileged — control-sensitive (it changes the
      configuration: x86 POPF's IF [RI00]) or behaviour-sensitive (its effect depends on the
      configuration: the mode, or where it sits in real memory — "location sensitive") — would
      run in user mode with the wrong effect and no trap: the VMM must find it before it runs,
      ``"translate"`` (binary translation: the translated code does the instruction on the
      virtual CPU [AA06]);
    - an **innocuous** unprivileged instruction runs ``"direct"``: their efficiency property
      has the hardware execute every innocuous instruction with no intervention of the
      monitor.

    Theorem 1 is the case with no row of the second kind: then trap-and-emulate suffices.

    >>> from virtcore.hw.isa import ISA
    >>> [treatment(row_to_json(ISA[m])) for m in ("add", "cli", "popf", "pushf", "syscall")]
    ['direct', 'trap', 'translate', 'translate', 'direct']
    """
    if row["privileged"]:
        return "trap"
    if row["sensitivity"] != "innocuous":
        return "translate"
    return "direct"


# What made-up rows do, by (privileged, sensitivity): (operands, semantics, what happens in
# user mode when the row does not trap there).
_CONTROL: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("rs",), "relocation base ← rs", "the write is silently ignored"),
    (("rs",), "interrupt mask ← rs", "the new mask is silently dropped"),
    (("rs",), "trap vector ← rs", "the write is silently ignored"),
    (("uimm",), "timer period ← uimm", "the timer is silently left as it was"),
    (("rs",), "page-table root ← rs", "the write is silently ignored"),
    ((), "IF ← the saved IF", "IF is silently left unchanged"),
    (("rs",), "memory bound ← rs", "the write is silently ignored"),
)
_BEHAVIOUR: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("rd",), "rd ← the current privilege mode (mode-sensitive)",
     "it reports user mode, not the guest's kernel mode"),
    (("rd",), "rd ← the real IF (mode-sensitive)", "it reads the host's IF, not the guest's"),
    (("rd", "mem"), "rd ← the real address of [rs+imm] (location-sensitive)",
     "it reveals where the VMM placed the guest in real memory"),
    (("rd",), "rd ← the relocation base (location-sensitive)",
     "it reads the host's base, not the guest's"),
    (("rd",), "rd ← the interrupt mask", "it reads the host's mask, not the guest's"),
    (("rd",), "rd ← the trap vector", "it reads the host's vector, not the guest's"),
)
_INNOCUOUS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("rd", "rs"), "rd ← rd rotated left by (rs & 31)"),
    (("rd", "rs"), "rd ← the number of 1 bits of rs"),
    (("rd", "rs"), "rd ← max(rd, rs) (signed)"),
    (("rd", "rs"), "swap rd and rs"),
    (("rd", "imm"), "rd ← rd − sext(imm)"),
    (("target",), "if CF: pc ← target"),
    (("rd", "mem"), "rd ← the byte at [rs + sext(imm)]"),
    (("rd", "rs"), "rd ← rd × rs (high 32 bits)"),
)
#: Privileged yet innocuous: it changes nothing a program can see, but traps in user mode.
_PRIVILEGED_INNOCUOUS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("rs",), "write back the cache line at rs (a hint; nothing a program sees changes)"),
    ((), "a diagnostic no-op"),
    ((), "wait a few cycles (a spin-loop hint)"),
)
_COMBOS = ((True, "innocuous"), (True, "control-sensitive"), (True, "behaviour-sensitive"),
           (False, "control-sensitive"), (False, "behaviour-sensitive"), (False, "innocuous"))


def _mnemonic(rng: Any, taken: set[str]) -> str:
    from virtcore.hw.isa import ISA

    while True:
        m = (rng.choice("bdfgkmpqtvxz") + rng.choice("aeiou") + rng.choice("klmnrstx")
             + rng.choice(("", "", "b", "q", "w", "z")))
        if m not in ISA and m not in taken:
            taken.add(m)
            return m


def synthetic_rows(seed: int, n: int = SYNTHETIC_ROWS) -> list[dict[str, Any]]:
    """A made-up ISA of ``n`` rows (JSON data like :func:`row_to_json`'s), from ``seed``.

    Invented mnemonics (never a real one), invented opcodes, and random combinations of what
    the rule looks at — privileged or not; innocuous, control- or behaviour-sensitive (mode- or
    location-sensitive) — and of what it does not: the kind, the operands, the wording.  Every
    one of the six combinations of privileged × sensitivity appears at least once, so a rule
    that gets one combination wrong fails every made-up ISA.  The note sometimes says what the
    row does in user mode (traps; silently does something else; the same as in kernel mode),
    as the real table's notes do for some rows — the ``privileged`` column always says it.

    >>> rows = synthetic_rows(7)
    >>> len(rows), len({r["mnemonic"] for r in rows}), synthetic_rows(7) == rows
    (12, 12, True)
    >>> sorted({treatment(r) for r in rows})
    ['direct', 'translate', 'trap']
    """
    from virtcore.rng import make_rng

    rng = make_rng(seed)
    combos = list(_COMBOS) + [rng.choice(_COMBOS) for _ in range(max(0, n - len(_COMBOS)))]
    rng.shuffle(combos)
    taken: set[str] = set()
    opcodes = rng.sample(range(0x60, 0x100), len(combos))
    out = []
    for (privileged, sens), opcode in zip(combos, opcodes):
        ops: tuple[str, ...]
        if sens == "control-sensitive":
            ops, sem, quiet = rng.choice(_CONTROL)
        elif sens == "behaviour-sensitive":
            ops, sem, quiet = rng.choice(_BEHAVIOUR)
        else:
            ops, sem = rng.choice(_PRIVILEGED_INNOCUOUS if privileged else _INNOCUOUS)
            quiet = ""
        if privileged:  # what it does in user mode, said in the note or not at all
            note = rng.choice(("", "", "in user mode it traps (#GP)"))
        elif quiet:
            note = rng.choice((f"in user mode {quiet}", f"in user mode {quiet}", ""))
        else:
            note = rng.choice(("", "", "in user mode it does what it does in kernel mode"))
        kind = "branch" if "target" in ops else rng.choice(("plain", "system"))
        out.append({"mnemonic": _mnemonic(rng, taken), "opcode": opcode, "operands": list(ops),
                    "semantics": sem, "kind": kind, "privileged": privileged,
                    "sensitivity": sens, "note": note})
    return out


def _design_cases(check: Check, seed_of: Callable[[int], int]) -> list[dict[str, Any]]:
    if check.name == "design_table":
        from virtcore.hw.isa import TABLE

        return [{"label": "the ISA table (virtcore.hw.TABLE)", "seed": None,
                 "rows": [row_to_json(r) for r in TABLE]}]
    if not check.hidden:
        return [{"label": f"made-up ISA seed={s}", "seed": s, "rows": synthetic_rows(s)}
                for s in DESIGN_PUBLIC_SEEDS]
    out = []
    for k in range(DESIGN_HIDDEN_CASES):
        seed = seed_of(k)
        out.append({"label": f"hidden made-up ISA #{k + 1}", "seed": seed,
                    "rows": synthetic_rows(seed)})
    return out


def _describe(row: dict[str, Any]) -> str:
    """A row in words: what the rule looks at, and what it does in user mode."""
    trap = ("privileged (traps with #GP in user mode)" if row["privileged"]
            else "not privileged (no trap in user mode)")
    note = f"; {row['note']}" if row.get("note") else ""
    return f"`{row['mnemonic']}` ({row['semantics']}): {trap}, {row['sensitivity']}{note}"


def _compare_design(case: dict[str, Any], got: Any) -> str | None:
    rows = case["rows"]
    answers = got.get("answers") if isinstance(got, dict) else None
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "the worker returned no usable answers for these rows"
    n = len(rows)
    for i, row in enumerate(rows):
        where = f"row {i + 1} of {n}, {_describe(row)}"
        if i >= len(answers):
            err = got.get("error")
            if isinstance(err, dict) and err.get("at") == i:
                return f"{where}: treatment(row) raised:\n{err.get('message', '')}"
            return f"{where}: no answer came back"
        exp, mine = treatment(row), answers[i]
        if mine != exp:
            hint = "" if mine in TREATMENTS else (
                f" (an answer is one of {', '.join(repr(t) for t in TREATMENTS)})")
            return f"{where}: expected {exp!r}, got {mine!r}{hint}"
    if len(answers) > n:
        return f"{len(answers)} answers came back for {n} rows"
    return None


# ------------------------------------------------------------------------------ running


def _case_from_source(label: str, source: str, seed: int | None, technique: str,
                      pages: int = 4) -> dict[str, Any]:
    from virtcore.hw.asm import assemble

    prog = assemble(source)
    return {"label": label, "seed": seed, "words": list(prog.words), "origin": prog.origin,
            "pages": pages, "technique": technique, "max_steps": MAX_STEPS}


def _case_from_seed(label: str, seed: int, grade_id: str) -> dict[str, Any]:
    popf = grade_id == "popf_binary_translation"
    words, origin, pages = _generated(seed, popf)
    return {"label": label, "seed": seed, "words": list(words), "origin": origin,
            "pages": pages, "technique": _TECHNIQUE.get(grade_id, "trap"),
            "max_steps": MAX_STEPS}


@functools.lru_cache(maxsize=1024)
def _generated(seed: int, popf: bool) -> tuple[tuple[int, ...], int, int]:
    """A generated guest, assembled (cached: the public guests are the same for everyone)."""
    from virtcore.vmm.popek import generate_guest

    g = generate_guest(seed, length=GUEST_LENGTH, popf=popf)
    return tuple(g.program.words), g.program.origin, g.memory_pages


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
    >>> design = SPEC.part("design_treatment")
    >>> [(c["label"], len(c["rows"])) for c in cases(design, design.checks[1], lambda k: k)]
    [('made-up ISA seed=1', 12), ('made-up ISA seed=2', 12), ('made-up ISA seed=3', 12)]
    """
    gid = part.grade_id
    if gid == DESIGN:
        return _design_cases(check, seed_of)
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

    >>> from virtcore.hw.isa import ISA
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

    The design part: the student's answers against :func:`treatment`, row by row.

    >>> design = SPEC.part("design_treatment")
    >>> case = {"rows": [row_to_json(ISA[m]) for m in ("add", "popf")]}
    >>> compare(design, design.checks[0], case, {"answers": ["direct", "translate"]}) is None
    True
    >>> print(compare(design, design.checks[0], case, {"answers": ["direct", "trap"]}))
    ... # doctest: +NORMALIZE_WHITESPACE
    row 2 of 2, `popf` (flags ← pop; in user mode IF is silently left unchanged): not
    privileged (no trap in user mode), control-sensitive; x86 POPF: fails silently instead of
    trapping — why classic x86 was not virtualizable: expected 'translate', got 'trap'
    """
    if part.grade_id == DESIGN:
        return _compare_design(case, got)
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

    The design part asks ``treatment`` about the made-up ISAs of these seeds:

    >>> everything_traps = {"treatment": lambda row: "trap"}
    >>> check_seeds("design_treatment", everything_traps, (5,))[0]  # doctest: +ELLIPSIS
    "made-up ISA seed=5: row ... expected 'direct', got 'trap'"
    """
    part = SPEC.part(grade_id)
    impl = build(namespace, grade_id, worker_setup(grade_id))
    out = []
    for seed in seeds:
        case = (_case_from_seed(f"guest seed={seed}", seed, grade_id) if grade_id != DESIGN
                else {"label": f"made-up ISA seed={seed}", "seed": seed,
                      "rows": synthetic_rows(seed)})
        try:
            msg = compare(part, part.checks[-1], case, run_case(impl, case))
        except Exception as e:  # a bug of the grader would surface here, not be hidden
            msg = f"{type(e).__name__}: {e}"
        if msg is not None:
            out.append(f"{case['label']}: {msg}")
    return out

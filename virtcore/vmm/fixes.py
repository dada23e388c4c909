"""The three fixes for a machine that fails Popek–Goldberg, side by side on one guest (facts §4.3).

The guest (:data:`POPF_GUEST`) saves its FLAGS with ``pushf``, turns
interrupts off for a critical section, and restores them with ``popf`` —
the idiom of x86 kernels (``local_irq_save``/``local_irq_restore``) — then
waits with ``hlt`` for a timer interrupt.  On bare hardware it prints
``ATC``.  Under plain **trap-and-emulate** the deprivileged ``popf`` fails
silently: the virtual IF stays 0, the timer interrupt never comes, and the
guest prints only ``A``.

The fixes:

- **binary translation** — the VMM scans the kernel image and rewrites
  ``popf``/``pushf`` into trapping words plus a patch table
  (:mod:`virtcore.vmm.bt`), then emulates them;
- **paravirtualization** — a *modified* guest (:data:`POPF_GUEST_PV`) asks
  the VMM with hypercalls instead (:class:`~virtcore.vmm.Hypercall`, an ABI
  of our own), and runs deprivileged;
- **hardware assist** — the unmodified guest runs in guest mode (VT-x-like
  non-root mode, its own ring 0, memory through EPT); ``popf`` works
  natively, and the VMM sees only VM exits (``hlt``, I/O).

Costs come from a :class:`CostModel` whose numbers are **teaching
assumptions** — orders of magnitude chosen to make the trade-offs visible,
not measurements.

>>> table = compare_fixes()
>>> [(r.technique, r.output, r.correct) for r in table.rows]  # doctest: +NORMALIZE_WHITESPACE
[('bare hardware', 'ATC', True), ('trap-and-emulate', 'A', False),
 ('binary translation', 'ATC', True), ('paravirtualization', 'ATC', True),
 ('hardware assist', 'ATC', True)]
"""

from __future__ import annotations

from dataclasses import dataclass

from virtcore.hw.asm import Program, assemble
from virtcore.hw.isa import FLAG_IF
from virtcore.vmm.handlers import Hypercall
from virtcore.vmm.popek import FinalState, _run_bare, run_bare, run_guest
from virtcore.vmm.vm import Technique, VMStats

__all__ = [
    "POPF_GUEST",
    "POPF_GUEST_PV",
    "RESULT_ADDRESS",
    "CostModel",
    "FixComparison",
    "FixResult",
    "compare_fixes",
    "run_fix",
]

#: Where the guest stores the result of its critical section.
RESULT_ADDRESS = 0x1000

#: The unmodified guest kernel: restores IF with popf, then waits for a timer interrupt.
POPF_GUEST = f"""
; the popf guest: local_irq_save / local_irq_restore, then wait for the timer
        .equ COM1, 0x3f8
        .equ PIT, 0x40
start:  li   r1, handler
        wrcr tvec, r1
        sti                     ; interrupts on
        pushf                   ; save FLAGS (IF = 1)
        cli                     ; critical section: interrupts off
        movi r2, 0
        movi r3, 50
sum:    add  r2, r3             ; ordinary work: r2 = 50 + 49 + ... + 1
        addi r3, -1
        cmpi r3, 0
        jnz  sum
        li   r4, {RESULT_ADDRESS:#x}
        st   r2, [r4]
        movi r1, 'A'
        out  COM1, r1
        popf                    ; restore FLAGS: IF = 1 again (fails silently if deprivileged)
        movi r1, 100
        out  PIT, r1            ; a timer interrupt in 100 ticks
        hlt                     ; wait for it: needs IF = 1
        movi r1, 'C'
        out  COM1, r1
        cli
        hlt                     ; done
handler:
        movi r1, 'T'
        out  COM1, r1
        movi r1, 0
        out  PIT, r1            ; stop the timer
        iret
"""

_H = {h.name: h.value for h in Hypercall}

#: The paravirtualized guest: the same kernel, with every sensitive operation a hypercall.
POPF_GUEST_PV = f"""
; the popf guest, paravirtualized: hypercalls (number in r0, argument in r1)
start:  li   r1, handler
        movi r0, {_H['SET_TRAP_HANDLER']}      ; was: wrcr tvec, r1
        hcall
        movi r0, {_H['IRQ_ENABLE']}            ; was: sti
        hcall
        movi r0, {_H['SAVE_FLAGS']}            ; was: pushf
        hcall
        push r0
        movi r0, {_H['IRQ_DISABLE']}           ; was: cli
        hcall
        movi r2, 0
        movi r3, 50
sum:    add  r2, r3
        addi r3, -1
        cmpi r3, 0
        jnz  sum
        li   r4, {RESULT_ADDRESS:#x}
        st   r2, [r4]
        movi r1, 'A'
        movi r0, {_H['CONSOLE_WRITE']}         ; was: out COM1, r1
        hcall
        pop  r1
        movi r0, {_H['RESTORE_FLAGS']}         ; was: popf
        hcall
        movi r1, 100
        movi r0, {_H['SET_TIMER']}             ; was: out PIT, r1
        hcall
        movi r0, {_H['HALT']}                  ; was: hlt
        hcall
        movi r1, 'C'
        movi r0, {_H['CONSOLE_WRITE']}
        hcall
        movi r0, {_H['IRQ_DISABLE']}
        hcall
        movi r0, {_H['HALT']}
        hcall
handler:
        movi r1, 'T'
        movi r0, {_H['CONSOLE_WRITE']}
        hcall
        movi r1, 0
        movi r0, {_H['SET_TIMER']}
        hcall
        movi r0, {_H['IRET']}                  ; was: iret
        hcall
"""


@dataclass(frozen=True)
class CostModel:
    """What each kind of event costs, in "instruction units".

    **Teaching assumptions, not measurements.**  A trap or an exit costs a
    world switch and some emulation, so far more than an instruction; first-
    generation VT-x exits were not cheaper than a software VMM's traps
    (Adams & Agesen, ASPLOS 2006: the hardware VMM "often suffers lower
    performance than the pure software VMM", facts §4.3); a hypercall skips
    fetching and decoding the instruction; translation costs once per
    scanned / rewritten instruction.

    >>> CostModel().cost(VMStats(direct=100, traps=2))
    300.0
    """

    direct: float = 1.0  # one instruction run natively
    trap: float = 100.0  # a trap into the VMM and back, decoding and emulating one instruction
    hypercall: float = 60.0  # a hypercall (a trap, but no instruction to fetch and decode)
    exit: float = 150.0  # a VM exit and the next VM entry
    scan: float = 2.0  # binary translation: looking at one instruction
    rewrite: float = 20.0  # binary translation: patching one instruction

    def cost(self, stats: VMStats) -> float:
        """The cost of a run from its counts."""
        hcall_traps = stats.hypercalls if stats.traps else 0
        return (stats.direct * self.direct + (stats.traps - hcall_traps) * self.trap
                + hcall_traps * self.hypercall + stats.exits * self.exit
                + stats.scanned * self.scan + stats.rewrites * self.rewrite)


@dataclass(frozen=True)
class FixResult:
    """One technique run on the popf guest.

    >>> run_fix("hw")
    FixResult(hardware assist: output 'ATC', correct, cost 1269)
    """

    technique: str
    output: str
    interrupts_on_at_end: bool
    result_word: int
    stop: str
    correct: bool
    stats: VMStats | None
    cost: float

    @property
    def efficiency(self) -> float:
        """Fraction of instructions run directly (1.0 on bare hardware)."""
        return 1.0 if self.stats is None else self.stats.efficiency

    def __repr__(self) -> str:
        verdict = "correct" if self.correct else "WRONG"
        return f"FixResult({self.technique}: output {self.output!r}, {verdict}, cost {self.cost:g})"


def _result_from(technique: str, state: FinalState, stats: VMStats | None, cost: float,
                 expected: FinalState | None) -> FixResult:
    output = state.serial.decode("latin-1")
    word = state.memory[RESULT_ADDRESS >> 2]
    correct = expected is None or (state.serial == expected.serial and state.stop == expected.stop
                                   and word == expected.memory[RESULT_ADDRESS >> 2])
    return FixResult(technique, output, bool(state.flags & FLAG_IF), word, state.stop, correct,
                     stats, cost)


def run_fix(technique: Technique | str, *, guest: str | Program | None = None,
            pv_guest: str | Program | None = None, cost_model: CostModel | None = None,
            max_steps: int = 20_000) -> FixResult:
    """Run the popf guest with one technique and judge it against bare hardware.

    Parameters
    ----------
    technique : Technique or str
        ``"trap"``, ``"bt"``, ``"pv"`` (runs ``pv_guest``) or ``"hw"``.
    guest, pv_guest : str or Program, optional
        Default :data:`POPF_GUEST` and :data:`POPF_GUEST_PV`.
    cost_model : CostModel, optional
    max_steps : int

    Returns
    -------
    FixResult
        ``correct`` when the serial output, the way it stopped and the
        critical section's result equal bare hardware's.

    Examples
    --------
    >>> r = run_fix("bt")
    >>> r.correct, r.stats.rewrites
    (True, 2)
    """
    tech = Technique.parse(technique)
    model = cost_model or CostModel()
    guest = guest if guest is not None else POPF_GUEST
    pv_guest = pv_guest if pv_guest is not None else POPF_GUEST_PV
    program = assemble(guest) if isinstance(guest, str) else guest
    expected = run_bare(program, max_steps=max_steps)
    run_program = program
    if tech is Technique.PARAVIRTUALIZATION:
        run_program = assemble(pv_guest) if isinstance(pv_guest, str) else pv_guest
    state, vm = run_guest(run_program, technique=tech, max_steps=max_steps)
    return _result_from(tech.value, state, vm.stats, model.cost(vm.stats), expected)


@dataclass(frozen=True)
class FixComparison:
    """The comparison table of :func:`compare_fixes`; ``str()`` prints it.

    >>> compare_fixes().records()[1]["correct"]
    False
    """

    rows: tuple[FixResult, ...]
    cost_model: CostModel

    def records(self) -> list[dict[str, object]]:
        """The rows as dictionaries (for a DataFrame or a plot)."""
        out = []
        for r in self.rows:
            s = r.stats or VMStats()
            out.append({"technique": r.technique, "output": r.output, "correct": r.correct,
                        "direct": s.direct, "traps": s.traps, "exits": s.exits,
                        "hypercalls": s.hypercalls, "rewrites": s.rewrites,
                        "emulated": s.emulated, "efficiency": r.efficiency, "cost": r.cost})
        return out

    def __str__(self) -> str:
        head = (f"{'technique':<20s} {'output':<7s} {'correct':<8s} {'direct':>7s} {'traps':>6s}"
                f" {'exits':>6s} {'hcalls':>6s} {'rewr':>5s} {'direct%':>8s} {'cost':>9s}")
        lines = [head]
        for rec in self.records():
            lines.append(
                f"{rec['technique']:<20s} {rec['output']!s:<7s}"
                f" {'yes' if rec['correct'] else 'NO':<8s}"
                f" {rec['direct']:>7d} {rec['traps']:>6d} {rec['exits']:>6d}"
                f" {rec['hypercalls']:>6d} {rec['rewrites']:>5d}"
                f" {100 * float(rec['efficiency']):>7.1f}% {float(rec['cost']):>9.0f}")  # type: ignore[arg-type]
        lines.append("costs: teaching assumptions (CostModel), not measurements")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "FixComparison(" + ", ".join(
            f"{r.technique}: {'ok' if r.correct else 'WRONG'}" for r in self.rows) + ")"


def compare_fixes(cost_model: CostModel | None = None, *, guest: str | Program | None = None,
                  pv_guest: str | Program | None = None, max_steps: int = 20_000
                  ) -> FixComparison:
    """Bare hardware, trap-and-emulate and the three fixes on the same guest, in one table.

    Returns
    -------
    FixComparison

    Examples
    --------
    >>> t = compare_fixes()
    >>> [r.technique for r in t.rows if not r.correct]
    ['trap-and-emulate']
    >>> print(t)  # doctest: +ELLIPSIS
    technique            output  correct  direct  traps  exits hcalls  rewr  direct%      cost
    bare hardware        ATC     yes ...
    """
    model = cost_model or CostModel()
    g = guest if guest is not None else POPF_GUEST
    program = assemble(g) if isinstance(g, str) else g
    bare, machine = _run_bare(program, 4, max_steps)
    bare_stats = VMStats(direct=machine.cpu.retired)
    rows = [_result_from("bare hardware", bare, bare_stats, model.cost(bare_stats), None)]
    for tech in Technique:
        rows.append(run_fix(tech, guest=program, pv_guest=pv_guest, cost_model=model,
                            max_steps=max_steps))
    return FixComparison(tuple(rows), model)

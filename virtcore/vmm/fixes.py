"""The three fixes for a machine that fails Popek–Goldberg, side by side on the same guests.

The guest (:data:`POPF_GUEST`) saves its FLAGS with ``pushf``, turns
interrupts off for a critical section, and restores them with ``popf`` —
the idiom of x86 kernels (``local_irq_save``/``local_irq_restore``) — then
waits with ``hlt`` for a timer interrupt.  On bare hardware it prints
``ATC``.  Under plain **trap-and-emulate** the deprivileged ``popf`` fails
silently: the virtual IF stays 0, the timer interrupt never comes, and the
guest prints only ``A`` [RI00].

The fixes [VMW07]:

- **binary translation** (VMware Workstation, 1999 [BUG12]) — the guest
  kernel runs from a translation cache: each block is translated on its
  first execution, its sensitive instructions into code that acts on the
  virtual CPU without trapping, I/O into callouts (:mod:`virtcore.vmm.bt`);
  user code runs directly;
- **paravirtualization** (Xen [XEN-SOSP03]) — a *modified* guest
  (:data:`POPF_GUEST_PV`) asks the VMM with hypercalls instead
  (:class:`~virtcore.vmm.Hypercall`, an ABI of our own), and runs
  deprivileged;
- **hardware assist** (Intel VT-x 2005, AMD-V 2006 [SDM, APM]) — the
  unmodified guest runs in guest mode (VT-x-like non-root mode, its own ring
  0, memory through EPT); ``popf`` works natively, and the VMM sees only VM
  exits (``hlt``, I/O).

Costs: every run is priced from its counts with the course's one cost model
(:data:`virtcore.costs.DEFAULT_COSTS`, teaching assumptions): a trap into the
monitor and back costs ``2·trap + emulate``, a VM exit and entry
``2·vm_exit + emulate``, a translated instruction ``translate`` once, a
translated sensitive instruction ``translated_op``, a callout ``callout +
emulate``.  On the exit-heavy :data:`IO_LOOP_GUEST` binary translation beats
hardware assist, as Adams & Agesen found for first-generation VT-x [AA06];
on a guest whose kernel code runs once, translation costs more than it saves.

>>> table = compare_fixes()
>>> [(r.technique, r.output, r.correct) for r in table.rows]  # doctest: +NORMALIZE_WHITESPACE
[('bare hardware', 'ATC', True), ('trap-and-emulate', 'A', False),
 ('binary translation', 'ATC', True), ('paravirtualization', 'ATC', True),
 ('hardware assist', 'ATC', True)]
"""

from __future__ import annotations

from dataclasses import dataclass

from virtcore.costs import DEFAULT_COSTS, Costs
from virtcore.hw.asm import Program, assemble
from virtcore.hw.isa import FLAG_IF
from virtcore.vmm.handlers import Hypercall
from virtcore.vmm.popek import FinalState, _run_bare, run_bare, run_guest
from virtcore.vmm.vm import Technique, VMStats

__all__ = [
    "IO_LOOP_GUEST",
    "IO_LOOP_GUEST_PV",
    "POPF_GUEST",
    "POPF_GUEST_PV",
    "RESULT_ADDRESS",
    "CostModel",
    "FixComparison",
    "FixResult",
    "compare_fixes",
    "run_cost",
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


#: An exit-heavy kernel: 40 times, save the flags, turn interrupts off, write a
#: character to the serial port, restore the flags — then stop.
IO_LOOP_GUEST = """
; an exit-heavy guest kernel: a loop of pushf / cli / out / popf
        .equ COM1, 0x3f8
        movi r2, 40
        movi r1, '.'
loop:   pushf
        cli
        out  COM1, r1
        popf
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        hlt
"""

#: :data:`IO_LOOP_GUEST`, paravirtualized: each sensitive instruction a hypercall.
IO_LOOP_GUEST_PV = f"""
; the exit-heavy guest, paravirtualized
        movi r2, 40
loop:   movi r0, {_H['SAVE_FLAGS']}            ; was: pushf
        hcall
        push r0
        movi r0, {_H['IRQ_DISABLE']}           ; was: cli
        hcall
        movi r1, '.'
        movi r0, {_H['CONSOLE_WRITE']}         ; was: out COM1, r1
        hcall
        pop  r1
        movi r0, {_H['RESTORE_FLAGS']}         ; was: popf
        hcall
        addi r2, -1
        cmpi r2, 0
        jnz  loop
        movi r0, {_H['HALT']}                  ; was: hlt
        hcall
"""


def run_cost(stats: VMStats, costs: Costs = DEFAULT_COSTS) -> float:
    """The price of a run from its counts, on the course's one cost scale.

    Parameters
    ----------
    stats : VMStats
    costs : virtcore.costs.Costs

    >>> run_cost(VMStats(direct=100, traps=2)) == 100 + 2 * (2 * 200 + 300)
    True
    >>> run_cost(VMStats(exits=1)) == 2 * DEFAULT_COSTS.vm_exit + DEFAULT_COSTS.emulate
    True
    """
    c = costs
    return float(stats.direct * c.instruction
                 + stats.traps * (2 * c.trap + c.emulate)
                 + stats.exits * (2 * c.vm_exit + c.emulate)
                 + stats.translated * c.translate
                 + stats.translated_ops * c.translated_op
                 + stats.callouts * (c.callout + c.emulate))


@dataclass(frozen=True)
class CostModel:
    """Chapter 2's name for the course's cost model: prices runs with :func:`run_cost`.

    It holds a :class:`virtcore.costs.Costs` (by default
    :data:`~virtcore.costs.DEFAULT_COSTS`); there is no other scale.

    >>> CostModel().cost(VMStats(direct=100, traps=2))
    1500.0
    >>> import dataclasses
    >>> CostModel(dataclasses.replace(DEFAULT_COSTS, vm_exit=50)).exit
    400
    """

    costs: Costs = DEFAULT_COSTS

    @property
    def trap(self) -> float:
        """A trap into the monitor and back, with the emulation."""
        return 2 * self.costs.trap + self.costs.emulate

    @property
    def exit(self) -> float:
        """A VM exit and the next VM entry, with the emulation."""
        return 2 * self.costs.vm_exit + self.costs.emulate

    def cost(self, stats: VMStats) -> float:
        """The cost of a run from its counts (:func:`run_cost`)."""
        return run_cost(stats, self.costs)


@dataclass(frozen=True)
class FixResult:
    """One technique run on the popf guest.

    >>> run_fix("hw")
    FixResult(hardware assist: output 'ATC', correct, cost 7919)
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
    >>> r.correct, r.stats.traps, r.stats.by_instruction["popf"]
    (True, 0, 1)
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
                        "hypercalls": s.hypercalls, "translated": s.translated,
                        "translated_ops": s.translated_ops, "callouts": s.callouts,
                        "emulated": s.emulated, "efficiency": r.efficiency, "cost": r.cost})
        return out

    def __str__(self) -> str:
        head = (f"{'technique':<20s} {'output':<7s} {'correct':<8s} {'direct':>7s} {'traps':>6s}"
                f" {'exits':>6s} {'hcalls':>6s} {'transl':>6s} {'tc-ops':>6s} {'callout':>7s}"
                f" {'direct%':>8s} {'cost':>9s}")
        lines = [head]
        for rec in self.records():
            out = str(rec["output"])
            out = out if len(out) <= 7 else out[:6] + "…"
            lines.append(
                f"{rec['technique']:<20s} {out:<7s}"
                f" {'yes' if rec['correct'] else 'NO':<8s}"
                f" {rec['direct']:>7d} {rec['traps']:>6d} {rec['exits']:>6d}"
                f" {rec['hypercalls']:>6d} {rec['translated']:>6d} {rec['translated_ops']:>6d}"
                f" {rec['callouts']:>7d}"
                f" {100 * float(rec['efficiency']):>7.1f}% {float(rec['cost']):>9.0f}")  # type: ignore[arg-type]
        lines.append("costs: virtcore.costs.DEFAULT_COSTS (teaching assumptions, ≈ns), not"
                     " measurements")
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
    technique            output  correct   direct  traps  exits hcalls transl tc-ops callout ...
    bare hardware        ATC     yes ...
    """
    model = cost_model or CostModel()
    if guest is None and pv_guest is None:
        pv_guest = POPF_GUEST_PV
    g = guest if guest is not None else POPF_GUEST
    program = assemble(g) if isinstance(g, str) else g
    bare, machine = _run_bare(program, 4, max_steps)
    bare_stats = VMStats(direct=machine.cpu.retired)
    rows = [_result_from("bare hardware", bare, bare_stats, model.cost(bare_stats), None)]
    for tech in Technique:
        if tech is Technique.PARAVIRTUALIZATION and pv_guest is None:
            continue  # no paravirtualized version of this guest was given
        rows.append(run_fix(tech, guest=program, pv_guest=pv_guest, cost_model=model,
                            max_steps=max_steps))
    return FixComparison(tuple(rows), model)

"""Popek and Goldberg (1974): classify the ISA; check a VMM's three properties on generated guests.

The paper [PG74] asks three things of
a VMM:

- **equivalence** (fidelity): a program under the VMM behaves "essentially
  identical" to the same program on the real machine —
  :func:`check_equivalence` runs a guest kernel on bare hardware (in kernel
  mode) and under the VMM and compares final registers, flags, memory,
  serial output and clock;
- **resource control** (safety): the VMM stays in complete control of the
  virtualized resources — :func:`check_resource_control` lets a guest try
  to reach host memory and real devices and checks nothing outside its own
  frames changed;
- **efficiency**: "a statistically dominant fraction of machine
  instructions must be executed without VMM intervention" —
  :func:`measure_efficiency`.

Its Theorem 1 gives a **sufficient** condition for building such a VMM by
trap-and-emulate: every sensitive instruction is privileged.
:func:`classify` checks it on the ISA table; on this machine it fails, for
``popf`` and ``pushf``, exactly as on x86 (Robin & Irvine 2000, [RI00]).

Guests come from :func:`generate_guest` (seeded, always terminating), so
every seed is a test case.

>>> c = classify()
>>> c.sensitive_subset_of_privileged, [f.mnemonic for f in c.violations]
(False, ['pushf', 'popf'])
>>> check_equivalence(generate_guest(seed=1)).equivalent
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from virtcore.errors import ConfigurationError
from virtcore.hw.asm import Program, assemble, format_instruction
from virtcore.hw.cpu import StopReason
from virtcore.hw.events import Privilege, Trap
from virtcore.hw.isa import FLAG_IF, FLAG_RESERVED, SP, TABLE, Instruction, Sensitivity, encode
from virtcore.hw.machine import Machine
from virtcore.hw.paging import PTE_A, PTE_D, PagingConfig
from virtcore.rng import make_rng
from virtcore.vmm.handlers import HandlerTable
from virtcore.vmm.hypervisor import Hypervisor
from virtcore.vmm.vm import VM, Technique, VMStats

__all__ = [
    "THEOREM_1",
    "Classification",
    "EfficiencyResult",
    "EquivalenceResult",
    "FinalState",
    "GuestProgram",
    "ResourceControlResult",
    "SensitiveUnprivileged",
    "check_equivalence",
    "check_resource_control",
    "classify",
    "generate_guest",
    "measure_efficiency",
    "run_bare",
    "run_guest",
]

THEOREM_1 = (
    "Theorem 1 (Popek & Goldberg 1974): for any conventional third-generation computer, a "
    "virtual machine monitor may be constructed if the set of sensitive instructions for that "
    "computer is a subset of the set of privileged instructions. The condition is SUFFICIENT, "
    "not necessary: when it fails, the theorem simply does not promise that trap-and-emulate "
    "works — and x86 was virtualized anyway, by binary translation, paravirtualization and "
    "hardware assist.")

_REASONS = {
    "popf": ("it writes IF, part of the machine's configuration (control-sensitive); in user "
             "mode it leaves IF unchanged and does not trap, so a deprivileged guest kernel's "
             "popf silently fails and the VMM never sees it"),
    "pushf": ("the value it pushes depends on the real IF (behaviour-sensitive): a deprivileged "
              "guest kernel reads the VMM's IF instead of its own virtual IF, and no trap lets "
              "the VMM correct it"),
}


# -- the classifier ------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitiveUnprivileged:
    """A sensitive instruction that does not trap in user mode: why trap-and-emulate misses it.

    >>> classify().violations[0].mnemonic
    'pushf'
    """

    mnemonic: str
    sensitivity: Sensitivity
    reason: str

    def __str__(self) -> str:
        return f"{self.mnemonic}: {self.sensitivity.value} but not privileged — {self.reason}"


@dataclass(frozen=True)
class Classification:
    """Popek–Goldberg classes of an ISA table, and the Theorem 1 check.

    ``privileged`` comes from the table's column; ``observed_privileged`` from
    running each instruction once in user and once in kernel mode on a
    machine (privileged = traps with #GP in user mode only), so a wrong
    table entry would show up as a disagreement.

    >>> classify()  # doctest: +ELLIPSIS
    Classification(9 privileged, 11 sensitive; sensitive ⊆ privileged: False — ...: pushf, popf)
    """

    privileged: tuple[str, ...]
    sensitive: tuple[str, ...]
    control_sensitive: tuple[str, ...]
    behaviour_sensitive: tuple[str, ...]
    innocuous: tuple[str, ...]
    observed_privileged: tuple[str, ...]
    violations: tuple[SensitiveUnprivileged, ...]
    theorem: str = THEOREM_1

    @property
    def sensitive_subset_of_privileged(self) -> bool:
        """Theorem 1's condition: is every sensitive instruction privileged?"""
        return not self.violations

    @property
    def table_agrees_with_cpu(self) -> bool:
        """True when the table's privileged column matches what the CPU does."""
        return set(self.privileged) == set(self.observed_privileged)

    @property
    def verdict(self) -> str:
        """One paragraph: what Theorem 1 says about this ISA."""
        if self.sensitive_subset_of_privileged:
            return ("sensitive ⊆ privileged: Theorem 1 applies — a trap-and-emulate VMM "
                    "can be built for this machine.")
        names = ", ".join(v.mnemonic for v in self.violations)
        return (f"sensitive ⊄ privileged ({names} are sensitive but unprivileged): Theorem 1's "
                "sufficient condition fails, so it gives no guarantee — and plain "
                "trap-and-emulate indeed goes wrong on guests that use them. Binary "
                "translation, paravirtualization or hardware assist is needed.")

    def __repr__(self) -> str:
        names = ", ".join(v.mnemonic for v in self.violations) or "none"
        return (f"Classification({len(self.privileged)} privileged, {len(self.sensitive)}"
                f" sensitive; sensitive ⊆ privileged: {self.sensitive_subset_of_privileged}"
                f" — sensitive but unprivileged: {names})")

    def __str__(self) -> str:
        lines = [
            f"privileged          : {', '.join(self.privileged)}",
            f"control-sensitive   : {', '.join(self.control_sensitive)}",
            f"behaviour-sensitive : {', '.join(self.behaviour_sensitive)}",
            f"innocuous           : {len(self.innocuous)} instructions",
            f"sensitive ⊆ privileged? {self.sensitive_subset_of_privileged}",
            *(f"  ✗ {v}" for v in self.violations),
            self.verdict,
            self.theorem,
        ]
        return "\n".join(lines)


def _observed_privileged(rows: Iterable[Instruction]) -> tuple[str, ...]:
    out = []
    for row in rows:
        traps = []
        for mode in (Privilege.USER, Privilege.KERNEL):
            m = Machine(memory_size=4096, tlb_size=1)
            m.memory.write_word(0, encode(row.mnemonic))
            m.cpu.mode = mode
            m.cpu.regs[SP] = 4096
            ev = m.cpu.step()
            traps.append(isinstance(ev, Trap) and ev.cause.name == "GENERAL_PROTECTION")
        if traps[0] and not traps[1]:
            out.append(row.mnemonic)
    return tuple(out)


def classify(isa_table: Iterable[Instruction] = TABLE) -> Classification:
    """Sort the ISA's instructions into Popek–Goldberg classes and test Theorem 1's condition.

    Parameters
    ----------
    isa_table : iterable of Instruction
        Rows of an ISA table (default :data:`virtcore.hw.TABLE`).

    Returns
    -------
    Classification

    Examples
    --------
    >>> c = classify()
    >>> "cli" in c.privileged, "popf" in c.control_sensitive, "pushf" in c.behaviour_sensitive
    (True, True, True)
    >>> c.table_agrees_with_cpu
    True
    >>> print(c.violations[1])  # doctest: +ELLIPSIS
    popf: control-sensitive but not privileged — it writes IF, ...
    """
    rows = tuple(isa_table)
    privileged = tuple(r.mnemonic for r in rows if r.privileged)
    control = tuple(r.mnemonic for r in rows if r.sensitivity is Sensitivity.CONTROL)
    behaviour = tuple(r.mnemonic for r in rows if r.sensitivity is Sensitivity.BEHAVIOUR)
    sensitive = tuple(r.mnemonic for r in rows if r.sensitive)
    innocuous = tuple(r.mnemonic for r in rows if not r.sensitive)
    violations = tuple(
        SensitiveUnprivileged(r.mnemonic, r.sensitivity,
                              _REASONS.get(r.mnemonic, r.note or "it does not trap in user mode"))
        for r in rows if r.sensitive and not r.privileged)
    return Classification(privileged, sensitive, control, behaviour, innocuous,
                          _observed_privileged(rows), violations)


# -- generated guest kernels ------------------------------------------------------------------

DATA = 0x2000  # the guest's data area (bytes DATA..DATA+255 are the body's scratch)
COUNTS = DATA + 0x100  # the trap handler's counters: total traps, timer ticks
MAX_TICKS = 3  # the handler stops the timer after this many ticks
_ALU = ("add", "sub", "mul", "and", "or", "xor", "shl", "shr")
_CRS = ("cr0", "cr2", "cr3", "tvec", "epc", "estatus", "cause")

_HANDLER = f"""
; ---- the guest kernel's trap handler: counts, skips faulting instructions, ticks the timer
handler:
        push r4
        push r5
        push r6
        li   r5, {COUNTS:#x}
        ld   r4, [r5+0]
        addi r4, 1
        st   r4, [r5+0]          ; traps taken
        rdcr r6, cause
        cmpi r6, 32
        jlt  h_sync
        cmpi r6, 48
        jlt  h_irq
h_sync: rdcr r4, epc             ; a synchronous trap: step over the instruction
        addi r4, 4
        wrcr epc, r4
        cmpi r6, 0x80            ; a syscall returns to kernel mode
        jnz  h_out
        rdcr r4, estatus
        li   r6, 0xfffeffff
        and  r4, r6
        wrcr estatus, r4
        jmp  h_out
h_irq:  ld   r4, [r5+4]          ; a timer tick
        addi r4, 1
        st   r4, [r5+4]
        cmpi r4, {MAX_TICKS}
        jlt  h_out
        movi r4, 0
        out  0x40, r4            ; enough ticks: stop the timer
h_out:  pop  r6
        pop  r5
        pop  r4
        iret
leaf:   addi r1, 7               ; a leaf subroutine
        xor  r2, r1
        ret
"""


@dataclass(frozen=True)
class GuestProgram:
    """A generated guest kernel: its seed, assembly source and program, and what it uses.

    >>> generate_guest(seed=5, length=10, user_mode=False).uses_user_mode
    False
    """

    seed: int
    source: str
    program: Program
    uses_popf: bool
    uses_user_mode: bool
    wild: bool
    memory_pages: int

    def __repr__(self) -> str:
        extra = [w for w, on in (("popf/pushf", self.uses_popf), ("user mode", self.uses_user_mode),
                                 ("wild accesses", self.wild)) if on]
        return (f"GuestProgram(seed={self.seed}, {len(self.program)} words"
                f"{', ' + ', '.join(extra) if extra else ''})")

    def __str__(self) -> str:
        return self.source


def generate_guest(seed: int = 0, *, length: int = 40, popf: bool = False,
                   user_mode: bool = True, timer: bool = True, wild: bool = False,
                   memory_pages: int = 4) -> GuestProgram:
    """A random guest kernel that mixes ordinary and system instructions and always terminates.

    The kernel installs a trap handler, then runs ``length`` random items:
    arithmetic, loads and stores in its data area, forward branches, short
    counted loops, calls, pushes and pops; ``cli``/``sti``, ``in``/``out`` on
    its serial port, timer and an unowned port, ``rdcr``/``wrcr``,
    ``invlpg``, ``syscall``, and waits (``sti; hlt``) for the timer.  With
    ``user_mode`` it also drops to user mode with ``iret`` (privileged
    instructions then trap to its handler, which steps over them) and comes
    back with ``syscall``.  It ends with ``cli; hlt``.

    Termination: branches only go forward, loops count down a register
    nothing else writes, the handler stops the timer after
    ``MAX_TICKS`` ticks.

    Parameters
    ----------
    seed : int
    length : int
        Items in the body.
    popf : bool
        Also use ``pushf``/``popf`` (the sensitive-but-unprivileged pair).
    user_mode, timer : bool
        Use user mode; use the timer.
    wild : bool
        Also touch guest-physical addresses beyond the guest's memory
        (bare hardware: a machine check, which the handler steps over).
    memory_pages : int
        The guest's memory (4 KiB pages; at least 3).

    Returns
    -------
    GuestProgram

    Examples
    --------
    >>> g = generate_guest(seed=7, popf=True)
    >>> g.uses_popf, g.source == generate_guest(seed=7, popf=True).source
    (True, True)
    >>> run_bare(g).stop
    'halted'
    """
    if memory_pages < 3:
        raise ConfigurationError("generated guests need at least 3 pages (code, data, stack)")
    rng = make_rng(seed)
    size = memory_pages * 4096
    lines = [f"; generated guest kernel, seed={seed}",
             "start:  li   r1, handler",
             "        wrcr tvec, r1",
             f"        li   r5, {DATA:#x}"]
    label = 0
    in_user = False
    used_popf = used_user = False

    def new_label() -> str:
        nonlocal label
        label += 1
        return f"L{label}"

    def alu() -> str:
        op = rng.choice((*_ALU, "movi", "addi", "lui", "cmp"))
        rd, rs = rng.randint(1, 4), rng.randint(1, 4)
        if op == "movi":
            return f"movi r{rd}, {rng.randint(-300, 300)}"
        if op == "addi":
            return f"addi r{rd}, {rng.randint(-50, 50)}"
        if op == "lui":
            return f"lui r{rd}, {rng.randint(0, 0xFFFF):#x}"
        return f"{op} r{rd}, r{rs}"

    def memop() -> str:
        off = 4 * rng.randint(0, 63)
        if rng.random() < 0.05:
            off += rng.choice((1, 2))  # misaligned: #AC, stepped over by the handler
        reg = rng.randint(1, 4)
        return f"{rng.choice(('ld', 'st'))} r{reg}, [r5+{off}]"

    for _ in range(length):
        kind = rng.choices(
            ("alu", "mem", "branch", "loop", "call", "stack", "cli", "sti", "io", "cr",
             "invlpg", "syscall", "hlt", "popf", "user", "wild"),
            weights=(10, 6, 3, 2, 1, 2, 2, 2, 4, 3, 1, 2, 1 if timer else 0,
                     3 if popf else 0, 1 if user_mode else 0, 2 if wild else 0))[0]
        if kind == "alu":
            lines.append(alu())
        elif kind == "mem":
            lines.append(memop())
        elif kind == "branch":
            target = new_label()
            lines += [f"cmpi r{rng.randint(1, 4)}, {rng.randint(-5, 5)}",
                      f"{rng.choice(('jz', 'jnz', 'jlt', 'jge'))} {target}"]
            lines += [alu() for _ in range(rng.randint(1, 3))]
            lines.append(f"{target}:")
        elif kind == "loop":
            top = new_label()
            lines += [f"movi r6, {rng.randint(2, 8)}", f"{top}:"]
            lines += [rng.choice((alu, memop))() for _ in range(rng.randint(1, 4))]
            lines += ["addi r6, -1", "cmpi r6, 0", f"jnz {top}"]
        elif kind == "call":
            lines.append("call leaf")
        elif kind == "stack":
            lines += [f"push r{rng.randint(1, 4)}", alu(), f"pop r{rng.randint(1, 4)}"]
        elif kind in ("cli", "sti"):
            lines.append(kind)
        elif kind == "io":
            choice = rng.randint(0, 5)
            if choice <= 1:
                lines += [f"movi r1, {ord('a') + rng.randint(0, 25)}", "out 0x3f8, r1"]
            elif choice == 2:
                lines.append(f"in r{rng.randint(1, 4)}, 0x3fd")
            elif choice == 3 and timer:
                lines += [f"movi r2, {rng.randint(40, 200)}", "out 0x40, r2"]
            elif choice == 4:
                lines.append(f"in r{rng.randint(1, 4)}, {rng.choice((0x40, 0x80, 0x3f8))}")
            else:
                lines.append(f"out 0x80, r{rng.randint(1, 4)}")
        elif kind == "cr":
            if rng.random() < 0.6:
                lines.append(f"rdcr r{rng.randint(1, 4)}, {rng.choice(_CRS)}")
            else:
                cr = rng.choice(("cr2", "cr3", "cr0"))
                value = {"cr2": rng.randint(0, 0x7FFF), "cr3": 0x1000 * rng.randint(0, 7),
                         "cr0": 0}[cr]
                lines += [f"li r3, {value:#x}", f"wrcr {cr}, r3"]
        elif kind == "invlpg":
            lines.append(f"invlpg r{rng.randint(1, 4)}")
        elif kind == "syscall":
            lines += [f"movi r0, {rng.randint(0, 9)}", "syscall"]
            in_user = False
        elif kind == "hlt":
            lines += [f"movi r2, {rng.randint(40, 120)}", "out 0x40, r2", "sti", "hlt"]
        elif kind == "popf":
            used_popf = True
            choice = rng.randint(0, 2)
            if choice == 0:
                lines += ["pushf", "cli", alu(), "popf"]
            elif choice == 1:
                lines += ["pushf", f"pop r{rng.randint(1, 4)}"]
            else:
                value = rng.choice((0x2, 0x202, 0x283, 0x243))
                lines += [f"li r3, {value:#x}", "push r3", "popf"]
        elif kind == "user" and not in_user:
            used_user = True
            back = new_label()
            status = 0x10202 if rng.random() < 0.7 else 0x10002
            # interrupts off first: a timer interrupt between writing EPC and the iret
            # would overwrite EPC with its own return address, and the iret would loop
            lines += ["cli", f"li r3, {back}", "wrcr epc, r3", f"li r3, {status:#x}",
                      "wrcr estatus, r3", "iret", f"{back}:"]
            in_user = True
        elif kind == "wild":
            addr = rng.choice((size, size + 0x1000 * rng.randint(1, 4), 0x10000, 0x20000))
            lines += [f"li r4, {addr:#x}",
                      f"{rng.choice(('ld', 'st'))} r{rng.randint(1, 3)}, [r4+0]"]
    lines += ["movi r0, 0", "syscall            ; back to kernel mode, if we were in user mode",
              "cli", "hlt"]
    source = "\n".join(f"        {ln}" if not ln.endswith(":") and not ln.startswith(";")
                       and not ln.startswith("start:") else ln for ln in lines) + _HANDLER
    program = assemble(source)
    if program.end > DATA:
        raise ConfigurationError(f"generated code ({program.end:#x} bytes) runs into the data"
                                 f" area at {DATA:#x}; use a smaller length")
    return GuestProgram(seed, source, program, used_popf, used_user, wild, memory_pages)


# -- final states ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalState:
    """Where a guest ended: how it stopped, its registers, memory, console output, clock.

    >>> run_bare("movi r1, 'y'\\nout 0x3f8, r1\\nhlt")
    FinalState(halted, pc=0xc, IF=0, serial=b'y', clock=3)
    """

    stop: str  # "halted", "shutdown", "budget", "trap <CAUSE>", "killed: …", "crashed: …"
    pc: int
    regs: tuple[int, ...]
    flags: int
    mode: Privilege
    memory: tuple[int, ...]
    serial: bytes
    clock: int

    def diff(self, other: FinalState, *, limit: int = 8) -> list[str]:
        """The differences with ``other``, in words (at most ``limit`` memory words).

        >>> a = FinalState("halted", 4, (0,) * 8, 0x2, Privilege.KERNEL, (0, 0), b"A", 2)
        >>> a.diff(a), a.diff(FinalState("halted", 4, (0,) * 8, 0x202, Privilege.KERNEL,
        ...                              (0, 1), b"A", 2))
        ([], ['flags: 0x2 vs 0x202 (IF 0 vs 1)', 'memory word at 0x4: 0x0 vs 0x1'])
        """
        out = []
        if self.stop != other.stop:
            out.append(f"stopped: {self.stop!r} vs {other.stop!r}")
        if self.pc != other.pc:
            out.append(f"pc: {self.pc:#x} vs {other.pc:#x}")
        for i, (a, b) in enumerate(zip(self.regs, other.regs)):
            if a != b:
                out.append(f"r{i}: {a:#x} vs {b:#x}")
        if self.flags != other.flags:
            out.append(f"flags: {self.flags:#x} vs {other.flags:#x} (IF"
                       f" {int(bool(self.flags & FLAG_IF))} vs {int(bool(other.flags & FLAG_IF))})")
        if self.mode != other.mode:
            out.append(f"mode: {self.mode.name.lower()} vs {other.mode.name.lower()}")
        if self.serial != other.serial:
            out.append(f"serial output: {self.serial!r} vs {other.serial!r}")
        if self.clock != other.clock:
            out.append(f"clock: {self.clock} vs {other.clock}")
        if len(self.memory) != len(other.memory):
            out.append(f"memory size: {4 * len(self.memory)} vs {4 * len(other.memory)} bytes")
        elif self.memory != other.memory:
            shown = 0
            for i, (a, b) in enumerate(zip(self.memory, other.memory)):
                if a != b:
                    if shown == limit:
                        out.append("…more memory differences")
                        break
                    out.append(f"memory word at {4 * i:#x}: {a:#x} vs {b:#x}")
                    shown += 1
        return out

    def __repr__(self) -> str:
        return (f"FinalState({self.stop}, pc={self.pc:#x}, IF={int(bool(self.flags & FLAG_IF))},"
                f" serial={self.serial!r}, clock={self.clock})")


def _as_program(guest: GuestProgram | Program | str) -> tuple[Program, int]:
    if isinstance(guest, GuestProgram):
        return guest.program, guest.memory_pages
    if isinstance(guest, str):
        return assemble(guest), 4
    return guest, 4


def run_bare(guest: GuestProgram | Program | str, *, memory_pages: int | None = None,
             max_steps: int = 50_000) -> FinalState:
    """Run a guest kernel on bare hardware: a machine of the guest's memory size, kernel mode.

    The program is loaded at its origin, pc there, ``sp`` at the top of
    memory, FLAGS = 0x2 (x86's reset value).  The CPU uses its reference
    interpreter (:meth:`~virtcore.hw.CPU.step`), the definition of the ISA.

    >>> run_bare("movi r1, 'x'\\nout 0x3f8, r1\\nhlt").serial
    b'x'
    """
    program, pages = _as_program(guest)
    return _run_bare(program, memory_pages or pages, max_steps)[0]


def _run_bare(program: Program, pages: int, max_steps: int) -> tuple[FinalState, Machine]:
    m = Machine(memory_size=pages * 4096, paging=PagingConfig.x86_32())
    m.load(program)
    cpu = m.cpu
    cpu.translated = False  # the reference interpreter (CPU.step): the readable definition
    cpu.pc = program.origin
    cpu.regs[SP] = m.memory.size
    cpu.flags = FLAG_RESERVED
    r = m.run(max_steps)
    if r.reason is StopReason.HALTED:
        stop = "halted"
    elif r.reason is StopReason.BUDGET:
        stop = "budget"
    else:
        stop = f"trap {r.event.cause.name}"  # type: ignore[union-attr]
    return FinalState(stop, cpu.pc, tuple(cpu.regs), cpu.flags, cpu.mode,
                      tuple(m.memory.words), bytes(m.serial.output), cpu.clock), m


def _vmm_stop(vm: VM) -> str:
    v = vm.vcpus[0]
    if v.done is None:
        return "budget"
    return v.done


def run_guest(guest: GuestProgram | Program | str, *, technique: Technique | str = "trap",
              handlers: HandlerTable | None = None, memory_pages: int | None = None,
              max_steps: int = 50_000, on_violation: str = "reflect",
              hypervisor: Hypervisor | None = None) -> tuple[FinalState, VM]:
    """Run a guest kernel under the VMM; returns its final state and the VM (for its stats).

    >>> state, vm = run_guest("movi r1, 'x'\\nout 0x3f8, r1\\nhlt", technique="hw")
    >>> state.serial, vm.stats.exits
    (b'x', 2)
    """
    program, pages = _as_program(guest)
    pages = memory_pages or pages
    hv = hypervisor if hypervisor is not None else Hypervisor(handlers=handlers)
    name = f"guest{len(hv.vms)}"
    vm = hv.create(name, pages, program=program, technique=technique,
                   on_violation=on_violation, handlers=handlers)
    hv.run(max_steps)
    v = vm.vcpus[0]
    state = FinalState(_vmm_stop(vm), v.pc, tuple(v.regs), v.flags, v.mode,
                       tuple(vm.memory_words()), bytes(vm.serial.output), vm.clock)
    return state, vm


@dataclass(frozen=True)
class EquivalenceResult:
    """The outcome of :func:`check_equivalence` (true when equivalent).

    >>> bool(check_equivalence("sti\\ncli\\nhlt"))
    True
    """

    equivalent: bool
    differences: tuple[str, ...]
    message: str
    bare: FinalState
    vmm: FinalState
    stats: VMStats
    technique: Technique
    uses_popf: bool = False
    seed: int | None = None

    def __bool__(self) -> bool:
        return self.equivalent

    def __repr__(self) -> str:
        seed = f"seed={self.seed}, " if self.seed is not None else ""
        return (f"EquivalenceResult({seed}{'equivalent' if self.equivalent else 'NOT equivalent'}"
                f" under {self.technique.value}: {self.stats.direct} direct,"
                f" {self.stats.vmm_entries} via the VMM)")

    def __str__(self) -> str:
        return self.message


def check_equivalence(guest: GuestProgram | Program | str, *,
                      technique: Technique | str = "trap",
                      handlers: HandlerTable | None = None, max_steps: int = 50_000,
                      memory_pages: int | None = None) -> EquivalenceResult:
    """Run ``guest`` on bare hardware and under the VMM; compare everything the guest can see.

    Compared: how it stopped, pc, registers, FLAGS (incl. IF), mode,
    all of memory, serial output, clock.  A run that does not finish within
    ``max_steps`` is reported with a hint when the VMM kept trapping at one
    address (a handler that forgot to advance the pc).

    Parameters
    ----------
    guest : GuestProgram, Program or str
    technique : Technique or str
    handlers : HandlerTable, optional
        The handler table under test (default: the reference table).
    max_steps : int
        Budget for each run.
    memory_pages : int, optional

    Returns
    -------
    EquivalenceResult

    Examples
    --------
    >>> def lazy_cli(vcpu, insn):          # forgets vcpu.pc += 4
    ...     vcpu.interrupts_enabled = False
    >>> r = check_equivalence("cli\\nhlt", handlers=HandlerTable.reference().replace(cli=lazy_cli),
    ...                       max_steps=100)
    >>> r.equivalent
    False
    >>> print(r.message)  # doctest: +ELLIPSIS
    NOT equivalent: under the VMM the guest did not finish within 100 steps; it trapped 100
    times in a row at pc=0x0 (cli) ... did the cli handler forget to advance the pc (vcpu.pc += 4)?
    differences (bare vs VMM): stopped: 'halted' vs 'budget'; pc: 0x8 vs 0x0; clock: 2 vs 100
    """
    program, pages = _as_program(guest)
    pages = memory_pages or pages
    tech = Technique.parse(technique)
    bare = run_bare(program, memory_pages=pages, max_steps=max_steps)
    vmm, vm = run_guest(program, technique=tech, handlers=handlers, memory_pages=pages,
                        max_steps=max_steps)
    diffs = bare.diff(vmm)
    popf = isinstance(guest, GuestProgram) and guest.uses_popf
    seed = guest.seed if isinstance(guest, GuestProgram) else None
    if not diffs:
        message = (f"equivalent under {tech.value}: same stop ({bare.stop}), registers, flags,"
                   f" memory, serial output {bare.serial!r} and clock {bare.clock}")
    else:
        parts = []
        if vmm.stop == "budget" and bare.stop != "budget":
            count, pc = vm.vcpus[0].worst_repeats
            hint = ""
            if count >= 2:
                try:
                    text = format_instruction(vm.memory_words()[pc >> 2], pc)
                except Exception:  # pragma: no cover - any undecodable word
                    text = "?"
                mnemonic = text.split()[0] if text != "?" else "?"
                hint = (f"; it trapped {count + 1} times in a row at pc={pc:#x} ({text}) without"
                        " running an instruction in between — did the"
                        f" {mnemonic} handler forget to advance the pc (vcpu.pc += 4)?")
            parts.append(f"under the VMM the guest did not finish within {max_steps} steps"
                         f"{hint}")
        elif bare.stop == "budget" and vmm.stop != "budget":
            parts.append(f"on bare hardware the guest did not finish within {max_steps} steps")
        parts.append("differences (bare vs VMM): " + "; ".join(diffs))
        if popf and tech is Technique.TRAP_AND_EMULATE:
            parts.append("the guest uses popf/pushf — sensitive but unprivileged, so plain "
                         "trap-and-emulate cannot see them (see classify())")
        message = "NOT equivalent: " + "\n".join(parts)
    return EquivalenceResult(not diffs, tuple(diffs), message, bare, vmm, vm.stats, tech, popf,
                             seed)


# -- resource control -------------------------------------------------------------------------

_CANARY = 0xC0FFEE00


@dataclass(frozen=True)
class ResourceControlResult:
    """The outcome of :func:`check_resource_control` (true when the VMM stayed in control).

    >>> bool(check_resource_control("li r1, 0x9000\\n st r1, [r1+0]\\n hlt"))
    True
    """

    in_control: bool
    violations_caught: int
    attempts: tuple[tuple[int, int], ...]  # (pc, address) of caught accesses
    io_emulated: int
    host_words_changed: tuple[int, ...]  # host addresses outside the guest's frames that changed
    device_events: tuple[str, ...]  # accesses that reached the real devices
    guest_stop: str

    def __bool__(self) -> bool:
        return self.in_control

    def __repr__(self) -> str:
        return (f"ResourceControlResult({'in control' if self.in_control else 'LOST CONTROL'}:"
                f" {self.violations_caught} out-of-bounds accesses caught, {self.io_emulated}"
                f" I/O instructions emulated, {len(self.host_words_changed)} host words and"
                f" {len(self.device_events)} real-device accesses touched)")


def check_resource_control(guest: GuestProgram | Program | str | None = None, *, seed: int = 0,
                           technique: Technique | str = "trap", max_steps: int = 50_000,
                           on_violation: str = "reflect") -> ResourceControlResult:
    """Let a guest try to escape, then check the host.

    The host's memory outside the guest's own frames is filled with a canary
    (the other VM's frames, free frames, the hypervisor's frame 0); real
    devices are traced.  After the run: no host word outside the guest's
    frames may have changed — except the A/D bits the MMU itself sets in the
    VMM's page tables — and no access may have reached a real device.

    Parameters
    ----------
    guest : optional
        Default: ``generate_guest(seed, wild=True)``, which loads and stores
        beyond its memory and does port I/O.
    seed, technique, max_steps, on_violation

    Returns
    -------
    ResourceControlResult

    Examples
    --------
    >>> r = check_resource_control(seed=3)
    >>> r.in_control, r.violations_caught > 0, r.host_words_changed, r.device_events
    (True, True, (), ())
    """
    if guest is None:
        guest = generate_guest(seed, wild=True)
    program, pages = _as_program(guest)
    hv = Hypervisor()
    other = hv.create("neighbour", 2, program="loop: jmp loop")
    hv.pause(other.name)
    vm = hv.create("guest", pages, program=program, technique=technique,
                   on_violation=on_violation)
    assert vm.mem is not None
    memory = hv.memory
    bits = memory.frame_bits
    per = 1 << (bits - 2)
    own = set(vm.mem.p2m)
    tables = set(vm.mem.vmm_frames)
    words = memory.words
    for frame in range(memory.nframes):
        if frame in own or frame in tables or frame in other.mem.p2m + other.mem.vmm_frames:  # type: ignore[union-attr]
            continue
        start = (frame << bits) >> 2
        words[start:start + per] = [(_CANARY | (frame & 0xFF)) & 0xFFFFFFFF] * per
    before = list(words)
    bus = hv.machine.bus
    bus.tracing = True
    hv.run(max_steps)
    bus.tracing = False
    ad = ~(PTE_A | PTE_D) & 0xFFFFFFFF
    changed = []
    for frame in range(memory.nframes):
        if frame in own:
            continue
        start = (frame << bits) >> 2
        for i in range(start, start + per):
            a, b = before[i], words[i]
            if a != b and not (frame in tables and a & ad == b & ad):
                changed.append(4 * i)
    events = tuple(str(e) for e in bus.trace)
    ok = not changed and not events and hv.machine.serial.output == b""
    io = vm.stats.by_instruction["in"] + vm.stats.by_instruction["out"]
    return ResourceControlResult(ok, vm.stats.violations, tuple(vm.violations), io,
                                 tuple(changed[:64]), events, _vmm_stop(vm))


# -- efficiency --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfficiencyResult:
    """The outcome of :func:`measure_efficiency`: how much ran without the VMM.

    >>> r = EfficiencyResult(Technique.TRAP_AND_EMULATE, direct=30, via_vmm=10)
    >>> r.fraction, r.dominant
    (0.75, True)
    """

    technique: Technique
    direct: int
    via_vmm: int
    by_instruction: dict[str, int] = field(default_factory=dict)
    threshold: float = 0.5

    @property
    def fraction(self) -> float:
        """Directly executed / all guest instructions."""
        total = self.direct + self.via_vmm
        return self.direct / total if total else 1.0

    @property
    def dominant(self) -> bool:
        """Whether the direct fraction exceeds ``threshold`` (default: a majority)."""
        return self.fraction > self.threshold

    def __repr__(self) -> str:
        return (f"EfficiencyResult({self.technique.value}: {self.direct} direct,"
                f" {self.via_vmm} via the VMM — {100 * self.fraction:.1f}% direct)")


def measure_efficiency(guest: GuestProgram | Program | str | None = None, *, seed: int = 0,
                       technique: Technique | str = "trap", max_steps: int = 50_000,
                       threshold: float = 0.5) -> EfficiencyResult:
    """Count the guest's instructions run directly vs. handled by the VMM (traps or exits).

    >>> r = measure_efficiency(generate_guest(seed=2))
    >>> 0 < r.fraction < 1, r.dominant
    (True, True)
    """
    if guest is None:
        guest = generate_guest(seed)
    _, vm = run_guest(guest, technique=technique, max_steps=max_steps)
    s = vm.stats
    counts = Counter(s.by_instruction)
    counts.update({f"exit {k}": v for k, v in s.by_exit.items()})
    return EfficiencyResult(vm.technique, s.direct, s.vmm_entries, dict(counts), threshold)

"""The CPU: registers, flags, privilege levels, guest mode, traps as values.

Two ways to execute, with one meaning:

- :meth:`CPU.step` — the reference interpreter: fetch, decode, check
  privilege, execute one instruction.  Every system instruction, every trap
  and every VM exit goes through here.  Readable first.
- :meth:`CPU.run` — the fast path: straight-line runs of ordinary
  instructions are translated once into Python functions
  (:mod:`virtcore.hw.translate`, a small *binary translator* — the same
  idea VMware used, see chapter 2) and executed from a cache.  Tests check
  that both paths give identical states.

Modes (特权级): ``Privilege.KERNEL`` (ring 0) and ``Privilege.USER`` (ring 3).
A privileged instruction in user mode traps with #GP.  *Guest mode* models
VMX non-root operation: a :class:`VMCS` chooses which events leave the guest
as a :class:`~virtcore.hw.events.VMExit` (Intel SDM Vol. 3B §19–§25;
[SDM]).

Traps go to the kernel's handler at ``CR.TVEC`` when one is installed
(EPC, ESTATUS and CAUSE are saved, the CPU enters kernel mode with
interrupts off).  With ``TVEC = 0`` there is no handler inside the machine:
the trap *stops* the run and is returned to the Python caller — the level
above, such as a VMM written in Python.  Nothing is ever raised.

>>> from virtcore.hw import Machine
>>> m = Machine.with_program('''
...     movi r1, 6
...     movi r2, 7
...     mul  r1, r2
...     hlt
... ''')
>>> r = m.run()
>>> r.reason.name, m.cpu.regs[1], r.steps
('HALTED', 42, 4)
>>> user = Machine.with_program("cli", mode="user")
>>> print(user.run().event)
trap GENERAL_PROTECTION(13), pc=0x0: cli in user mode
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from virtcore.errors import DecodeError
from virtcore.hw.asm import format_instruction
from virtcore.hw.events import (
    Access,
    ExitReason,
    PageFault,
    Privilege,
    Trap,
    TrapCause,
    VMExit,
)
from virtcore.hw.isa import (
    ARITH_FLAGS,
    BY_OPCODE,
    CR,
    CR0_PG,
    ESTATUS_USER,
    FLAG_CF,
    FLAG_IF,
    FLAG_OF,
    FLAG_RESERVED,
    FLAG_SF,
    FLAG_ZF,
    MASK32,
    NUM_REGS,
    REG_NAMES,
    SP,
    decode,
    sext16,
)
from virtcore.hw.paging import PFN_LIMIT

if TYPE_CHECKING:
    from virtcore.hw.devices import Bus
    from virtcore.hw.memory import PhysicalMemory
    from virtcore.hw.paging import MMU

Event = Trap | VMExit
_NO_DEVICE = "no RAM or device at this physical address"


class StopReason(enum.Enum):
    """Why :meth:`CPU.run` returned."""

    HALTED = "halted"  # hlt with nothing that could wake the CPU
    BUDGET = "budget"  # the step budget ran out
    TRAP = "trap"  # a trap with no handler inside the machine (TVEC = 0)
    VMEXIT = "vmexit"  # guest mode left to the VMM


@dataclass
class VMCS:
    """The virtual-machine control structure of one vCPU (VT-x-like, much reduced).

    The execution controls say which guest events cause a VM exit; their
    names follow the VT-x controls (SDM Vol. 3B §25.6).  Simplified: no
    host/guest state areas — the Python VMM saves and restores registers with
    :meth:`CPU.save_state`/:meth:`CPU.load_state` — and no VPID: the TLB is
    flushed on every VM entry and exit.

    >>> VMCS().hlt_exiting, [c.name for c in VMCS().cr_exiting]
    (True, ['CR3'])
    """

    hlt_exiting: bool = True
    unconditional_io_exiting: bool = True
    invlpg_exiting: bool = False
    external_interrupt_exiting: bool = True
    #: control registers whose reads/writes exit (CR3-load/store exiting = {CR3})
    cr_exiting: set[CR] = field(default_factory=lambda: {CR.CR3})
    #: synchronous exceptions that exit instead of going to the guest's handler
    exception_bitmap: set[TrapCause] = field(default_factory=set)
    #: second-dimension translation (EPT): guest-physical → host-physical.
    #: An MMU over host memory whose ``enabled`` is True; None = no EPT
    #: (guest-physical addresses are host-physical — confine the guest otherwise).
    ept: MMU | None = None
    #: a virtual interrupt to inject on the next entry (VM-entry interruption info)
    inject: TrapCause | None = None


@dataclass(frozen=True)
class CPUState:
    """A snapshot of the architectural state (what a VMM saves per vCPU).

    >>> s = CPUState(regs=(0,) * 8, pc=0x40, flags=0x202, mode=Privilege.KERNEL, crs={})
    >>> s.pc
    64
    """

    regs: tuple[int, ...]
    pc: int
    flags: int
    mode: Privilege
    crs: dict[int, int]
    halted: bool = False


@dataclass(frozen=True)
class TraceEntry:
    """One executed instruction in a traced run."""

    step: int
    pc: int
    mode: Privilege
    text: str
    regs: tuple[int, ...]
    event: Event | None = None

    def __str__(self) -> str:
        ring = "K" if self.mode is Privilege.KERNEL else "U"
        regs = " ".join(f"{n}={v:x}" for n, v in zip(REG_NAMES, self.regs) if v)
        ev = f"   -> {self.event}" if self.event else ""
        return f"{self.step:5d} {ring} {self.pc:#06x}  {self.text:<22} {regs}{ev}"


@dataclass(frozen=True)
class RunResult:
    """What :meth:`CPU.run` returns: why it stopped, the event, the steps run, the trace."""

    reason: StopReason
    steps: int
    event: Event | None = None
    trace: tuple[TraceEntry, ...] | None = None

    def __repr__(self) -> str:
        ev = f", event={self.event}" if self.event else ""
        return f"RunResult({self.reason.name}, steps={self.steps}{ev})"


def compute_flags(a: int, b: int) -> int:
    """Arithmetic flags of the compare ``a - b`` (x86 CF/ZF/SF/OF positions).

    >>> compute_flags(3, 3) == FLAG_ZF
    True
    >>> compute_flags(1, 2) == FLAG_CF | FLAG_SF
    True
    """
    r = (a - b) & MASK32
    f = 0
    if r == 0:
        f |= FLAG_ZF
    if r >> 31:
        f |= FLAG_SF
    if a < b:
        f |= FLAG_CF
    if ((a ^ b) & (a ^ r)) >> 31:
        f |= FLAG_OF
    return f


class InstructionTLB:
    """The instruction TLB: translations used by instruction fetch.

    Real processors keep separate instruction and data TLBs; virtcore does
    too, so that the translated fast path (which fetches a whole basic block
    from one page) counts exactly what fetching one instruction at a time
    would: one lookup per instruction, a miss only when the page changes or
    the entry was flushed.  Walks go through the same MMU (and its nested
    dimension in guest mode) and are counted in its ``memory_references``.
    """

    def __init__(self, mmu: MMU, capacity: int = 16) -> None:
        from virtcore.hw.paging import TLB

        self.mmu = mmu
        self.tlb = TLB(capacity)
        self.entries = self.tlb.entries

    def translator(self) -> MMU:
        """The MMU doing the walks: the paging MMU, or the nested one when guest paging is off."""
        mmu = self.mmu
        return mmu if mmu.enabled or mmu.nested is None else mmu.nested

    def translate(self, vaddr: int, user: bool) -> int | PageFault:
        """Translate a fetch address (counts one lookup)."""
        tr = self.translator()
        if tr is not self.mmu:
            user = False
        self.tlb.lookups += 1
        shift = tr.config.page_bits
        e = self.entries.get(vaddr >> shift)
        if e is not None and (not user or e & 4):  # PTE_U
            om = tr.config.offset_mask
            return (e & ~om) | (vaddr & om)
        return tr.refill(vaddr, Access.EXECUTE, user, tlb=self.tlb)

    def flush(self) -> None:
        """Drop every entry."""
        self.tlb.flush()

    def invalidate(self, vaddr: int) -> None:
        """Drop the entry of the page holding ``vaddr``."""
        self.tlb.invalidate(vaddr >> self.translator().config.page_bits)

    def __repr__(self) -> str:
        return "i" + repr(self.tlb)


class CPU:
    """One simulated processor.

    Parameters
    ----------
    memory : PhysicalMemory
    mmu : MMU
        Translates virtual addresses when CR0.PG is set.
    bus : Bus
        Port I/O, MMIO, timers and the interrupt controller (``bus.irq``).

    Attributes
    ----------
    regs : list of int
        ``r0``–``r7`` (``r7`` is ``sp``), unsigned 32-bit.
    pc : int
    mode : Privilege
    clock : int
        Ticks: one per instruction, plus idle time while halted.
    retired : int
        Instructions executed.
    """

    def __init__(self, memory: PhysicalMemory, mmu: MMU, bus: Bus) -> None:
        self.memory = memory
        self.mmu = mmu
        self.bus = bus
        self.irq = bus.irq
        self.regs: list[int] = [0] * NUM_REGS
        self.pc = 0
        self.mode = Privilege.KERNEL
        self.intr = False  # IF
        # Lazy arithmetic flags: the operands of the last compare, or
        # cc_a = None when they were loaded explicitly (popf, iret) into aflags.
        self.cc_a: int | None = None  # flags start clear, as x86's do (FLAGS = 0x2)
        self.cc_b = 0
        self.aflags = 0
        self.crs: dict[int, int] = {c.value: 0 for c in CR}
        self.halted = False
        self.clock = 0
        self.retired = 0
        self.guest_mode = False
        self.vmcs: VMCS | None = None
        self.trap_counts: dict[TrapCause, int] = {}
        self.exit_counts: dict[ExitReason, int] = {}
        self.translated = True  # use the block translator in run()
        # state the translated blocks share with the interpreter
        self._pending: tuple[TrapCause | PageFault, int, int] | None = None
        self._io_touched = False
        self._delivered: Trap | None = None  # last trap delivered in-machine (for traces)
        self.itlb = InstructionTLB(mmu)
        from virtcore.hw.translate import Translator

        self.translator = Translator(self)
        self._ops: dict[int, Callable[[int, int, int, int], Event | None]] = {
            row.opcode: getattr(self, "_op_" + row.mnemonic) for row in BY_OPCODE.values()
        }

    # ------------------------------------------------------------------
    # flags
    @property
    def flags(self) -> int:
        """The FLAGS register as x86 lays it out (CF, ZF, SF, IF, OF; bit 1 set)."""
        arith = self.aflags if self.cc_a is None else compute_flags(self.cc_a, self.cc_b)
        return FLAG_RESERVED | arith | (FLAG_IF if self.intr else 0)

    @flags.setter
    def flags(self, value: int) -> None:
        self.cc_a = None
        self.aflags = value & ARITH_FLAGS
        self.intr = bool(value & FLAG_IF)

    def _cond(self, opcode: int) -> bool:
        """Whether the conditional branch with ``opcode`` is taken."""
        if self.cc_a is not None:
            a, b = self.cc_a, self.cc_b
            z, lt = a == b, (a ^ 0x8000_0000) < (b ^ 0x8000_0000)
        else:
            f = self.aflags
            z, lt = bool(f & FLAG_ZF), bool(f & FLAG_SF) != bool(f & FLAG_OF)
        return {0x21: z, 0x22: not z, 0x23: lt, 0x24: not lt}[opcode]

    # ------------------------------------------------------------------
    # state
    def save_state(self) -> CPUState:
        """Snapshot registers, pc, flags, mode and control registers."""
        return CPUState(tuple(self.regs), self.pc, self.flags, self.mode, dict(self.crs),
                        self.halted)

    def load_state(self, state: CPUState) -> None:
        """Restore a snapshot taken by :meth:`save_state`."""
        self.regs[:] = state.regs
        self.pc = state.pc
        self.flags = state.flags
        self.mode = state.mode
        self.halted = state.halted
        for k, v in state.crs.items():
            self.write_cr(CR(k), v)

    def write_cr(self, cr: CR, value: int) -> None:
        """Write a control register with its side effects (paging on/off, TLB flush)."""
        value &= MASK32
        self.crs[cr] = value
        if cr is CR.CR0:
            self.mmu.enabled = bool(value & CR0_PG)
            self.flush_tlb()
        elif cr is CR.CR3:
            # x86 keeps flag bits (PWT, PCD) below the page base; they are ignored here
            self.mmu.set_root(value & ~self.mmu.config.offset_mask)
            self.itlb.flush()

    def flush_tlb(self) -> None:
        """Flush the data and instruction TLBs."""
        self.mmu.tlb.flush()
        self.itlb.flush()

    # ------------------------------------------------------------------
    # guest mode (VMX non-root)
    def enter_guest(self, vmcs: VMCS) -> None:
        """VM entry: run in guest mode under ``vmcs`` (VMLAUNCH/VMRESUME)."""
        self.vmcs = vmcs
        self.guest_mode = True
        self.mmu.nested = vmcs.ept
        self.flush_tlb()

    def leave_guest(self) -> None:
        """Back to root mode (the VMM's side of a VM exit)."""
        self.guest_mode = False
        self.mmu.nested = None
        self.flush_tlb()

    # ------------------------------------------------------------------
    # address translation and memory, for the interpreter
    def _translate(self, vaddr: int, access: Access) -> int | PageFault:
        user = self.mode is Privilege.USER
        mmu = self.mmu
        if mmu.enabled:
            return mmu.translate(vaddr, access, user)
        if mmu.nested is not None:
            return mmu.nested.translate(vaddr, access, False)
        return vaddr

    def _load(self, vaddr: int, pc: int) -> int | Event | None:
        """Load a word; returns the value, or the event (None = trap delivered)."""
        if vaddr & 3:
            return self._trap(TrapCause.ALIGNMENT_CHECK, pc, address=vaddr)
        pa = self._translate(vaddr, Access.READ)
        if isinstance(pa, PageFault):
            return self._fault(pa, pc)
        return self._phys_read(pa, pc)

    def _store(self, vaddr: int, value: int, pc: int) -> Event | bool | None:
        """Store a word; True on success, else the event (None = trap delivered)."""
        if vaddr & 3:
            return self._trap(TrapCause.ALIGNMENT_CHECK, pc, address=vaddr)
        pa = self._translate(vaddr, Access.WRITE)
        if isinstance(pa, PageFault):
            return self._fault(pa, pc)
        return self._phys_write(pa, value, pc)

    def _phys_read(self, pa: int, pc: int) -> int | Event | None:
        if pa < self.memory.size:
            return self.memory.words[pa >> 2]
        self.bus.now = self.clock
        value = self.bus.mmio_read(pa)
        self._io_touched = True
        if value is None:
            return self._trap(TrapCause.MACHINE_CHECK, pc, address=pa, detail=_NO_DEVICE)
        return value & MASK32

    def _phys_write(self, pa: int, value: int, pc: int) -> Event | bool | None:
        if pa < self.memory.size:
            self.memory.write_word(pa, value)
            return True
        self.bus.now = self.clock
        self._io_touched = True
        if not self.bus.mmio_write(pa, value & MASK32):
            return self._trap(TrapCause.MACHINE_CHECK, pc, address=pa, detail=_NO_DEVICE)
        return True

    # slow paths called from translated blocks ---------------------------
    def _block_code_write(self, paddr: int) -> None:
        """A translated store hit a frame holding translated code: drop its blocks."""
        self.translator.invalidate_frame(paddr // self.memory.frame_size)

    def _block_fault(self, cause: TrapCause | PageFault, address: int, pc: int) -> None:
        self._pending = (cause, address, pc)

    # A translated block updates the clock only when it returns; ``done`` is
    # the number of instructions it completed before this one, so devices
    # see the same time as under the interpreter (this instruction's tick).
    # A failed access is left pending for run() to turn into a trap, exactly
    # as the interpreter would have.
    def _block_mmio_read(self, pa: int, pc: int, done: int) -> int | None:
        self.bus.now = self.clock + done + 1
        self._io_touched = True
        value = self.bus.mmio_read(pa)
        if value is None:
            self._pending = (TrapCause.MACHINE_CHECK, pa, pc)
            return None
        return value & MASK32

    def _block_mmio_write(self, pa: int, value: int, pc: int, done: int) -> bool:
        self.bus.now = self.clock + done + 1
        self._io_touched = True
        if self.bus.mmio_write(pa, value & MASK32):
            return True
        self._pending = (TrapCause.MACHINE_CHECK, pa, pc)
        return False

    # ------------------------------------------------------------------
    # traps and exits
    def _fault(self, fault: PageFault, pc: int) -> Event | None:
        # With guest paging off, the only translation is the nested one (EPT),
        # so any fault is in the second dimension.
        nested_only = not self.mmu.enabled and self.mmu.nested is not None
        if self.guest_mode and (fault.nested or nested_only):
            return self._exit(ExitReason.EPT_VIOLATION, pc, gpa=fault.vaddr,
                              access=fault.access.name.lower())
        return self._trap(TrapCause.PAGE_FAULT, pc, address=fault.vaddr, fault=fault)

    def _exit(self, reason: ExitReason, pc: int, **qualification: object) -> VMExit:
        self.exit_counts[reason] = self.exit_counts.get(reason, 0) + 1
        return VMExit(reason, pc, dict(qualification))

    def _trap(self, cause: TrapCause, pc: int, *, address: int | None = None,
              fault: PageFault | None = None, detail: str = "") -> Event | None:
        """Take a trap: exit (guest mode + exception bitmap), deliver to TVEC, or return it.

        Returns the event that stops the run, or ``None`` when the trap was
        delivered to the in-machine handler and execution goes on.
        """
        self.trap_counts[cause] = self.trap_counts.get(cause, 0) + 1
        if self.guest_mode and self.vmcs is not None and not cause.is_interrupt \
                and cause in self.vmcs.exception_bitmap:
            q: dict[str, object] = {"vector": cause.value}
            if address is not None:
                q["address"] = address
            return self._exit(ExitReason.EXCEPTION_NMI, pc, **q)
        tvec = self.crs[CR.TVEC]
        if tvec == 0:
            return Trap(cause, pc, self.mode, detail, address, fault)
        self._delivered = Trap(cause, pc, self.mode, detail, address, fault)
        self.crs[CR.EPC] = pc
        self.crs[CR.ESTATUS] = self.flags | (ESTATUS_USER if self.mode is Privilege.USER else 0)
        self.crs[CR.CAUSE] = cause.value
        if address is not None and cause is TrapCause.PAGE_FAULT:
            self.crs[CR.CR2] = address
        self.mode = Privilege.KERNEL
        self.intr = False
        self.halted = False
        self.pc = tvec
        return None

    def _check_interrupts(self) -> Event | Literal[False] | None:
        """Deliver a pending interrupt if one can be taken.

        Returns False when nothing was pending or deliverable, else the
        event (None when delivered inside the machine).
        """
        vmcs = self.vmcs if self.guest_mode else None
        if vmcs is not None and vmcs.inject is not None and self.intr:
            cause, vmcs.inject = vmcs.inject, None
            return self._trap(cause, self.pc)
        irq = self.irq
        if not irq.pending & ~irq.mask:
            return False
        if vmcs is not None and vmcs.external_interrupt_exiting:
            line = irq.acknowledge()
            self.halted = False
            return self._exit(ExitReason.EXTERNAL_INTERRUPT, self.pc, irq=line,
                              vector=32 + (line or 0))
        if not self.intr:
            return False
        line = irq.acknowledge()
        if line is None:
            return False
        self.halted = False
        return self._trap(TrapCause.for_irq(line), self.pc)

    # ------------------------------------------------------------------
    # the reference interpreter
    def fetch(self) -> tuple[int, int] | Event | None:
        """Fetch the word at pc: ``(physical address, word)``, or the event it caused."""
        pc = self.pc
        if pc & 3:
            return self._trap(TrapCause.ALIGNMENT_CHECK, pc, address=pc)
        mmu = self.mmu
        if mmu.enabled or mmu.nested is not None:
            pa = self.itlb.translate(pc, self.mode is Privilege.USER)
            if isinstance(pa, PageFault):
                return self._fault(pa, pc)
        else:
            pa = pc
        if pa >= self.memory.size:
            if self.guest_mode:
                return self._exit(ExitReason.EPT_VIOLATION, pc, gpa=pa, access="execute")
            return self._trap(TrapCause.MACHINE_CHECK, pc, address=pa,
                              detail="instruction fetch outside RAM")
        return pa, self.memory.words[pa >> 2]

    def step(self) -> Event | None:
        """Execute one instruction, or take the trap it causes.

        Returns the event that must stop a run (a trap with no handler, a VM
        exit), or None: the instruction retired, or its trap was delivered
        to the handler at ``TVEC``.  One step is one tick of the clock.
        """
        self.clock += 1
        got = self.fetch()
        if not isinstance(got, tuple):
            return got
        word = got[1]
        row = decode(word)
        pc = self.pc
        if row is None:
            return self._trap(TrapCause.INVALID_OPCODE, pc, detail=f"word {word:#010x}")
        if row.privileged and self.mode is Privilege.USER:
            return self._trap(TrapCause.GENERAL_PROTECTION, pc,
                              detail=f"{row.mnemonic} in user mode")
        ev = self._ops[row.opcode]((word >> 20) & 0xF, (word >> 16) & 0xF, word & 0xFFFF, pc)
        if ev is None:
            self.retired += 1
            return None
        if ev is _DELIVERED:
            return None
        return ev  # type: ignore[return-value]

    # ----- ordinary instructions. Each returns None (done, pc advanced), or
    # the event; on a trap delivered in-machine it returns _DELIVERED.
    def _next(self) -> None:
        self.pc = (self.pc + 4) & MASK32

    def _op_nop(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._next()

    def _op_mov(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.regs[rd] = self.regs[rs]
        self._next()

    def _op_movi(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.regs[rd] = sext16(imm) & MASK32
        self._next()

    def _op_lui(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.regs[rd] = imm << 16
        self._next()

    def _op_ori(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.regs[rd] |= imm
        self._next()

    def _op_addi(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.regs[rd] = (self.regs[rd] + sext16(imm)) & MASK32
        self._next()

    def _alu(self, rd: int, value: int) -> None:
        self.regs[rd] = value & MASK32
        self._next()

    def _op_add(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] + self.regs[rs])

    def _op_sub(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] - self.regs[rs])

    def _op_mul(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] * self.regs[rs])

    def _op_and(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] & self.regs[rs])

    def _op_or(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] | self.regs[rs])

    def _op_xor(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] ^ self.regs[rs])

    def _op_shl(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] << (self.regs[rs] & 31))

    def _op_shr(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._alu(rd, self.regs[rd] >> (self.regs[rs] & 31))

    def _op_cmp(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.cc_a, self.cc_b = self.regs[rd], self.regs[rs]
        self._next()

    def _op_cmpi(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.cc_a, self.cc_b = self.regs[rd], sext16(imm) & MASK32
        self._next()

    def _branch(self, pc: int, imm: int) -> None:
        self.pc = (pc + 4 * sext16(imm)) & MASK32

    def _op_jmp(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._branch(pc, imm)

    def _jcc(self, opcode: int, imm: int, pc: int) -> None:
        if self._cond(opcode):
            self._branch(pc, imm)
        else:
            self._next()

    def _op_jz(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._jcc(0x21, imm, pc)

    def _op_jnz(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._jcc(0x22, imm, pc)

    def _op_jlt(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._jcc(0x23, imm, pc)

    def _op_jge(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self._jcc(0x24, imm, pc)

    def _push(self, value: int, pc: int) -> Event | bool | None:
        sp = (self.regs[SP] - 4) & MASK32
        r = self._store(sp, value, pc)
        if r is True:
            self.regs[SP] = sp
        return r

    def _pop(self, pc: int) -> int | Event | None:
        v = self._load(self.regs[SP], pc)
        if isinstance(v, int):
            self.regs[SP] = (self.regs[SP] + 4) & MASK32
        return v

    def _op_call(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        r = self._push((pc + 4) & MASK32, pc)
        if r is not True:
            return _DELIVERED if r is None else r
        self._branch(pc, imm)
        return None

    def _op_ret(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        v = self._pop(pc)
        if not isinstance(v, int):
            return _DELIVERED if v is None else v
        self.pc = v
        return None

    def _op_push(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        r = self._push(self.regs[rs], pc)
        if r is not True:
            return _DELIVERED if r is None else r
        self._next()
        return None

    def _op_pop(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        v = self._pop(pc)
        if not isinstance(v, int):
            return _DELIVERED if v is None else v
        self.regs[rd] = v
        self._next()
        return None

    def _op_ld(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        v = self._load((self.regs[rs] + sext16(imm)) & MASK32, pc)
        if not isinstance(v, int):
            return _DELIVERED if v is None else v
        self.regs[rd] = v
        self._next()
        return None

    def _op_st(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        r = self._store((self.regs[rs] + sext16(imm)) & MASK32, self.regs[rd], pc)
        if r is not True:
            return _DELIVERED if r is None else r
        self._next()
        return None

    # ----- system instructions
    def _exiting(self) -> VMCS | None:
        return self.vmcs if self.guest_mode else None

    def _op_cli(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.intr = False
        self._next()

    def _op_sti(self, rd: int, rs: int, imm: int, pc: int) -> None:
        self.intr = True
        self._next()

    def _op_hlt(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        if vmcs is not None and vmcs.hlt_exiting:
            return self._exit(ExitReason.HLT, pc)
        self._next()
        self.halted = True
        return None

    def _op_in(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        if vmcs is not None and vmcs.unconditional_io_exiting:
            return self._exit(ExitReason.IO_INSTRUCTION, pc, port=imm, size=4,
                              direction="in", register=rd)
        self._io_touched = True
        self.bus.now = self.clock
        self.regs[rd] = self.bus.port_in(imm) & MASK32
        self._next()
        return None

    def _op_out(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        if vmcs is not None and vmcs.unconditional_io_exiting:
            return self._exit(ExitReason.IO_INSTRUCTION, pc, port=imm, size=4,
                              direction="out", value=self.regs[rs])
        self._io_touched = True
        self.bus.now = self.clock
        self.bus.port_out(imm, self.regs[rs])
        self._next()
        return None

    def _op_rdcr(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        if vmcs is not None and CR(imm) in vmcs.cr_exiting:
            return self._exit(ExitReason.CR_ACCESS, pc, cr=CR(imm).name, access="read",
                              register=rd)
        self.regs[rd] = self.crs[imm]
        self._next()
        return None

    def _op_wrcr(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        if vmcs is not None and CR(imm) in vmcs.cr_exiting:
            return self._exit(ExitReason.CR_ACCESS, pc, cr=CR(imm).name, access="write",
                              value=self.regs[rs])
        value = self.regs[rs]
        if imm == CR.CR3 and value >> self.mmu.config.page_bits >= PFN_LIMIT:
            # reserved bits set in CR3: #GP on x86, never an exception of the simulator
            return self._trap(TrapCause.GENERAL_PROTECTION, pc,
                              detail=f"cr3 value {value:#x} beyond physical frames")
        self.write_cr(CR(imm), value)
        self._next()
        return None

    def _op_iret(self, rd: int, rs: int, imm: int, pc: int) -> None:
        status = self.crs[CR.ESTATUS]
        self.flags = status
        self.mode = Privilege.USER if status & ESTATUS_USER else Privilege.KERNEL
        self.pc = self.crs[CR.EPC]

    def _op_invlpg(self, rd: int, rs: int, imm: int, pc: int) -> Event | None:
        vmcs = self._exiting()
        addr = self.regs[rs]
        if vmcs is not None and vmcs.invlpg_exiting:
            return self._exit(ExitReason.INVLPG, pc, address=addr)
        self.mmu.tlb.invalidate(addr >> self.mmu.config.page_bits)
        self.itlb.invalidate(addr)
        self._next()
        return None

    def _op_syscall(self, rd: int, rs: int, imm: int, pc: int) -> Event | object:
        ev = self._trap(TrapCause.SYSCALL, pc, detail=f"call {self.regs[0]}")
        return _DELIVERED if ev is None else ev

    def _op_hcall(self, rd: int, rs: int, imm: int, pc: int) -> Event | object:
        if self.guest_mode:
            return self._exit(ExitReason.VMCALL, pc, nr=self.regs[0])
        ev = self._trap(TrapCause.HYPERCALL, pc, detail=f"hypercall {self.regs[0]}")
        return _DELIVERED if ev is None else ev

    def _op_pushf(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        r = self._push(self.flags, pc)
        if r is not True:
            return _DELIVERED if r is None else r
        self._next()
        return None

    def _op_popf(self, rd: int, rs: int, imm: int, pc: int) -> Event | object | None:
        v = self._pop(pc)
        if not isinstance(v, int):
            return _DELIVERED if v is None else v
        if self.mode is Privilege.USER:
            # x86 POPF at CPL 3: IF is left as it was, and nothing says so.
            v = (v & ~FLAG_IF) | (FLAG_IF if self.intr else 0)
        self.flags = v
        self._next()
        return None

    # ------------------------------------------------------------------
    def run(self, max_steps: int = 1_000_000, *, trace: bool = False) -> RunResult:
        """Run until halt, an event for the caller, or the step budget is spent.

        Parameters
        ----------
        max_steps : int
            The step budget.  A step is an instruction executed, a trap
            delivered to the in-machine handler, or one wait of a halted CPU
            for the next device event — so a run always ends, even when a
            handler traps forever or a halted CPU waits on a masked line.
        trace : bool
            Record every instruction (uses the reference interpreter only).

        Returns
        -------
        RunResult
        """
        if max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        log: list[TraceEntry] | None = [] if trace else None
        executed = 0
        bus = self.bus
        irq = self.irq
        fast = self.translated and not trace
        translator = self.translator
        deadline = bus.next_deadline()
        while True:
            if deadline is not None and self.clock >= deadline:
                bus.advance(self.clock)
                deadline = bus.next_deadline()
            if irq.pending or (self.guest_mode and self.vmcs and self.vmcs.inject is not None):
                ev = self._check_interrupts()
                if ev is not False:
                    if ev is not None:
                        return self._stop(ev, executed, log)
                    deadline = bus.next_deadline()
            if self.halted:
                wakeable = self.intr or (self.guest_mode and self.vmcs is not None
                                         and self.vmcs.external_interrupt_exiting)
                if deadline is None or not wakeable:
                    return RunResult(StopReason.HALTED, executed, None, _tup(log))
                if executed >= max_steps:
                    return RunResult(StopReason.BUDGET, executed, None, _tup(log))
                self.clock = max(self.clock, deadline)
                executed += 1  # waiting for the next device event is a step
                continue
            avail = max_steps - executed
            if avail <= 0:
                return RunResult(StopReason.BUDGET, executed, None, _tup(log))
            if deadline is not None:
                avail = min(avail, deadline - self.clock)
            if fast:
                n = translator.run_block(avail)
                if n or self._pending is not None:
                    executed += n
                    self.retired += n
                    self.clock += n
                    if self._io_touched:
                        self._io_touched = False
                        deadline = bus.next_deadline()
                    if self._pending is not None:
                        self.clock += 1  # the faulting instruction's tick, as in step()
                        ev = self._take_pending()
                        if ev is not None:
                            return self._stop(ev, executed, log)
                        executed += 1  # a trap delivered in-machine is a step
                    continue
            pc, mode = self.pc, self.mode
            ev = self.step()
            if self._io_touched:
                self._io_touched = False
                deadline = bus.next_deadline()
            if log is not None:
                log.append(self._trace_entry(pc, mode, ev))
            if ev is not None:
                return self._stop(ev, executed, log)
            executed += 1

    def _trace_entry(self, pc: int, mode: Privilege, ev: Event | None) -> TraceEntry:
        pa = self._peek_pa(pc)
        word = self.memory.words[pa >> 2] if pa is not None else None
        if word is None:
            text = "(no instruction here)"
        else:
            try:
                text = format_instruction(word, pc)
            except DecodeError:
                text = f".word {word:#010x}"
        if ev is None and self._delivered is not None:
            ev, self._delivered = self._delivered, None
        return TraceEntry(self.retired, pc, mode, text, tuple(self.regs), ev)

    def _peek_pa(self, vaddr: int) -> int | None:
        """Physical address of ``vaddr`` without side effects (for traces)."""
        mmu = self.mmu
        pa: int | None
        if mmu.enabled:
            pa = mmu.walk(vaddr).paddr
        elif mmu.nested is not None:
            pa = mmu.nested.walk(vaddr).paddr
        else:
            pa = vaddr
        if pa is None or pa >= self.memory.size or pa & 3:
            return None
        return pa

    def _take_pending(self) -> Event | None:
        cause, address, pc = self._pending  # type: ignore[misc]
        self._pending = None
        self.pc = pc
        if isinstance(cause, PageFault):
            return self._fault(cause, pc)
        detail = _NO_DEVICE if cause is TrapCause.MACHINE_CHECK else ""
        return self._trap(cause, pc, address=address, detail=detail)

    def _stop(self, ev: Event, executed: int, log: list[TraceEntry] | None) -> RunResult:
        reason = StopReason.VMEXIT if isinstance(ev, VMExit) else StopReason.TRAP
        return RunResult(reason, executed, ev, _tup(log))


def _tup(log: list[TraceEntry] | None) -> tuple[TraceEntry, ...] | None:
    return None if log is None else tuple(log)

_DELIVERED = object()

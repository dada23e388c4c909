"""Virtual machines (虚拟机) and their virtual resources: vCPUs, memory, devices (S2.1, S2.2).

A VM is "an efficient, isolated duplicate of the real machine" (Popek &
Goldberg 1974, [PG74]).  The VMM builds
each of its resources out of the host's:

- **memory** — host frames from the host's frame allocator, listed in a
  *P2M* table (guest-physical frame → host frame, Xen's physical-to-machine
  table, [XIG; XEN-MM-H]).  The guest sees physical addresses that start at 0 and are
  contiguous; the host frames behind them need not be.
- **vCPUs** — :class:`VCPU` objects holding the guest-visible CPU state
  (registers, pc, *virtual* flags and interrupt flag, *virtual* mode and
  control registers) while the vCPU is off the real CPU; :meth:`VCPU.state`
  gives it as a :class:`~virtcore.hw.CPUState`.
- **devices** — a private bus per VM with its own COM1 serial port and its
  own timer (the same device models as the real machine, at the same ports),
  so each VM's console output is its own.

How the guest is confined (the *relocation map*)
------------------------------------------------
For the deprivileged techniques the VMM builds, in host frames of its own, a
page table that maps guest-physical page *i* to host frame ``p2m[i]`` (user
accessible, writable) and nothing else, and runs the guest with CR3 pointing
at it.  It is a shadow page table in its simplest form — the guest has no
paging of its own, so guest-physical = guest-virtual — or, in Popek and
Goldberg's terms, a relocation-bounds register made of page-table entries.
Any address beyond the guest's pages faults to the VMM.  With hardware
assist the same mapping is the EPT.  The D bits of its leaf entries are the
VMM's dirty log for live migration.

>>> from virtcore.vmm import Hypervisor
>>> hv = Hypervisor()
>>> vm = hv.create("web", memory_pages=2, program="movi r1, 'A'\\nout 0x3f8, r1\\ncli\\nhlt")
>>> vm.memory_size, len(vm.p2m), vm.p2m != [0, 1]
(8192, 2, True)
>>> _ = hv.run(); vm.console, vm.state.name
('A', 'SHUTOFF')
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from virtcore.errors import AddressError, ConfigurationError, VirtcoreError
from virtcore.hw.asm import Program, assemble
from virtcore.hw.cpu import CPUState
from virtcore.hw.devices import Bus, InterruptController, Serial, Timer
from virtcore.hw.events import Privilege, Trap, TrapCause, VMExit
from virtcore.hw.isa import (
    ARITH_FLAGS,
    CR,
    ESTATUS_USER,
    FLAG_IF,
    FLAG_RESERVED,
    MASK32,
    NUM_REGS,
    SP,
)
from virtcore.hw.paging import MMU, PTE_D, PTE_W
from virtcore.vmm.bt import TranslationCache
from virtcore.vmm.handlers import Action, HandlerTable
from virtcore.vmm.lifecycle import VMState

if TYPE_CHECKING:
    from virtcore.hw.cpu import VMCS
    from virtcore.hw.memory import PhysicalMemory
    from virtcore.vmm.hypervisor import Hypervisor

__all__ = [
    "DEVICE_NAMES",
    "STACK_GAP",
    "VCPU",
    "VM",
    "GuestMemory",
    "Technique",
    "VMMError",
    "VMStats",
]

#: Virtual devices a VM may have (the real machine's models, private to the VM).
DEVICE_NAMES = ("serial", "timer")
#: Bytes between the initial stacks of consecutive vCPUs (vCPU i: sp = top − i·STACK_GAP).
STACK_GAP = 256
_VIOLATIONS_KEPT = 64


class VMMError(VirtcoreError):
    """The VMM itself is in a state it cannot continue from (a bug, or a host out of memory).

    >>> issubclass(VMMError, VirtcoreError)
    True
    """


class Technique(enum.Enum):
    """How the VMM runs the guest kernel [VMW07, AA06].

    Trap-and-emulate and paravirtualization run the guest kernel
    deprivileged on the CPU (a paravirtualized guest differs only in what it
    runs: a kernel that calls ``hcall`` instead of using sensitive
    instructions [XEN-SOSP03]).  Binary translation runs the guest kernel
    from a translation cache, block by block, with its sensitive
    instructions translated into code that does not trap; guest user code
    runs directly (:mod:`virtcore.vmm.bt`, [BUG12]).  Hardware assist runs
    the guest in guest mode (VMX non-root) with EPT [SDM].

    >>> Technique.parse("bt"), Technique.parse("hw").deprivileged
    (<Technique.BINARY_TRANSLATION: 'binary translation'>, False)
    """

    TRAP_AND_EMULATE = "trap-and-emulate"
    BINARY_TRANSLATION = "binary translation"
    PARAVIRTUALIZATION = "paravirtualization"
    HARDWARE_ASSIST = "hardware assist"

    @classmethod
    def parse(cls, value: Technique | str) -> Technique:
        """A technique from itself, its value, its name, or a short alias (trap, bt, pv, hw)."""
        if isinstance(value, Technique):
            return value
        aliases = {"trap": cls.TRAP_AND_EMULATE, "te": cls.TRAP_AND_EMULATE,
                   "bt": cls.BINARY_TRANSLATION, "pv": cls.PARAVIRTUALIZATION,
                   "hw": cls.HARDWARE_ASSIST, "hvm": cls.HARDWARE_ASSIST,
                   "vt-x": cls.HARDWARE_ASSIST}
        key = str(value).strip().lower()
        for t in cls:
            if key in (t.value, t.name.lower()):
                return t
        if key in aliases:
            return aliases[key]
        raise ConfigurationError(
            f"unknown technique {value!r}; use one of {[t.value for t in cls]} or trap/bt/pv/hw")

    @property
    def deprivileged(self) -> bool:
        """True when the guest kernel runs in the real CPU's user mode (all but hardware assist)."""
        return self is not Technique.HARDWARE_ASSIST


@dataclass
class VMStats:
    """What the VMM counted while running one VM.

    Every guest instruction is either run **directly** by the host CPU or
    needed the VMM (a trap in the deprivileged techniques, a VM exit with
    hardware assist); :attr:`efficiency` is the directly-run fraction —
    Popek and Goldberg's efficiency property asks for it to dominate.

    >>> s = VMStats(direct=90, traps=10, emulated=10)
    >>> s.efficiency, s
    (0.9, VMStats(90 direct, 10 traps, 0 exits: 10 emulated, 0 reflected; efficiency 90.0%))
    """

    direct: int = 0  # instructions the host CPU ran on the guest's behalf without the VMM
    traps: int = 0  # traps into the VMM (deprivileged techniques)
    exits: int = 0  # VM exits (hardware assist)
    emulated: int = 0  # instructions emulated by a handler
    reflected: int = 0  # traps the VMM forwarded into the guest kernel (its own syscalls, faults)
    interrupts: int = 0  # virtual interrupts delivered to the guest
    hypercalls: int = 0
    violations: int = 0  # accesses outside the guest's memory, caught
    blocks_translated: int = 0  # binary translation: blocks written into the translation cache
    translated: int = 0  # binary translation: guest-kernel instructions translated
    tc_hits: int = 0  # binary translation: blocks found already translated
    translated_ops: int = 0  # binary translation: sensitive instructions done inline, no trap
    callouts: int = 0  # binary translation: calls from translated code into the monitor
    by_instruction: Counter[str] = field(default_factory=Counter)
    by_exit: Counter[str] = field(default_factory=Counter)
    by_hypercall: Counter[str] = field(default_factory=Counter)

    @property
    def vmm_entries(self) -> int:
        """Traps, exits and callouts: how often the VMM had to step in."""
        return self.traps + self.exits + self.callouts

    @property
    def instructions(self) -> int:
        """Guest instructions in all: run directly, translated, or handled by the VMM."""
        return self.direct + self.vmm_entries + self.translated_ops

    @property
    def efficiency(self) -> float:
        """Fraction of guest instructions run directly (1.0 before any ran)."""
        total = self.instructions
        return self.direct / total if total else 1.0

    def __repr__(self) -> str:
        return (f"VMStats({self.direct} direct, {self.traps} traps, {self.exits} exits:"
                f" {self.emulated} emulated, {self.reflected} reflected;"
                f" efficiency {100 * self.efficiency:.1f}%)")


@dataclass
class GuestMemory:
    """A VM's memory on one host: the P2M list and the table that enforces it.

    Attributes
    ----------
    memory : PhysicalMemory
        The host's RAM.
    p2m : list of int
        Guest-physical frame *i* lives in host frame ``p2m[i]``.
    table : MMU
        The relocation map (deprivileged techniques) or the EPT (hardware
        assist): guest-physical page → host frame, built in ``vmm_frames``.
    vmm_frames : list of int
        Host frames holding ``table`` itself — the VMM's memory, not the guest's.
    leaf_entries : list of int
        Host address of the leaf entry mapping each guest page (its D bit is the dirty log).

    Examples
    --------
    >>> from virtcore.vmm import Hypervisor
    >>> hv = Hypervisor()
    >>> vm = hv.create("g", 2, program="li r1, 0x1000\\n st r1, [r1+0]\\n l: jmp l")
    >>> mem = vm.mem
    >>> mem.hpa(0x1004) == (mem.p2m[1] << 12) + 4
    True
    >>> _ = hv.run(10); mem.collect_dirty()   # the guest's store set the D bit of page 1
    [1]
    >>> hv.cpu.flush_tlb(); _ = hv.run(10); mem.collect_dirty()
    []
    """

    memory: PhysicalMemory
    p2m: list[int]
    table: MMU
    vmm_frames: list[int]
    leaf_entries: list[int]
    page_bits: int
    soft_dirty: set[int] = field(default_factory=set)  # pages the VMM itself wrote
    log_dirty: bool = False  # write-protection dirty logging on (live migration)
    dirty_bitmap: set[int] = field(default_factory=set)  # pages written since the last collect
    write_faults: int = 0  # first writes to write-protected pages the VMM logged

    def hpa(self, gpa: int) -> int:
        """The host-physical address of guest-physical ``gpa`` (must be inside the guest)."""
        return (self.p2m[gpa >> self.page_bits] << self.page_bits) | (
            gpa & ((1 << self.page_bits) - 1))

    def start_log_dirty(self) -> None:
        """Turn on classic dirty logging: write-protect every page of the guest.

        The guest's next write to each page faults into the VMM, which logs
        the page in :attr:`dirty_bitmap` and makes it writable again
        (:meth:`log_write_fault`) — Xen's log-dirty mode and KVM's
        ``KVM_MEM_LOG_DIRTY_PAGES`` do this [KVM-API, KVM-H, XEN-DOMCTL].  The
        caller must flush the TLBs that may still hold writable translations.
        """
        self.log_dirty = True
        self.dirty_bitmap.clear()
        self.write_faults = 0
        self._protect(range(len(self.leaf_entries)))

    def stop_log_dirty(self) -> None:
        """Turn dirty logging off and make every page writable again."""
        self.log_dirty = False
        mem = self.memory
        for entry in self.leaf_entries:
            mem.write_word(entry, mem.words[entry >> 2] | PTE_W)

    def _protect(self, pages: Iterable[int]) -> None:
        mem = self.memory
        for page in pages:
            entry = self.leaf_entries[page]
            mem.write_word(entry, mem.words[entry >> 2] & ~(PTE_W | PTE_D))

    def log_write_fault(self, gpa: int) -> bool:
        """A write fault at guest-physical ``gpa``: log it if dirty logging caused it.

        Returns True when the page was write-protected for logging: it is
        now in :attr:`dirty_bitmap` and writable again, and the guest should
        retry the write (the caller flushes the stale TLB entry).  False for
        any other fault.
        """
        page = gpa >> self.page_bits
        if not self.log_dirty or not 0 <= page < len(self.leaf_entries):
            return False
        entry = self.leaf_entries[page]
        pte = self.memory.words[entry >> 2]
        if pte & PTE_W:
            return False
        self.memory.write_word(entry, pte | PTE_W)
        self.dirty_bitmap.add(page)
        self.write_faults += 1
        return True

    def collect_dirty_log(self) -> list[int]:
        """The pages written since the last call (``KVM_GET_DIRTY_LOG``), write-protected again.

        Read-and-clear: the returned pages are protected once more, so their
        next write is logged in the next round.  The caller flushes the TLBs.
        """
        dirty = self.dirty_bitmap | self.soft_dirty
        self.dirty_bitmap = set()
        self.soft_dirty.clear()
        self._protect(sorted(dirty))
        return sorted(dirty)

    def collect_dirty(self) -> list[int]:
        """Guest pages written since the last call (read-and-clear the D bits), sorted.

        The later method: the hardware sets the dirty (D) bit in the VMM's own
        table (VT-x added accessed/dirty flags to EPT, and Page-Modification
        Logging, after its first generations [SDM]); classic hypervisors
        write-protect instead (:meth:`start_log_dirty`).  The caller must flush the TLBs that may
        cache the cleared entries.
        """
        mem = self.memory
        words = mem.words
        dirty = set(self.soft_dirty)
        self.soft_dirty.clear()
        for page, entry in enumerate(self.leaf_entries):
            pte = words[entry >> 2]
            if pte & PTE_D:
                dirty.add(page)
                mem.write_word(entry, pte & ~PTE_D)
        return sorted(dirty)


class VCPU:
    """A virtual CPU: the guest-visible CPU state, kept by the VMM.

    Attributes
    ----------
    vm : VM
    index : int
    regs : list of int
        r0–r7 (r7 = sp).
    pc : int
    flags : int
        The *virtual* FLAGS (arithmetic flags and the virtual IF; bit 1 always set).
    mode : Privilege
        The guest's *virtual* privilege level (the real CPU runs it in user
        mode unless hardware assist is used).
    crs : dict
        The *virtual* control registers, keyed by :class:`~virtcore.hw.CR`.
    halted : bool
        Waiting for a virtual interrupt.
    done : str or None
        Why the vCPU stopped for good: ``"halted"``, ``"shutdown"``,
        ``"trap GENERAL_PROTECTION"`` (a trap the guest had no handler for),
        ``"killed: …"``, ``"crashed: …"``; None while it can run.

    Examples
    --------
    >>> v = VCPU(None, 0)
    >>> v.interrupts_enabled = True
    >>> hex(v.flags), v
    ('0x202', VCPU(?/0, pc=0x0, kernel, IF=1, runnable))
    """

    def __init__(self, vm: VM | None, index: int) -> None:
        self.vm: VM = vm  # type: ignore[assignment]
        self.index = index
        self.regs: list[int] = [0] * NUM_REGS
        self.pc = 0
        self._flags = FLAG_RESERVED
        self.mode = Privilege.KERNEL
        self.crs: dict[CR, int] = dict.fromkeys(CR, 0)
        self.halted = False
        self.done: str | None = None
        self.crashed = False
        self.event: Trap | VMExit | None = None  # the event that stopped it, if any
        # diagnostics: consecutive traps at one pc with no instruction run in between
        self.repeats = 0
        self.worst_repeats = (0, 0)  # (count, pc)
        self._last_trap_pc = -1

    # -- flags ------------------------------------------------------------------------
    @property
    def flags(self) -> int:
        """The virtual FLAGS register."""
        return self._flags

    @flags.setter
    def flags(self, value: int) -> None:
        self._flags = FLAG_RESERVED | (value & (ARITH_FLAGS | FLAG_IF))

    @property
    def interrupts_enabled(self) -> bool:
        """The virtual IF."""
        return bool(self._flags & FLAG_IF)

    @interrupts_enabled.setter
    def interrupts_enabled(self, on: bool) -> None:
        self._flags = (self._flags & ~FLAG_IF) | (FLAG_IF if on else 0)

    # -- state ------------------------------------------------------------------------
    def reset(self, pc: int, sp: int) -> None:
        """Power-on state: registers 0 except r0 = index and sp, flags 0x2 (x86's reset value)."""
        self.regs[:] = [0] * NUM_REGS
        self.regs[0] = self.index
        self.regs[SP] = sp & MASK32
        self.pc = pc
        self._flags = FLAG_RESERVED
        self.mode = Privilege.KERNEL
        self.crs = dict.fromkeys(CR, 0)
        self.halted = False
        self.done = None
        self.crashed = False
        self.event = None
        self.repeats = 0
        self.worst_repeats = (0, 0)
        self._last_trap_pc = -1

    def state(self) -> CPUState:
        """The guest-visible state as a :class:`~virtcore.hw.CPUState` snapshot."""
        return CPUState(tuple(self.regs), self.pc, self._flags, self.mode,
                        {int(k): v for k, v in self.crs.items()}, self.halted)

    def restore(self, state: CPUState) -> None:
        """Load a snapshot taken by :meth:`state` (or by a real CPU's ``save_state``)."""
        self.regs[:] = state.regs
        self.pc = state.pc
        self.flags = state.flags
        self.mode = state.mode
        self.crs = {CR(k): v for k, v in state.crs.items()}
        self.halted = state.halted

    # -- helpers for handlers -----------------------------------------------------------
    def reflect(self, cause: TrapCause, address: int | None = None) -> Action:
        """Deliver a trap to the guest kernel's handler at its *virtual* TVEC.

        Does to the virtual state what the CPU does to the real one: EPC ←
        pc, ESTATUS ← flags (+ the user bit), CAUSE, CR2 for a page fault,
        kernel mode, IF off, pc ← TVEC.  With TVEC = 0 the guest has no
        handler — on bare hardware the trap would stop the machine — so the
        vCPU stops with ``done = "trap <CAUSE>"``.
        """
        tvec = self.crs[CR.TVEC]
        if tvec == 0:
            self.finish(f"trap {cause.name}", Trap(cause, self.pc, self.mode, "", address),
                        crashed=True)
            return Action.CRASH
        crs = self.crs
        crs[CR.EPC] = self.pc
        crs[CR.ESTATUS] = self._flags | (ESTATUS_USER if self.mode is Privilege.USER else 0)
        crs[CR.CAUSE] = cause.value
        if address is not None and cause is TrapCause.PAGE_FAULT:
            crs[CR.CR2] = address & MASK32
        self.mode = Privilege.KERNEL
        self._flags &= ~FLAG_IF
        self.halted = False
        self.pc = tvec
        return Action.CONTINUE

    def push(self, value: int) -> bool:
        """Push ``value`` on the guest stack; False if it faulted (the fault was reflected)."""
        sp = (self.regs[SP] - 4) & MASK32
        if not self._stack_ok(sp):
            return False
        self.vm.write_word(sp, value)
        self.regs[SP] = sp
        return True

    def pop(self) -> int | None:
        """Pop a word from the guest stack; None if it faulted (the fault was reflected)."""
        sp = self.regs[SP]
        if not self._stack_ok(sp):
            return None
        value = self.vm.read_word(sp)
        self.regs[SP] = (sp + 4) & MASK32
        return value

    def _stack_ok(self, addr: int) -> bool:
        if addr & 3:
            self.vm.stats.reflected += 1
            self.reflect(TrapCause.ALIGNMENT_CHECK, addr)
            return False
        if not self.vm.contains(addr):
            self.vm.violation(self, addr)
            return False
        return True

    def crash(self, reason: str) -> Action:
        """Stop this vCPU because the guest did something the VMM will not allow."""
        self.finish(f"crashed: {reason}", crashed=True)
        return Action.CRASH

    def finish(self, reason: str, event: Trap | VMExit | None = None, *,
               crashed: bool = False) -> None:
        """Mark the vCPU stopped for good (first reason wins)."""
        if self.done is None:
            self.done = reason
            self.event = event
            self.crashed = crashed

    def __repr__(self) -> str:
        name = self.vm.name if self.vm is not None else "?"
        status = self.done or ("halted" if self.halted else "runnable")
        return (f"VCPU({name}/{self.index}, pc={self.pc:#x}, {self.mode.name.lower()},"
                f" IF={int(self.interrupts_enabled)}, {status})")


class VM:
    """A virtual machine: a name, memory, vCPUs, virtual devices, a guest image.

    Define it here, then give it to a :class:`~virtcore.vmm.Hypervisor`
    (``hv.define(vm)``); memory is allocated when it starts.

    Parameters
    ----------
    name : str
    memory_pages : int
        Guest memory in pages of the host's page size.
    vcpus : int
        Number of vCPUs (1–16).  Interrupts go to vCPU 0 (a PIC wired to the
        boot CPU; there are no inter-processor interrupts in this model).
    devices : iterable of str
        Virtual devices, from :data:`DEVICE_NAMES` (``"serial"``, ``"timer"``).
    program : str or Program, optional
        The guest kernel image, loaded at guest-physical ``program.origin``;
        every vCPU starts there in kernel mode, with ``r0`` = its index and
        ``sp`` = top of memory − index × :data:`STACK_GAP`.
    technique : Technique or str
        How to run the guest kernel (trap-and-emulate by default).
    on_violation : {"reflect", "kill"}
        What the VMM does when the guest touches a guest-physical address
        beyond its memory: ``"reflect"`` a machine check into the guest (what
        bare hardware of that size does — nothing is there), or ``"kill"`` it.
        Either way the host is never touched and ``stats.violations`` counts it.
    handlers : HandlerTable, optional
        This VM's handler table (default: the hypervisor's).

    Examples
    --------
    >>> vm = VM("db", memory_pages=4, vcpus=2, technique="pv")
    >>> vm
    VM('db', defined, 4 pages, 2 vCPUs, paravirtualization)
    >>> VM("db", memory_pages=0)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: memory_pages must be a positive int, not 0
    """

    def __init__(self, name: str, memory_pages: int, vcpus: int = 1, *,
                 devices: Iterable[str] = DEVICE_NAMES, program: str | Program | None = None,
                 technique: Technique | str = Technique.TRAP_AND_EMULATE,
                 on_violation: str = "reflect", handlers: HandlerTable | None = None) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigurationError(f"a VM needs a non-empty name without spaces, not {name!r}")
        if isinstance(memory_pages, bool) or not isinstance(memory_pages, int) or memory_pages < 1:
            raise ConfigurationError(f"memory_pages must be a positive int, not {memory_pages!r}")
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 16:
            raise ConfigurationError(f"vcpus must be an int from 1 to 16, not {vcpus!r}")
        devs = tuple(devices)
        for d in devs:
            if d not in DEVICE_NAMES:
                raise ConfigurationError(
                    f"unknown virtual device {d!r}; choose from {DEVICE_NAMES}")
        if on_violation not in ("reflect", "kill"):
            raise ConfigurationError(
                f"on_violation must be 'reflect' or 'kill', not {on_violation!r}")
        if handlers is not None and not isinstance(handlers, HandlerTable):
            handlers = HandlerTable(handlers)
        self.name = name
        self.memory_pages = memory_pages
        self.devices = devs
        self.program: Program | None = (assemble(program) if isinstance(program, str)
                                        else program)
        self.technique = Technique.parse(technique)
        self.on_violation = on_violation
        self.handlers = handlers
        self.state = VMState.DEFINED
        self.host: Hypervisor | None = None
        self.vcpus = [VCPU(self, i) for i in range(vcpus)]
        self.mem: GuestMemory | None = None
        self.vmcs: VMCS | None = None
        self.clock = 0  # virtual time: the guest's own ticks (instructions + idle time skipped)
        self.idle = 0  # ticks of that spent halted
        self.stats = VMStats()
        self.tcache = TranslationCache()  # binary translation: the translated kernel blocks
        self.violations: list[tuple[int, int]] = []  # (pc, address), the first few
        self._final_memory: list[int] | None = None
        self._injected: int | None = None  # hardware assist: IRQ line injected, not yet acked
        self.irq = InterruptController()
        self.bus = Bus(self.irq, None)
        self.reset_devices()

    # -- devices ---------------------------------------------------------------------------
    def reset_devices(self) -> None:
        """Fresh virtual devices (at boot)."""
        self.irq = InterruptController()
        self.bus = Bus(self.irq, None)
        if "serial" in self.devices:
            self.bus.attach(Serial())
        if "timer" in self.devices:
            self.bus.attach(Timer())

    def port_in(self, port: int) -> int:
        """An ``in`` from the VM's virtual port ``port`` (unowned ports float high)."""
        self.bus.now = self.clock
        return self.bus.port_in(port)

    def port_out(self, port: int, value: int) -> None:
        """An ``out`` to the VM's virtual port ``port``."""
        self.bus.now = self.clock
        self.bus.port_out(port, value)

    def console_write(self, byte: int) -> None:
        """Write one byte to the VM's console (its virtual serial port)."""
        self.port_out(0x3F8, byte & 0xFF)

    def set_timer(self, period: int) -> None:
        """Program the virtual timer (0 stops it)."""
        self.port_out(0x40, period)

    @property
    def serial(self) -> Serial:
        """The VM's own serial port."""
        return self.bus["serial"]  # type: ignore[return-value]

    @property
    def console(self) -> str:
        """Everything the guest wrote to its serial port."""
        return self.serial.text if "serial" in self.devices else ""

    # -- memory -------------------------------------------------------------------------------
    @property
    def memory_size(self) -> int | None:
        """Guest memory in bytes (None until a host gives pages a size)."""
        if self.mem is not None:
            return self.memory_pages << self.mem.page_bits
        if self.host is not None:
            return self.memory_pages * self.host.memory.frame_size
        return None

    @property
    def p2m(self) -> list[int]:
        """Guest frame → host frame (empty while the VM holds no memory)."""
        return list(self.mem.p2m) if self.mem is not None else []

    def contains(self, gpa: int) -> bool:
        """Whether ``gpa`` is inside the guest's memory."""
        size = self.memory_size
        return size is not None and 0 <= gpa < size

    def _mem(self) -> GuestMemory:
        if self.mem is None:
            raise VMMError(f"VM {self.name!r} holds no memory (state {self.state.value})")
        return self.mem

    def hpa(self, gpa: int) -> int:
        """The host-physical address behind guest-physical ``gpa``.

        Raises AddressError outside the guest's memory (a host-side mistake:
        guest accesses never raise, they are violations).
        """
        if not self.contains(gpa):
            raise AddressError(f"guest-physical {gpa:#x} is outside VM {self.name!r}'s memory")
        return self._mem().hpa(gpa)

    def read_word(self, gpa: int) -> int:
        """The guest word at guest-physical ``gpa``."""
        return self._mem().memory.read_word(self.hpa(gpa))

    def write_word(self, gpa: int, value: int) -> None:
        """Store a word at guest-physical ``gpa`` (and log the page dirty, for migration)."""
        mem = self._mem()
        mem.memory.write_word(self.hpa(gpa), value)
        mem.soft_dirty.add(gpa >> mem.page_bits)

    def load(self, program: Program) -> None:
        """Copy ``program`` into guest memory at its origin."""
        mem = self._mem()
        size = self.memory_size or 0
        if program.origin < 0 or program.end > size:
            raise VMMError(f"the image {program.origin:#x}..{program.end:#x} does not fit in"
                           f" VM {self.name!r}'s {size} bytes")
        page = 1 << mem.page_bits
        addr = program.origin
        words = program.words
        i = 0
        while i < len(words):
            room = (page - (addr & (page - 1))) >> 2
            chunk = words[i:i + room]
            mem.memory.load_words(self.hpa(addr), chunk)
            addr += 4 * len(chunk)
            i += len(chunk)

    def memory_words(self) -> list[int]:
        """The guest's memory as words, guest-physical address order.

        While the VM holds memory this reads it through the P2M; afterwards,
        the image kept when it shut off or crashed.  (Binary translation
        never changes guest memory: its translations live in the VMM's
        translation cache.)
        """
        if self.mem is None:
            if self._final_memory is None:
                raise VMMError(f"VM {self.name!r} has never had memory")
            return list(self._final_memory)
        mem = self.mem
        words = mem.memory.words
        per = 1 << (mem.page_bits - 2)
        out: list[int] = []
        for frame in mem.p2m:
            start = (frame << mem.page_bits) >> 2
            out.extend(words[start:start + per])
        return out

    def violation(self, vcpu: VCPU, address: int) -> Action:
        """The guest touched ``address``, outside its memory: count it and apply the policy."""
        self.stats.violations += 1
        if len(self.violations) < _VIOLATIONS_KEPT:
            self.violations.append((vcpu.pc, address & MASK32))
        if self.on_violation == "kill":
            vcpu.finish(f"killed: touched {address & MASK32:#x}, outside its"
                        f" {self.memory_size} bytes", crashed=True)
            return Action.CRASH
        self.stats.reflected += 1
        return vcpu.reflect(TrapCause.MACHINE_CHECK, address & MASK32)

    # -- status ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when no vCPU can run any more."""
        return all(v.done is not None for v in self.vcpus)

    @property
    def reason(self) -> str:
        """Why the guest stopped (vCPU 0's reason; "" while it runs)."""
        return self.vcpus[0].done or ""

    def __repr__(self) -> str:
        n = len(self.vcpus)
        return (f"VM({self.name!r}, {self.state.value}, {self.memory_pages} pages,"
                f" {n} vCPU{'s' if n != 1 else ''}, {self.technique.value})")

"""The hypervisor (VMM): runs VMs on a host machine, keeps control, offers a management API.

Its two basic duties (S1.3):

(a) **recognise, capture and respond to privileged instructions** — the
    guest kernel runs deprivileged (the real CPU in user mode, ``TVEC = 0``
    so every trap comes back to this Python code), confined to its memory
    by the relocation map (:mod:`virtcore.vmm.vm`).  Each trap goes through
    :meth:`Hypervisor._handle`: *check where it came from* (the guest, never
    the host kernel), *dispatch* on the instruction through the handler
    table (:mod:`virtcore.vmm.handlers`), whose handler *emulates* it on the
    vCPU's virtual state and *advances pc by 4*.  With hardware assist the
    guest runs in guest mode instead and the events are VM exits.
(b) **schedule the VMs and return results to the right VM** — running VMs
    share the host CPU round-robin, one quantum (in guest instructions) at
    a time (S2.3); each VM's devices are its own, so its console output is
    its own.  Simplification: preemption is by instruction count — the
    quantum stands in for the host timer interrupt a real VMM would use —
    so the host's real timer is never programmed.

Time: every VM has a *virtual clock* — the ticks its vCPUs executed plus
idle time skipped while halted — which drives its virtual timer.
Simplification: a halted VM's clock jumps straight to its next timer
deadline (the guest sees the same time as on bare hardware; real
hypervisors tie guest time to host time).  The host's clock counts guest
ticks executed on it.

>>> hv = Hypervisor()
>>> a = hv.create("a", 1, program="movi r1, 'a'\\nout 0x3f8, r1\\nhlt")
>>> b = hv.create("b", 1, program="movi r1, 'b'\\nout 0x3f8, r1\\nhlt")
>>> hv.run()
RunSummary(host0: 6 steps in 2 slices; a shutoff, b shutoff)
>>> a.console, b.console
('a', 'b')
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.hw.cpu import VMCS, CPUState, StopReason
from virtcore.hw.events import ExitReason, Privilege, Trap, TrapCause, VMExit
from virtcore.hw.isa import CR, CR0_PG, FLAG_IF, ISA
from virtcore.hw.machine import Machine
from virtcore.hw.memory import FrameAllocator, OutOfFramesError
from virtcore.hw.paging import MMU
from virtcore.vmm.handlers import Action, HandlerTable, Insn
from virtcore.vmm.lifecycle import EventLog, VMState, next_state
from virtcore.vmm.vm import STACK_GAP, VCPU, VM, GuestMemory, Technique, VMMError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from virtcore.vmm.migration import MigrationResult

__all__ = ["Hypervisor", "Manager", "RunSummary", "Slice", "UnknownVMError", "VMInfo"]

_RUNNABLE = (VMState.RUNNING, VMState.MIGRATING)
_INSTRUCTION_EXITS = (ExitReason.HLT, ExitReason.IO_INSTRUCTION, ExitReason.VMCALL,
                      ExitReason.CR_ACCESS, ExitReason.INVLPG)
_EMULATED_TRAPS = (TrapCause.GENERAL_PROTECTION, TrapCause.SYSCALL, TrapCause.HYPERCALL)


class UnknownVMError(VirtcoreError, KeyError):
    """No VM of that name on this host (or manager).

    >>> str(UnknownVMError("no VM named 'x'"))
    "no VM named 'x'"
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown VM"


class Slice(NamedTuple):
    """One turn of a vCPU on the host CPU: when, whose, how long, how it ended.

    >>> print(Slice(500, "web", 0, 500, "preempted"))
    t=500     web/0 ran   500  preempted
    """

    start: int
    vm: str
    vcpu: int
    steps: int
    outcome: str  # "preempted", "waiting", or the vCPU's final reason

    def __str__(self) -> str:
        return f"t={self.start:<7d} {self.vm}/{self.vcpu} ran {self.steps:5d}  {self.outcome}"


@dataclass(frozen=True)
class RunSummary:
    """What :meth:`Hypervisor.run` did: steps, the slices (for a Gantt chart), final states.

    >>> hv = Hypervisor(quantum=10); _ = hv.create("spin", 1, program="l: jmp l")
    >>> s = hv.run(25); s.steps, [x.steps for x in s.slices], s.states["spin"].value
    (25, [10, 10, 5], 'running')
    """

    host: str
    steps: int
    slices: tuple[Slice, ...]
    states: dict[str, VMState]

    def __repr__(self) -> str:
        states = ", ".join(f"{k} {v.value}" for k, v in self.states.items())
        return (f"RunSummary({self.host}: {self.steps} steps in {len(self.slices)} slices;"
                f" {states})")


class VMInfo(NamedTuple):
    """One row of :meth:`Hypervisor.list` (like ``xl list``: name, memory, vCPUs, state, time).

    >>> hv = Hypervisor(); _ = hv.define("web", 4)
    >>> hv.list()[0].state, hv.list()[0].memory_pages
    (<VMState.DEFINED: 'defined'>, 4)
    """

    name: str
    host: str
    state: VMState
    memory_pages: int
    vcpus: int
    technique: str
    time: int  # the VM's virtual clock

    def __str__(self) -> str:
        return (f"{self.name:<12s} {self.host:<8s} {self.memory_pages:>5d} {self.vcpus:>5d}"
                f"  {self.state.value:<10s} {self.time:>9d}  {self.technique}")


def format_list(rows: Iterable[VMInfo]) -> str:
    """The rows as an ``xl list``-like table.

    >>> print(format_list([VMInfo("web", "host0", VMState.RUNNING, 4, 1, "hardware assist", 10)]))
    Name         Host       Mem VCPUs  State           Time  Technique
    web          host0        4     1  running           10  hardware assist
    """
    head = (f"{'Name':<12s} {'Host':<8s} {'Mem':>5s} {'VCPUs':>5s}  {'State':<10s}"
            f" {'Time':>9s}  Technique")
    return "\n".join([head, *(str(r) for r in rows)])


class _Tracking:
    """A frame source that remembers what it handed out (the VMM's page-table frames)."""

    def __init__(self, allocator: FrameAllocator) -> None:
        self.allocator = allocator
        self.frames: list[int] = []

    def alloc(self) -> int:
        frame = self.allocator.alloc()
        self.frames.append(frame)
        return frame


class Hypervisor:
    """A VMM on one host :class:`~virtcore.hw.Machine`.

    Parameters
    ----------
    machine : Machine, optional
        The host; default a 256 KiB machine (64 frames of 4 KiB).  Frame 0
        is kept for the hypervisor itself.
    name : str
        The host's name (in logs and listings).
    quantum : int
        Guest instructions per scheduling slice (round-robin).
    handlers : HandlerTable, optional
        The handler table for VMs that bring none (default: the reference table).
    events : EventLog, optional
        Where management events go (a :class:`Manager` shares one log among hosts).

    Attributes
    ----------
    machine, cpu, memory, allocator, vms, events, clock, slices

    Examples
    --------
    >>> hv = Hypervisor(name="h1", quantum=50)
    >>> vm = hv.define("web", 2, program="loop: jmp loop")
    >>> hv.start("web").state.name
    'RUNNING'
    >>> hv.pause("web").state.name, hv.run(1000).steps
    ('PAUSED', 0)
    >>> _ = hv.resume("web"); hv.run(120).steps
    120
    >>> [s.steps for s in hv.slices]
    [50, 50, 20]
    """

    def __init__(self, machine: Machine | None = None, *, name: str = "host0",
                 quantum: int = 500, handlers: HandlerTable | None = None,
                 events: EventLog | None = None) -> None:
        if isinstance(quantum, bool) or not isinstance(quantum, int) or quantum < 1:
            raise ConfigurationError(f"quantum must be a positive int, not {quantum!r}")
        self.machine = machine if machine is not None else Machine(memory_size=256 * 1024)
        self.name = name
        self.cpu = self.machine.cpu
        self.memory = self.machine.memory
        self.allocator = FrameAllocator(self.memory, reserved=[0])
        self.quantum = quantum
        self.handlers = handlers if handlers is not None else HandlerTable.reference()
        self.events = events if events is not None else EventLog()
        self.vms: dict[str, VM] = {}
        self.clock = 0
        self.slices: deque[Slice] = deque(maxlen=10_000)
        self._on_cpu: VCPU | None = None

    def __repr__(self) -> str:
        live = sum(1 for vm in self.vms.values() if vm.state is not VMState.UNDEFINED)
        return (f"Hypervisor({self.name}: {live} VMs, {self.allocator.free_count} free frames,"
                f" clock {self.clock})")

    # ------------------------------------------------------------------------------
    # management interface (S2.4)
    def define(self, vm: VM | str, memory_pages: int | None = None, vcpus: int = 1,
               **options: object) -> VM:
        """Register a VM (a :class:`VM`, or a name plus :class:`VM`'s parameters); no memory yet.

        >>> Hypervisor().define("web", 4, technique="bt")
        VM('web', defined, 4 pages, 1 vCPU, binary translation)
        """
        if isinstance(vm, str):
            if memory_pages is None:
                raise ConfigurationError("define(name, memory_pages, ...) needs memory_pages")
            vm = VM(vm, memory_pages, vcpus, **options)  # type: ignore[arg-type]
        old = self.vms.get(vm.name)
        if old is not None and old.state is not VMState.UNDEFINED:
            raise ConfigurationError(f"a VM named {vm.name!r} already exists on {self.name}")
        if vm.host is not None and vm.host is not self:
            raise ConfigurationError(f"VM {vm.name!r} belongs to host {vm.host.name}")
        cfg = self.machine.mmu.config
        if vm.memory_pages * cfg.page_size > cfg.va_limit:
            raise ConfigurationError(f"{vm.memory_pages} pages do not fit in the host's"
                                     f" {cfg.va_bits}-bit guest address space")
        vm.host = self
        self.vms[vm.name] = vm
        self._log(vm, "define", detail=f"{vm.memory_pages} pages, {len(vm.vcpus)} vCPU,"
                                       f" {vm.technique.value}")
        return vm

    def create(self, name: str, memory_pages: int, vcpus: int = 1, **options: object) -> VM:
        """Define and start in one call (``xl create``)."""
        vm = self.define(name, memory_pages, vcpus, **options)
        return self.start(vm.name)

    def vm(self, name: str) -> VM:
        """The VM called ``name``; raises :class:`UnknownVMError`."""
        try:
            return self.vms[name]
        except KeyError:
            raise UnknownVMError(f"no VM named {name!r} on host {self.name}") from None

    def start(self, name: str) -> VM:
        """Boot the VM: allocate its memory, build its map, load its image, reset its vCPUs."""
        vm = self.vm(name)
        next_state(vm.state, "start", vm=vm.name)  # check before allocating
        self._release(vm, keep_image=False)
        self._boot(vm)
        self._transition(vm, "start", detail=f"frames {_ranges(vm.p2m)}")
        return vm

    def pause(self, name: str) -> VM:
        """Stop scheduling the VM; it keeps its memory (``xl pause``)."""
        vm = self.vm(name)
        self._transition(vm, "pause")
        return vm

    def resume(self, name: str) -> VM:
        """Schedule the VM again (``xl unpause``)."""
        vm = self.vm(name)
        self._transition(vm, "resume")
        return vm

    def shutdown(self, name: str) -> VM:
        """Power the VM off.

        Simplified: immediate, without the guest's cooperation (``xl
        shutdown`` asks the guest OS; this is closer to pressing the power
        button on a guest that obeys at once).  Its memory goes back to the
        host; the last image is kept for inspection.
        """
        vm = self.vm(name)
        self._transition(vm, "shutdown")
        self._release(vm, keep_image=True)
        return vm

    def destroy(self, name: str) -> VM:
        """Force the VM off at once (``virsh destroy``, ``xl destroy``: no chance for the guest
        to react) [VIRSH, XL-1].

        Its memory goes back to the host (the last image is kept for
        inspection); the VM stays *defined* (SHUTOFF) and can be started
        again.  Removing the definition is :meth:`undefine`.
        """
        vm = self.vm(name)
        self._transition(vm, "destroy")
        self._release(vm, keep_image=True)
        return vm

    def undefine(self, name: str) -> VM:
        """Remove the definition of a VM that is not running (``virsh undefine``) [VIRSH].

        >>> hv = Hypervisor(); _ = hv.define("tmp", 1); hv.undefine("tmp").state.value
        'undefined'
        """
        vm = self.vm(name)
        self._transition(vm, "undefine")
        return vm

    def migrate(self, name: str, target: Hypervisor, **options: object) -> MigrationResult:
        """Move a VM to ``target``: live if it runs, paused if paused, offline if inactive.

        See :func:`~virtcore.vmm.migration.migrate` (and
        :func:`~virtcore.vmm.migration.live_migrate` for the options of a live
        migration).
        """
        from virtcore.vmm.migration import migrate

        return migrate(self, self.vm(name), target, **options)

    def list(self, *, all: bool = False) -> list[VMInfo]:
        """One :class:`VMInfo` per VM (undefined ones only with ``all=True``)."""
        return [VMInfo(vm.name, self.name, vm.state, vm.memory_pages, len(vm.vcpus),
                       vm.technique.value, vm.clock)
                for vm in self.vms.values() if all or vm.state is not VMState.UNDEFINED]

    def table(self) -> str:
        """:meth:`list` as an ``xl list``-like table."""
        return format_list(self.list())

    def _transition(self, vm: VM, op: str, detail: str = "") -> None:
        old = vm.state
        vm.state = next_state(old, op, vm=vm.name)
        self._log(vm, op, old, vm.state, detail)

    def _log(self, vm: VM, op: str, old: VMState | None = None, new: VMState | None = None,
             detail: str = "") -> None:
        self.events.record(self.name, vm.name, op, old, new, time=self.clock, detail=detail)

    # ------------------------------------------------------------------------------
    # memory: P2M, relocation map / EPT
    def build_memory(self, vm: VM) -> GuestMemory:
        """Allocate host frames for ``vm`` and build its guest-physical → host map.

        Raises VMMError when the host has too few free frames (nothing is kept).
        """
        cfg = self.machine.mmu.config
        bits = cfg.page_bits
        tracker = _Tracking(self.allocator)
        frames: list[int] = []
        try:
            for _ in range(vm.memory_pages):
                frames.append(self.allocator.alloc())
            table = MMU(self.memory, cfg, tlb_size=0)
            table.set_root(table.alloc_table(tracker))
            for page, frame in enumerate(frames):
                table.map(page << bits, frame << bits, writable=True, user=True,
                          allocator=tracker)
        except OutOfFramesError:
            for f in frames + tracker.frames:
                self.allocator.free(f)
            raise VMMError(f"host {self.name} has too few free frames for VM {vm.name!r}"
                           f" ({vm.memory_pages} pages plus its page tables;"
                           f" {self.allocator.free_count + len(frames) + len(tracker.frames)}"
                           " free)") from None
        table.enabled = True  # used as the EPT with hardware assist; harmless otherwise
        leaves = []
        for page in range(len(frames)):
            walk = table.walk(page << bits)
            leaves.append(walk.steps[-1].entry_paddr)
        return GuestMemory(self.memory, frames, table, tracker.frames, leaves, bits)

    def attach_memory(self, vm: VM, mem: GuestMemory) -> None:
        """Make ``mem`` the VM's memory on this host (and its EPT, with hardware assist)."""
        vm.mem = mem
        if vm.technique is Technique.HARDWARE_ASSIST:
            inject = vm.vmcs.inject if vm.vmcs is not None else None
            # Guest CR accesses, invlpg and exceptions stay in the guest: with EPT
            # the VMM needs only HLT, I/O, VMCALL and EPT violations.
            vm.vmcs = VMCS(cr_exiting=set(), ept=mem.table, inject=inject)
        else:
            vm.vmcs = None
        if self._on_cpu is not None and self._on_cpu.vm is vm:
            self._on_cpu = None

    def free_memory(self, mem: GuestMemory) -> None:
        """Give a VM's frames (and its page-table frames) back to the host."""
        for f in mem.p2m + mem.vmm_frames:
            self.allocator.free(f)

    def _boot(self, vm: VM) -> None:
        self.attach_memory(vm, self.build_memory(vm))
        vm.reset_devices()
        vm.clock = vm.idle = 0
        vm.stats = type(vm.stats)()
        vm.tcache.clear()
        vm.violations = []
        vm._final_memory = None
        vm._injected = None
        entry = 0
        if vm.program is not None:
            vm.load(vm.program)
            entry = vm.program.origin
        top = vm.memory_size or 0
        for vcpu in vm.vcpus:
            vcpu.reset(entry, top - STACK_GAP * vcpu.index)

    def _release(self, vm: VM, *, keep_image: bool) -> None:
        if vm.mem is None:
            return
        if keep_image:
            vm._final_memory = vm.memory_words()
        self.free_memory(vm.mem)
        vm.mem = None
        if self._on_cpu is not None and self._on_cpu.vm is vm:
            self._on_cpu = None

    # ------------------------------------------------------------------------------
    # scheduling (S2.3): round-robin over the runnable vCPUs
    def run(self, max_steps: int = 100_000) -> RunSummary:
        """Run the VMs round-robin until none can run or ``max_steps`` guest instructions ran.

        Returns
        -------
        RunSummary
        """
        if max_steps < 0:
            raise ConfigurationError("max_steps must be >= 0")
        used = 0
        slices: list[Slice] = []
        while used < max_steps:
            runnable = [v for vm in self.vms.values() if vm.state in _RUNNABLE
                        for v in vm.vcpus if v.done is None]
            if not runnable:
                break
            for vcpu in runnable:
                vm = vcpu.vm
                if used >= max_steps:
                    break
                if vcpu.done is not None or vm.state not in _RUNNABLE or vm.host is not self:
                    continue
                start = self.clock
                n = self._run_vcpu(vcpu, min(self.quantum, max_steps - used))
                used += n
                self.clock += n
                outcome = vcpu.done or ("waiting" if vcpu.halted else "preempted")
                s = Slice(start, vm.name, vcpu.index, n, outcome)
                slices.append(s)
                self.slices.append(s)
                self._settle(vm)
        states = {name: vm.state for name, vm in self.vms.items()}
        return RunSummary(self.name, used, tuple(slices), states)

    def _settle(self, vm: VM) -> None:
        """A running VM whose vCPUs all stopped: shut off (clean) or crashed."""
        if vm.state is not VMState.RUNNING or not vm.finished:
            return
        crashed = [v for v in vm.vcpus if v.crashed]
        if crashed:
            self._transition(vm, "guest-crash", detail=crashed[0].done or "")
        else:
            self._transition(vm, "guest-halt", detail=vm.vcpus[0].done or "")
        self._release(vm, keep_image=True)

    # ------------------------------------------------------------------------------
    # running one vCPU
    def _run_vcpu(self, vcpu: VCPU, budget: int) -> int:
        """Run ``vcpu`` for up to ``budget`` guest instructions; returns how many it used."""
        vm = vcpu.vm
        stats = vm.stats
        cpu = self.cpu
        hw = vm.technique is Technique.HARDWARE_ASSIST
        bt = vm.technique is Technique.BINARY_TRANSLATION
        irq = vm.irq
        used = 0
        while vcpu.done is None:
            self._interrupts(vcpu, hw)
            if vcpu.done is not None:
                break
            if vcpu.halted:
                if self._wait(vcpu):
                    continue
                break
            if used >= budget:
                break
            limit = budget - used
            if bt and vcpu.mode is Privilege.KERNEL:
                run, translated = self._translated(vcpu)
                if translated is not None:  # a translated sensitive instruction: no trap
                    vm.clock += 1
                    used += 1
                    self._dispatch(vcpu, translated)
                    continue
                limit = min(limit, run)
            deadline = vm.bus.next_deadline()
            if deadline is not None:
                limit = min(limit, max(1, deadline - vm.clock))
            if hw and vm._injected is not None and irq.pending & ~irq.mask & ~(1 << vm._injected):
                limit = 1  # another interrupt waits behind the injected one: re-check each step
            self._enter(vcpu, hw)
            result = cpu.run(limit)
            self._leave(vcpu, hw)
            n = result.steps
            vm.clock += n
            used += n
            stats.direct += n
            if result.reason is StopReason.BUDGET:
                continue
            if result.reason is StopReason.HALTED:
                raise VMMError(f"the host CPU halted while running {vm.name!r}: the VMM lost"
                               " control (a privileged instruction did not trap)")
            event = result.event
            assert event is not None
            if not _asynchronous(event):
                vm.clock += 1  # the trapping / exiting instruction's tick
                used += 1
            if n == 0 and event.pc == vcpu._last_trap_pc:
                vcpu.repeats += 1
                if vcpu.repeats > vcpu.worst_repeats[0]:
                    vcpu.worst_repeats = (vcpu.repeats, event.pc)
            else:
                vcpu.repeats = 0
            vcpu._last_trap_pc = event.pc
            self._handle(vcpu, event, hw)
        return used

    def _interrupts(self, vcpu: VCPU, hw: bool) -> None:
        """Bring the VM's devices up to its clock and deliver a pending virtual interrupt."""
        vm = vcpu.vm
        irq = vm.irq
        if hw and vm._injected is not None and vm.vmcs is not None and vm.vmcs.inject is None:
            irq.acknowledge()  # the CPU took the injected interrupt since the last entry
            vm._injected = None
            vm.stats.interrupts += 1
        vm.bus.advance(vm.clock)
        if vcpu.index != 0 or not irq.pending & ~irq.mask:
            return
        if hw:
            # VM-entry interruption information: the CPU delivers it as soon as the
            # guest's IF allows; the line stays pending in the virtual PIC until then.
            line = irq.highest_pending()
            assert line is not None
            assert vm.vmcs is not None
            vm.vmcs.inject = TrapCause.for_irq(line)
            vm._injected = line
            if vcpu.interrupts_enabled:
                vcpu.halted = False
            return
        if not vcpu.interrupts_enabled:
            return
        line = irq.acknowledge()
        if line is None:
            return
        vm.stats.interrupts += 1
        vcpu.halted = False
        vcpu.reflect(TrapCause.for_irq(line))

    def _wait(self, vcpu: VCPU) -> bool:
        """A halted vCPU: skip to its next timer deadline (True), or stop for good (False)."""
        vm = vcpu.vm
        deadline = vm.bus.next_deadline()
        if vcpu.index == 0 and vcpu.interrupts_enabled and deadline is not None:
            if deadline > vm.clock:
                vm.idle += deadline - vm.clock
                vm.clock = deadline
            return True
        vcpu.finish("halted")
        return False

    def _enter(self, vcpu: VCPU, hw: bool) -> None:
        """Put ``vcpu`` on the host CPU (a full load only when another vCPU was there)."""
        cpu = self.cpu
        vm = vcpu.vm
        if self._on_cpu is not vcpu:
            if cpu.guest_mode:
                cpu.leave_guest()
            if hw:
                assert vm.vmcs is not None
                cpu.load_state(CPUState(tuple(vcpu.regs), vcpu.pc, vcpu.flags, vcpu.mode,
                                        {int(k): v for k, v in vcpu.crs.items()}, False))
                cpu.enter_guest(vm.vmcs)
            else:
                assert vm.mem is not None
                crs = {int(c): 0 for c in CR}
                crs[CR.CR0] = CR0_PG
                crs[CR.CR3] = vm.mem.table.root
                # deprivileged: user mode, TVEC = 0 (traps come to us), the real IF on
                cpu.load_state(CPUState(tuple(vcpu.regs), vcpu.pc, _real_flags(vcpu),
                                        Privilege.USER, crs, False))
            self._on_cpu = vcpu
            return
        cpu.regs[:] = vcpu.regs
        cpu.pc = vcpu.pc
        cpu.halted = False
        if hw:
            cpu.flags = vcpu.flags
            cpu.mode = vcpu.mode
            crs = cpu.crs
            for k, v in vcpu.crs.items():
                if crs[k] != v:
                    cpu.write_cr(CR(k), v)
        else:
            cpu.flags = _real_flags(vcpu)

    def _leave(self, vcpu: VCPU, hw: bool) -> None:
        """Copy the host CPU's state back into ``vcpu`` (it stays loaded)."""
        cpu = self.cpu
        vcpu.regs[:] = cpu.regs
        vcpu.pc = cpu.pc
        if hw:
            vcpu.flags = cpu.flags
            vcpu.mode = cpu.mode
            crs = vcpu.crs
            for k, v in cpu.crs.items():
                crs[k] = v  # type: ignore[index]  # int keys equal the CR members
        else:
            vcpu.flags = (cpu.flags & ~FLAG_IF) | (vcpu.flags & FLAG_IF)

    # ------------------------------------------------------------------------------
    # the trap handler: check where it came from, dispatch, emulate
    def _handle(self, vcpu: VCPU, event: Trap | VMExit, hw: bool) -> None:
        vm = vcpu.vm
        stats = vm.stats
        if isinstance(event, VMExit):
            stats.exits += 1
            stats.by_exit[event.reason.name] += 1
            reason = event.reason
            if reason in _INSTRUCTION_EXITS:
                self._dispatch(vcpu, self._fetch(vcpu, event.pc, hw))
            elif reason is ExitReason.EPT_VIOLATION:
                gpa = int(event.qualification["gpa"])  # type: ignore[call-overload]
                if vm.mem is not None and vm.mem.log_write_fault(gpa):
                    self.cpu.flush_tlb()  # the retried write must see the writable entry
                    vm.clock -= 1  # the write did not complete: it runs again
                else:
                    vm.violation(vcpu, gpa)
            elif reason is ExitReason.EXCEPTION_NMI:
                stats.reflected += 1
                vector = int(event.qualification["vector"])  # type: ignore[call-overload]
                vcpu.reflect(TrapCause(vector), event.qualification.get("address"))  # type: ignore[arg-type]
            elif reason is not ExitReason.EXTERNAL_INTERRUPT:  # a host interrupt: nothing to do
                raise VMMError(f"{event}: no handling for this exit")
            return
        trap = event
        if hw:
            # in guest mode a trap reaches the VMM only when the guest has no handler (TVEC = 0)
            vcpu.finish(f"trap {trap.cause.name}", trap, crashed=True)
            return
        if trap.cause.is_interrupt:
            return  # a host interrupt while the guest ran: not the guest's business
        stats.traps += 1
        # check where it came from: a deprivileged guest runs in the real user mode
        if trap.mode is not Privilege.USER:
            raise VMMError(f"{trap} came from the host's kernel mode: the VMM itself faulted")
        cause = trap.cause
        if cause in _EMULATED_TRAPS:
            self._dispatch(vcpu, self._fetch(vcpu, trap.pc, hw))
        elif cause is TrapCause.PAGE_FAULT:
            address = trap.address if trap.address is not None else trap.pc
            if vm.mem is not None and vm.contains(address) and vm.mem.log_write_fault(address):
                self.cpu.flush_tlb()  # dirty logging: the page is writable again; retry
                vm.clock -= 1  # the write did not complete: it runs again (its tick then)
                return
            if vm.contains(address):
                raise VMMError(f"{trap}: the relocation map of {vm.name!r} is broken")
            vm.violation(vcpu, address)
        else:
            stats.reflected += 1
            vcpu.reflect(cause, trap.address)

    def _translated(self, vcpu: VCPU) -> tuple[int, Insn | None]:
        """Binary translation, virtual kernel mode: look ``vcpu.pc`` up in the translation cache.

        Returns ``(n, None)``: the next ``n`` instructions are translated
        identically (the caller runs them on the CPU); or ``(0, insn)``: a
        sensitive instruction whose translation the caller performs on the
        virtual CPU — inline or as a callout, with no trap [BUG12, AA06].
        """
        vm = vcpu.vm
        stats = vm.stats
        pc = vcpu.pc
        if not vm.contains(pc) or not vm.contains(pc + 3):
            return 1, None  # let the CPU fetch it and fault, as the guest would
        tc = vm.tcache
        block = tc.lookup(vm.read_word, pc)
        stats.blocks_translated = tc.blocks_translated
        stats.translated = tc.instructions_translated
        stats.tc_hits = tc.hits
        if not len(block):
            return 1, None  # no instruction here: the CPU raises #UD for the guest
        action = block.action(pc)
        if action == "identical":
            return block.identical_run(pc), None
        if action == "callout":
            stats.callouts += 1
        else:
            stats.translated_ops += 1
        return 0, Insn.decode(vm.read_word(pc), pc)

    def _fetch(self, vcpu: VCPU, pc: int, hw: bool) -> Insn:
        """Decode the guest instruction at ``pc`` (through guest paging, if the guest has any)."""
        if hw and self.cpu.mmu.enabled:
            walk = self.cpu.mmu.walk(pc)
            if walk.paddr is None:
                raise VMMError(f"cannot read the instruction at guest pc {pc:#x}: {walk.fault}")
            return Insn.decode(self.memory.read_word(walk.paddr), pc)
        return Insn.decode(vcpu.vm.read_word(pc), pc)

    def _dispatch(self, vcpu: VCPU, insn: Insn) -> None:
        """Run the handler for ``insn`` (or reflect it, if the guest was in its user mode)."""
        vm = vcpu.vm
        stats = vm.stats
        name = insn.mnemonic
        privileged = ISA[name].privileged
        if vcpu.mode is Privilege.USER and (privileged or name == "hcall"):
            # what bare hardware does: the guest kernel gets the #GP (or the hypercall trap)
            stats.reflected += 1
            vcpu.reflect(TrapCause.GENERAL_PROTECTION if privileged else TrapCause.HYPERCALL)
            return
        table = vm.handlers if vm.handlers is not None else self.handlers
        handler = table.get(name)
        if handler is None:
            vcpu.crash(f"no handler for {name!r} in the VMM's handler table (pc={insn.pc:#x})")
            return
        stats.emulated += 1
        stats.by_instruction[name] += 1
        action = handler(vcpu, insn)
        if vcpu.done is not None or action is None or action is Action.CONTINUE:
            return
        if action is Action.HALT:
            vcpu.halted = True
        elif action is Action.SHUTDOWN:
            vcpu.finish("shutdown")
        elif action is Action.CRASH:
            vcpu.finish(f"crashed: the {name} handler gave up", crashed=True)
        else:
            raise VMMError(f"the handler for {name!r} returned {action!r}, not an Action")


def _real_flags(vcpu: VCPU) -> int:
    """The real FLAGS while a deprivileged vCPU runs: the real IF is on.

    Except for guest *user* code under binary translation, which runs
    directly with the real IF equal to its virtual IF, so that a user-mode
    ``pushf`` reads what it would on bare hardware.  (A real binary
    translator runs user code with interrupts on, as every real kernel runs
    its user code; this model's host takes no interrupts of its own while a
    guest runs, so nothing is lost.)
    """
    if vcpu.vm.technique is Technique.BINARY_TRANSLATION and vcpu.mode is Privilege.USER:
        return vcpu.flags
    return vcpu.flags | FLAG_IF


def _asynchronous(event: Trap | VMExit) -> bool:
    """Interrupts take no instruction tick; traps and instruction exits do."""
    if isinstance(event, VMExit):
        return event.reason is ExitReason.EXTERNAL_INTERRUPT
    return event.cause.is_interrupt


def _ranges(frames: list[int]) -> str:
    """Frame numbers as compact ranges, e.g. ``1-4,9``."""
    out: list[str] = []
    start = prev = None
    for f in frames:
        if start is None:
            start = prev = f
        elif f == prev + 1:  # type: ignore[operator]
            prev = f
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = f
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)


class Manager:
    """A management toolstack over several hosts: the API a user interface sits on (S2.4).

    VM names are unique across hosts; every operation takes a name, and all
    hosts write to one :class:`EventLog`.

    Parameters
    ----------
    hosts : int or iterable of Hypervisor
        How many default hosts to make (``host0``, ``host1``, …), or the hosts.

    Examples
    --------
    >>> mgr = Manager(hosts=2)
    >>> _ = mgr.define("web", 2, program="loop: jmp loop")
    >>> _ = mgr.start("web"); _ = mgr.pause("web")
    >>> [(i.name, i.host, i.state.value) for i in mgr.list()]
    [('web', 'host0', 'paused')]
    >>> mgr.migrate("web", "host1").reason
    'paused: all 2 pages copied while the VM did not run; it stays paused on host1'
    >>> [(i.name, i.host, i.state.value) for i in mgr.list()]
    [('web', 'host1', 'paused')]
    >>> [e.op for e in mgr.events]
    ['define', 'start', 'pause', 'migrate']
    """

    def __init__(self, hosts: int | Iterable[Hypervisor] = 1, **host_options: object) -> None:
        self.events = EventLog()
        if isinstance(hosts, int):
            if hosts < 1:
                raise ConfigurationError("a manager needs at least one host")
            made = [Hypervisor(name=f"host{i}", events=self.events, **host_options)  # type: ignore[arg-type]
                    for i in range(hosts)]
        else:
            made = list(hosts)
            for h in made:
                h.events = self.events
        self.hosts: dict[str, Hypervisor] = {h.name: h for h in made}
        if len(self.hosts) != len(made):
            raise ConfigurationError("host names must be unique")

    def host(self, name: str) -> Hypervisor:
        """The host called ``name``."""
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigurationError(f"no host named {name!r}") from None

    def host_of(self, vm: str) -> Hypervisor:
        """The host a VM is on."""
        for h in self.hosts.values():
            found = h.vms.get(vm)
            if found is not None and found.state is not VMState.UNDEFINED:
                return h
        for h in self.hosts.values():
            if vm in h.vms:
                return h
        raise UnknownVMError(f"no VM named {vm!r} on any host")

    def vm(self, name: str) -> VM:
        """The VM called ``name``."""
        return self.host_of(name).vm(name)

    def define(self, name: str, memory_pages: int, vcpus: int = 1, *, host: str | None = None,
               **options: object) -> VM:
        """Define a VM on ``host`` (default: the host with the most free frames)."""
        for h in self.hosts.values():
            old = h.vms.get(name)
            if old is not None and old.state is not VMState.UNDEFINED:
                raise ConfigurationError(f"a VM named {name!r} already exists on {h.name}")
        target = (self.host(host) if host is not None
                  else max(self.hosts.values(), key=lambda h: h.allocator.free_count))
        return target.define(name, memory_pages, vcpus, **options)

    def start(self, name: str) -> VM:
        """Start (boot) a VM."""
        return self.host_of(name).start(name)

    def pause(self, name: str) -> VM:
        """Pause a running VM."""
        return self.host_of(name).pause(name)

    def resume(self, name: str) -> VM:
        """Resume a paused VM."""
        return self.host_of(name).resume(name)

    def shutdown(self, name: str) -> VM:
        """Power a VM off."""
        return self.host_of(name).shutdown(name)

    def destroy(self, name: str) -> VM:
        """Force a VM off (it stays defined)."""
        return self.host_of(name).destroy(name)

    def undefine(self, name: str) -> VM:
        """Remove the definition of a VM that is not running."""
        return self.host_of(name).undefine(name)

    def migrate(self, name: str, to: str, **options: object) -> MigrationResult:
        """Move a VM to host ``to`` (live, paused or offline, by its state)."""
        source = self.host_of(name)
        return source.migrate(name, self.host(to), **options)

    def list(self, *, all: bool = False) -> list[VMInfo]:
        """Every VM on every host."""
        return [row for h in self.hosts.values() for row in h.list(all=all)]

    def table(self) -> str:
        """:meth:`list` as an ``xl list``-like table."""
        return format_list(self.list())

    def run(self, max_steps: int = 100_000) -> dict[str, RunSummary]:
        """Run every host for up to ``max_steps`` guest instructions each."""
        return {name: h.run(max_steps) for name, h in self.hosts.items()}

    def __repr__(self) -> str:
        return f"Manager({len(self.hosts)} hosts, {len(self.list())} VMs)"

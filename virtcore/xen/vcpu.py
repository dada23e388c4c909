"""The virtual processor (虚拟处理器): a guest kernel's privileged instructions go to Xen (S6.4).

The real rules [XIG ch. 2; XEN-HCALL-ABI; XEN-H; SDM]:

- most guest instructions run directly on the physical CPU; only Xen runs in ring 0.  A 64-bit
  PV kernel runs in ring 3, so each privileged instruction it still executes faults (``#GP``)
  into Xen, whose ``emulate_privileged_op()`` *checks* and *carries it out* or refuses it:
  ``cli``/``sti`` become writes of ``vcpu_info.evtchn_upcall_mask`` (the virtual interrupt
  flag), ``in``/``out`` are allowed only on ports the domain was given (``guest_io_okay()``,
  else the guest gets ``#GP``), a CR3 write becomes ``new_guest_cr3()``.
- a PV kernel asks for services with hypercalls (``SYSCALL`` into Xen); an HVM/PVH guest runs
  unmodified in VMX non-root mode and its sensitive instructions are **VM exits** that Xen
  handles (``VMCALL`` is a hypercall, an I/O instruction exit goes to the device model or is
  refused).
- ``console_io`` (18) ``CONSOLEIO_write`` (0) prints on Xen's console — for the control domain
  (XSM's ``xsm_console_io``: ``-EPERM`` for an ordinary DomU on a release build).

:func:`run_kernel` runs a guest kernel written in the course's teaching ISA on the trap-and-
emulate monitor of :mod:`virtcore.vmm` — deprivileged for PV, in guest mode (hardware assist)
for HVM/PVH — with a handler table whose handlers are Xen's: ``hcall`` is a Xen hypercall
(number in r0, arguments in r1–r3), ``out``/``in`` go through the safe hardware interface,
``cli``/``sti`` set the upcall mask.

Simplified: the kernel's own memory is the :mod:`virtcore.vmm` VM's (a relocation map), not the
domain's P2M; hypercall arguments are registers only (``console_io`` writes the byte in r2,
``event_channel_op`` ``EVTCHNOP_send`` takes the port in r2, ``sched_op`` shutdown the reason
in r2).

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=128)
>>> u = xen.create_guest("u", memory_pages=4)
>>> run = run_kernel(xen, u.domid, '''
...     cli                     ; traps: Xen sets evtchn_upcall_mask
...     movi r1, 'x'
...     out  0x3f8, r1          ; a DomU does not own the serial port: #GP, no output
...     hlt''')
>>> run.emulated, run.refused, xen.platform["serial"].hw.text
({'cli': 1}, {'out': 1}, '')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtcore.hw.events import TrapCause
from virtcore.hw.isa import MASK32
from virtcore.xen.constants import (
    EFAULT,
    EINVAL,
    ENOSYS,
    EPERM,
    EVTCHNOP_send,
    HYPERVISOR_console_io,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_sched_op,
    SCHEDOP_shutdown,
)

if TYPE_CHECKING:
    from virtcore.vmm.handlers import Action, Insn
    from virtcore.vmm.vm import VCPU as VmmVCPU  # noqa: N811
    from virtcore.xen.domain import Domain
    from virtcore.xen.hypervisor import Xen

__all__ = ["CONSOLEIO_read", "CONSOLEIO_write", "HYPERVISOR_console_io", "KernelRun",
           "do_console_io", "run_kernel"]

CONSOLEIO_write = 0
CONSOLEIO_read = 1


def do_console_io(xen: Xen, dom: Domain, vcpu: int, args: tuple[Any, ...]) -> int:
    """``do_console_io(cmd, count, buffer)``: here ``(CONSOLEIO_write, text)``."""
    if len(args) != 2:
        return -EINVAL
    cmd, data = args
    if cmd != CONSOLEIO_write:
        return -ENOSYS
    if not isinstance(data, str):
        return -EFAULT
    if not dom.is_privileged:
        return -EPERM
    dom.console.append(data)
    return 0


@dataclass
class KernelRun:
    """What :func:`run_kernel` saw: Xen's handling of each privileged instruction."""

    domid: int
    steps: int
    state: str
    emulated: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    hypercalls: list[tuple[int, int]] = field(default_factory=list)
    exits: int = 0
    console: str = ""

    def __repr__(self) -> str:
        return (f"KernelRun(d{self.domid}: {self.steps} steps, {self.state}; emulated"
                f" {self.emulated}, refused {self.refused}, hypercalls {self.hypercalls})")


def _handlers(xen: Xen, d: Domain, run: KernelRun) -> dict[str, Any]:
    from virtcore.vmm.handlers import Action
    from virtcore.xen.evtchn import EvtchnSend
    from virtcore.xen.hwiface import port_io

    def count(table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1

    def trap(name: str, ok: bool) -> None:
        kind = "exit" if d.type != "pv" else "trap"
        xen.trace.add(kind, d.domid, f"{name}: {'emulated' if ok else 'refused (#GP)'}",
                      cost=2 * (xen.costs.trap if d.type == "pv" else xen.costs.vm_exit))

    def cli_sti(vcpu: VmmVCPU, insn: Insn) -> Action:
        masked = insn.mnemonic == "cli"
        d.vcpus[0].evtchn_upcall_mask = 1 if masked else 0
        vcpu.interrupts_enabled = not masked
        count(run.emulated, insn.mnemonic)
        trap(f"{insn.mnemonic} → evtchn_upcall_mask={int(masked)}", True)
        vcpu.pc += 4
        return Action.CONTINUE

    def io(vcpu: VmmVCPU, insn: Insn) -> Action:
        value = None if insn.mnemonic == "in" else vcpu.regs[insn.rs]
        r = port_io(xen, d.domid, insn.imm, value, crossing=False)
        if not r.ok:
            count(run.refused, insn.mnemonic)
            trap(f"{insn.mnemonic} port {insn.imm:#x}", False)
            return vcpu.reflect(TrapCause.GENERAL_PROTECTION)
        count(run.emulated, insn.mnemonic)
        trap(f"{insn.mnemonic} port {insn.imm:#x}", True)
        if value is None:
            vcpu.regs[insn.rd] = r.value & MASK32
        vcpu.pc += 4
        return Action.CONTINUE

    def hcall(vcpu: VmmVCPU, insn: Insn) -> Action:
        nr, a1, a2 = vcpu.regs[0], vcpu.regs[1], vcpu.regs[2]
        action = Action.CONTINUE
        if nr == HYPERVISOR_console_io:
            rc = xen.hypercall(d, nr, a1, chr(a2 & 0xFF))
        elif nr == HYPERVISOR_event_channel_op and a1 == EVTCHNOP_send:
            rc = xen.hypercall(d, nr, a1, EvtchnSend(port=a2))
        elif nr == HYPERVISOR_sched_op and a1 == SCHEDOP_shutdown:
            rc = xen.hypercall(d, nr, a1, {"reason": a2})
            action = Action.SHUTDOWN
        else:
            rc = xen.hypercall(d, nr, a1, a2)
        run.hypercalls.append((nr, rc))
        vcpu.regs[0] = rc & MASK32
        vcpu.pc += 4
        return action

    def wrcr(vcpu: VmmVCPU, insn: Insn) -> Action:
        from virtcore.hw.isa import CR
        from virtcore.vmm.handlers import handle_wrcr

        what = "CR3 → new_guest_cr3()" if insn.imm == CR.CR3 else f"control register {insn.imm}"
        count(run.emulated, "wrcr")
        trap(f"wrcr {what}", True)
        return handle_wrcr(vcpu, insn)

    return {"cli": cli_sti, "sti": cli_sti, "in": io, "out": io, "hcall": hcall, "wrcr": wrcr}


def run_kernel(xen: Xen, domid: int, program: str, *, max_steps: int = 10_000,
               memory_pages: int = 4) -> KernelRun:
    """Run ``program`` (teaching assembly) as domain ``domid``'s kernel; Xen handles its traps.

    PV domains run deprivileged (privileged instructions trap); HVM/PVH domains run in guest
    mode (they exit).  Returns a :class:`KernelRun`; the Xen trace has one entry per trap/exit.
    """
    from virtcore.vmm import HandlerTable, Hypervisor

    d = xen.domain(domid)
    run = KernelRun(d.domid, 0, "")
    table = HandlerTable.reference().replace(**_handlers(xen, d, run))
    hv = Hypervisor(quantum=max_steps, handlers=table)
    technique = "pv" if d.type == "pv" else "hw"
    vm = hv.create(f"d{d.domid}", memory_pages, program=program, technique=technique)
    summary = hv.run(max_steps)
    run.steps = summary.steps
    run.state = summary.states[vm.name].value
    run.exits = vm.stats.exits
    run.console = "".join(d.console)
    return run

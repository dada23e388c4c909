"""The course's one cost model (代价模型): what each crossing costs, in simulated nanoseconds.

Every chapter, library model and benchmark that prices an event path takes its prices from
:data:`DEFAULT_COSTS` (or a :func:`dataclasses.replace` of it), so that a number a student
compares across chapters means the same thing everywhere.

**Every price here is a teaching assumption**, in units of roughly one nanosecond on a recent
x86 machine, order of magnitude only; none is a measurement. Where a published result
justifies a *relative* size, the note in :meth:`Costs.assumptions` cites it from
``docs/references.md``. The model claims orderings and rough ratios, not cycle counts (exact
cycle counts of exits were not retrieved for [AA06]).

Conventions
-----------
- A *crossing* is priced once per direction: a system call that enters the kernel and returns
  costs ``2 * syscall``; a VM exit followed by a VM entry costs ``2 * vm_exit``.
- Work that is the same in every architecture (guest instructions, the device's own work,
  the completion interrupt reaching a driver) has the same price everywhere, so it dilutes a
  comparison but never reorders it.

>>> DEFAULT_COSTS.vm_exit > DEFAULT_COSTS.trap > DEFAULT_COSTS.syscall
True
>>> import dataclasses
>>> dataclasses.replace(DEFAULT_COSTS, world_switch=0).world_switch
0
>>> Costs(trap=-1)
Traceback (most recent call last):
...
virtcore.errors.ConfigurationError: cost 'trap' must be a finite number >= 0, got -1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from virtcore.errors import ConfigurationError

__all__ = ["DEFAULT_COSTS", "Costs"]


@dataclass(frozen=True)
class Costs:
    """Prices of crossings and units of work (teaching assumptions; units ≈ ns).

    See :meth:`assumptions` for why each field has its size, and :meth:`describe` for a table.

    >>> DEFAULT_COSTS.instruction
    1
    >>> sorted(Costs.assumptions()) == sorted(f.name for f in fields(Costs))
    True
    """

    instruction: float = 1
    syscall: float = 100
    trap: float = 200
    vm_exit: float = 400
    world_switch: float = 3000
    context_switch: float = 1500
    emulate: float = 300
    device: float = 5000
    interrupt: float = 100
    memory_reference: float = 20
    nesting_factor: float = 10
    page_copy: float = 1000
    pte_update: float = 20
    tlb_flush: float = 500
    validate: float = 20
    ring_slot: float = 20
    register_access: float = 150
    kvm_in_kernel: float = 200
    tcg_translate: float = 200
    tcg_execute: float = 8
    tcg_helper: float = 100
    translate: float = 50
    translated_op: float = 5
    callout: float = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
            ):
                raise ConfigurationError(f"cost {f.name!r} must be a finite number >= 0, got {v!r}")
        if self.nesting_factor < 1:
            raise ConfigurationError(f"nesting_factor must be >= 1, got {self.nesting_factor!r}")

    @classmethod
    def assumptions(cls) -> dict[str, str]:
        """Why each default has its size.

        >>> "Felter" in Costs.assumptions()["context_switch"]
        True
        """
        return dict(_ASSUMPTIONS)

    def describe(self) -> str:
        """Each field, its value and the assumption behind it.

        >>> print(DEFAULT_COSTS.describe().splitlines()[0])
        Costs (teaching assumptions; units ≈ ns, order of magnitude only)
        """
        lines = ["Costs (teaching assumptions; units ≈ ns, order of magnitude only)"]
        for f in fields(self):
            lines.append(f"  {f.name:<17}{getattr(self, f.name):>7g}  {_ASSUMPTIONS[f.name]}")
        return "\n".join(lines)


_ASSUMPTIONS = {
    "instruction": "one ordinary instruction on the CPU, the unit of the scale. Felter et al. "
    "[FELTER14] found the CPU overhead of VMs and containers negligible, so guest code costs "
    "the same as native code in every architecture.",
    "syscall": "one user→kernel or kernel→user transition (one direction); assumption.",
    "trap": "a deprivileged guest faulting into a software monitor, or being resumed by it "
    "(one direction); a Xen PV hypercall is priced as one trap in and one out; assumption.",
    "vm_exit": "one VM exit or one VM entry (VT-x/AMD-V, one direction). Dearer than a trap "
    "because first-generation hardware VMMs were often slower than software ones on "
    "exit-heavy work [AA06]; exact cycle counts were not retrieved.",
    "world_switch": "hosted VMM ↔ host world: saves and restores all CPU state, 'more "
    "heavyweight than a normal process switch' (Sugerman et al., USENIX 2001); assumption.",
    "context_switch": "kernel ↔ a user-space VMM process such as QEMU, or one domain ↔ "
    "another on a CPU. Sized so that an emulated KVM I/O costs roughly twice a native one, in "
    "line with Felter et al.'s report that KVM delivered about half the IOPS because each I/O "
    "went through QEMU [FELTER14, secondary summary].",
    "emulate": "a monitor decoding and emulating one instruction or device-register access; "
    "assumption.",
    "device": "the device's own work for one request; the same in every architecture.",
    "interrupt": "a completion interrupt (or an event-channel upcall, or a virtqueue "
    "notification) reaching its handler; the same price for native and virtual delivery.",
    "memory_reference": "one page-table memory reference during a TLB miss; the counts come "
    "from the walk (4 native, 24 for a 4×4 two-dimensional walk [BHAR08, STOJ22]); the price "
    "is an assumption.",
    "nesting_factor": "how many times dearer each virtualization crossing becomes per extra "
    "level of nesting (an L2 exit is handled by L0 running L1's hypervisor, which itself "
    "exits); a pure teaching assumption.",
    "page_copy": "copying one 4 KiB page (≈ 4 GB/s memcpy); the same price for a bounce "
    "buffer in QEMU, a grant copy in Xen or a DMA bounce; assumption.",
    "pte_update": "writing one page-table entry (a grant map or unmap installs or clears one); "
    "assumption.",
    "tlb_flush": "flushing a CPU's TLB (or shooting down one entry on every CPU that may "
    "hold it) after a mapping is removed; assumption.",
    "validate": "one check the hypervisor makes on a guest's request (a grant entry's flags "
    "and domid, a PTE's frame owner and type); assumption.",
    "ring_slot": "writing or reading one request or response slot of a shared ring "
    "(virtqueue or Xen I/O ring), cache-line traffic included; assumption.",
    "register_access": "one uncached access to a real device register on bare hardware (no "
    "virtualization: no exit); assumption.",
    "kvm_in_kernel": "KVM handling an exit itself without returning to user space: signalling "
    "an ioeventfd for a virtio kick [KVM-API §4.59], or halting a vCPU on its in-kernel "
    "interrupt controller [KVM-X86]; assumption.",
    "tcg_translate": "QEMU without KVM (TCG): translating one guest instruction into host code, "
    "once per translation block; assumption.",
    "tcg_execute": "TCG: running the translated code of one guest instruction (several host "
    "instructions); assumption — only its being dearer than 'instruction' matters.",
    "tcg_helper": "TCG: calling a C helper for an instruction the translator does not inline "
    "(I/O, hlt, system instructions); the device emulation inside costs 'emulate'; assumption.",
    "translate": "a binary translator (VMware's, x86 to x86) translating one guest-kernel "
    "instruction into its translation cache, once per block on the block's first execution; "
    "cheaper than tcg_translate because most instructions are copied unchanged (identical "
    "translation) [AA06, BUG12]; assumption.",
    "translated_op": "translated code doing what a sensitive instruction (cli, sti, popf, "
    "pushf, a control-register access) would do, on the virtual CPU's state in memory: a few "
    "ordinary instructions and no trap [AA06, BUG12]; assumption.",
    "callout": "translated code calling into the monitor in its own address space (for I/O "
    "or hlt) without a hardware trap; the emulation itself costs 'emulate'; assumption.",
}

#: The course's default prices (see :meth:`Costs.describe`).
DEFAULT_COSTS = Costs()

"""What an event of a workload crosses in each architecture.

An :class:`Event` (a system call, an I/O request, a privileged instruction
of a guest kernel, a TLB miss, plain computation) starts in a guest and
passes through layers of its :class:`~virtcore.arch.stacks.Stack`.
:func:`event_path` returns that passage as a :class:`Path`: an ordered list of
:class:`Step` objects, each a crossing of one :class:`CrossingKind` from one
layer to the next (and back).  Costs are not here: they come from the
course's cost model (:class:`virtcore.costs.Costs`, through
:mod:`virtcore.arch.costs`), so the same path can be priced under different
assumptions.

The model (teaching simplification — read before trusting a number)
------------------------------------------------------------------
- *Without* hardware assist the guest kernel is deprivileged; whatever it
  may not do traps to the monitor, which emulates it (trap-and-emulate).
  Real x86 needed binary translation or paravirtualization for this [RI00,
  AA06, XEN-SOSP03]; here every such crossing is priced as a ``TRAP``
  (chapter 2 models binary translation itself, whose translated code avoids
  most traps).  A guest system call is reflected by the monitor into the
  guest kernel (trap in, trap to the guest kernel, and the same on the way
  back), as in 64-bit Xen PV.
- *With* hardware assist (VT-x / AMD-V) a guest system call goes straight to
  the guest kernel; privileged instructions and I/O cause a ``VM_EXIT`` and a
  VM entry [SDM, APM]; a TLB miss walks two dimensions of page tables,
  (n+1)(m+1)−1 = 24 references for 4-level tables [BHAR08, STOJ22].
- Without assist a TLB miss walks the shadow page table like a native one
  (4 references); keeping shadow tables in sync costs traps on the guest's
  page-table writes and CR3 loads — those are ``PRIVILEGED_INSTRUCTION``
  events here.
- **Hosted** (VMware Workstation's design [SUG01, BUG12]): the
  VMM catches traps in its own world, so CPU events cost what they cost on
  bare metal; for I/O it makes a ``WORLD_SWITCH`` to the host world, where its
  application half does a ``read()``/``write()`` system call to the host
  kernel.  "A world switch … is more heavyweight than a normal process switch."
- **Hybrid** (KVM): the ``kvm`` module handles CPU and memory exits in the
  kernel; for device I/O it returns to the user-space QEMU process
  (``CONTEXT_SWITCH``), which emulates the device and calls the host kernel
  (S4.3; [FELTER14]: KVM's I/O went through QEMU).
- **Bare metal, ESX-style** (:func:`~virtcore.arch.bare_metal`): the
  hypervisor emulates the device and drives it with its own driver.
- **Bare metal, Xen-style** (:func:`~virtcore.arch.bare_metal_xen`): the
  guest's frontend driver writes a request on the shared I/O ring
  (``RING_SLOT``) and notifies Domain 0 through an event channel — a
  hypercall (``EVTCHNOP_send``, a ``TRAP`` in and out; a ``VM_EXIT`` with
  hardware assist); Xen switches to Domain 0 (``CONTEXT_SWITCH``) and sends it
  an upcall (``INTERRUPT``); the backend maps the granted page
  (``GNTTABOP_map_grant_ref``: a hypercall, a ``VALIDATE`` and a
  ``PTE_UPDATE``), the native driver does the I/O, whose interrupt Xen
  forwards to Domain 0 as an event; the backend unmaps the grant (a
  ``PTE_UPDATE`` and a ``TLB_FLUSH``), writes the response, notifies the
  guest, and Xen switches back [XIG, XEN-RING, XEN-GNTTAB, XEN-EVTCHN].
  Simplified: one request per notification (no batching), Domain 0 on the
  guest's CPU (so each direction costs a domain switch), a PV-style guest
  whose system calls go through Xen; persistent grants are not modelled.
- **OS-level**: a container's system call is an ordinary system call to the
  shared kernel; its "privileged instruction" is the shared kernel's own,
  executed natively (a container has no kernel of its own, S1.4).
- Computation (``COMPUTE``) runs directly on the CPU in every architecture.

>>> p = event_path(hosted(), Event.IO, hardware_assist=True)
>>> p.layers[:4]
('vm1 app', 'vm1 kernel', 'vm1 VMM', 'host kernel')
>>> "host kernel" in p.layers and "hypervisor" in event_path(bare_metal(), Event.IO).layers
True
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtcore.arch.stacks import (  # noqa: F401  (bare_metal, hosted, os_level: doctests)
    Architecture,
    ArchitectureError,
    LayerKind,
    Stack,
    bare_metal,
    hosted,
    os_level,
)

if TYPE_CHECKING:
    from virtcore.costs import Costs

__all__ = [
    "CrossingKind",
    "Event",
    "Path",
    "Step",
    "coerce_event",
    "event_path",
    "tlb_miss_references",
]


class Event(str, enum.Enum):
    """Things a guest's workload does, one at a time.

    ``CONTAINER_SYSCALL`` is another name for ``SYSCALL``: on an OS-level stack
    the guest is a container and its system call goes to the shared kernel.

    >>> Event("io") is Event.IO
    True
    >>> Event.CONTAINER_SYSCALL is Event.SYSCALL
    True
    >>> Event.IO.chinese
    'I/O请求'
    """

    COMPUTE = "compute"
    SYSCALL = "syscall"
    CONTAINER_SYSCALL = "syscall"  # noqa: PIE796  (an alias on purpose)
    PRIVILEGED_INSTRUCTION = "privileged_instruction"
    IO = "io"
    TLB_MISS = "tlb_miss"

    @property
    def chinese(self) -> str:
        """A short Chinese name."""
        return _EVENT_CHINESE[self]

    @property
    def description(self) -> str:
        """What the event is, in one line."""
        return _EVENT_TEXT[self]

    def __str__(self) -> str:
        return self.value


_EVENT_CHINESE = {
    Event.COMPUTE: "普通计算指令",
    Event.SYSCALL: "系统调用",
    Event.PRIVILEGED_INSTRUCTION: "特权指令",
    Event.IO: "I/O请求",
    Event.TLB_MISS: "TLB缺失（页表遍历）",
}
_EVENT_TEXT = {
    Event.COMPUTE: "an ordinary instruction (arithmetic, a load that hits the TLB)",
    Event.SYSCALL: "an app asks its kernel for a service (a container's asks the shared kernel)",
    Event.PRIVILEGED_INSTRUCTION: "the kernel under the app executes a privileged instruction "
    "(a CR3 load, HLT, a page-table write under shadow paging)",
    Event.IO: "an app reads a disk block: system call, driver, device and back",
    Event.TLB_MISS: "a memory access misses the TLB and the MMU walks the page tables",
}


def coerce_event(event: Event | str) -> Event:
    """Accept an :class:`Event` or its value.

    >>> coerce_event("tlb_miss")
    <Event.TLB_MISS: 'tlb_miss'>
    """
    if isinstance(event, Event):
        return event
    try:
        return Event(event)
    except ValueError:
        known = ", ".join(e.value for e in Event)
        raise ArchitectureError(f"unknown event {event!r}; known: {known}") from None


class CrossingKind(str, enum.Enum):
    """Kinds of step, each priced by one field of the cost model.

    >>> [k.value for k in CrossingKind][:4]
    ['direct', 'syscall', 'trap', 'vm_exit']
    >>> CrossingKind.WORLD_SWITCH.is_virtualization_overhead
    True
    >>> CrossingKind.DEVICE.is_virtualization_overhead
    False
    """

    DIRECT = "direct"  # runs on the CPU, nobody intervenes
    SYSCALL = "syscall"  # user mode <-> own kernel (one direction)
    TRAP = "trap"  # deprivileged guest <-> monitor, software virtualization
    VM_EXIT = "vm_exit"  # VMX non-root <-> root (exit, or entry on the way back)
    WORLD_SWITCH = "world_switch"  # hosted VMM world <-> host world (all CPU state)
    CONTEXT_SWITCH = "context_switch"  # kernel <-> user-space VMM process (QEMU)
    EMULATE = "emulate"  # the VMM decodes and emulates an instruction or device access
    DEVICE = "device"  # the device does the work (same in every architecture)
    INTERRUPT = "interrupt"  # the device's completion interrupt to its driver
    MEMORY_REFERENCE = "memory_reference"  # one page-table reference of a walk
    RING_SLOT = "ring_slot"  # one request/response slot of a shared I/O ring
    VALIDATE = "validate"  # the hypervisor checks a guest's request (a grant entry)
    PTE_UPDATE = "pte_update"  # one page-table entry written (a grant mapped or unmapped)
    TLB_FLUSH = "tlb_flush"  # a TLB flush after a mapping is removed

    @property
    def is_virtualization_overhead(self) -> bool:
        """True for kinds that exist only because of virtualization."""
        return self in _OVERHEAD

    def __str__(self) -> str:
        return self.value


_OVERHEAD = frozenset(
    {
        CrossingKind.TRAP,
        CrossingKind.VM_EXIT,
        CrossingKind.WORLD_SWITCH,
        CrossingKind.CONTEXT_SWITCH,
        CrossingKind.EMULATE,
        CrossingKind.RING_SLOT,
        CrossingKind.VALIDATE,
        CrossingKind.PTE_UPDATE,
        CrossingKind.TLB_FLUSH,
    }
)


@dataclass(frozen=True)
class Step:
    """One crossing ``src → dst`` (or work inside one layer when ``src == dst``).

    ``count`` repeats the step (a page walk is ``count`` memory references).

    >>> Step("vm1 app", "vm1 kernel", CrossingKind.SYSCALL)
    Step('vm1 app' → 'vm1 kernel', syscall)
    """

    src: str
    dst: str
    kind: CrossingKind
    count: int = 1
    note: str = ""

    def __repr__(self) -> str:
        times = f" ×{self.count}" if self.count != 1 else ""
        return f"Step({self.src!r} → {self.dst!r}, {self.kind.value}{times})"


@dataclass(frozen=True)
class Path:
    """The ordered steps of one event in one stack.

    Consecutive steps connect: each step starts where the previous ended.

    >>> p = event_path(bare_metal(), Event.SYSCALL, hardware_assist=True)
    >>> p.layers
    ('vm1 app', 'vm1 kernel', 'vm1 app')
    >>> p.kinds
    (<CrossingKind.SYSCALL: 'syscall'>, <CrossingKind.SYSCALL: 'syscall'>)
    """

    stack: str
    architecture: Architecture | None
    event: Event
    guest: str
    hardware_assist: bool
    steps: tuple[Step, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """Layers visited in order (a layer repeats if the event comes back to it)."""
        if not self.steps:
            return ()
        out = [self.steps[0].src]
        for s in self.steps:
            if s.dst != out[-1]:
                out.append(s.dst)
        return tuple(out)

    @property
    def kinds(self) -> tuple[CrossingKind, ...]:
        """The kind of each step."""
        return tuple(s.kind for s in self.steps)

    def count(self, kind: CrossingKind | str) -> int:
        """How many times the event crosses ``kind`` (steps × their counts).

        >>> event_path(hosted(), Event.IO).count("world_switch")
        2
        """
        kind = CrossingKind(kind)
        return sum(s.count for s in self.steps if s.kind is kind)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def describe(self, model: Costs | None = None) -> str:
        """The path as a table; with a cost model, each step's cost and the total.

        >>> from virtcore.arch.costs import DEFAULT_MODEL
        >>> print(event_path(os_level(), Event.SYSCALL).describe(DEFAULT_MODEL))
        Path os-level / syscall, guest ct1, no hardware assist — 2 steps
           1  ct1 app       → host kernel    syscall             100  a container's system call ...
           2  host kernel   → ct1 app        syscall             100  return to the container
          total 200
        """
        assist = "hardware assist" if self.hardware_assist else "no hardware assist"
        head = (
            f"Path {self.stack} / {self.event.value}, guest {self.guest}, {assist} "
            f"— {len(self)} steps"
        )
        width = max([len(s.src) for s in self.steps] + [len(s.dst) for s in self.steps] + [12])
        lines = [head]
        total = 0.0
        for i, s in enumerate(self.steps, 1):
            kind = s.kind.value + (f" ×{s.count}" if s.count != 1 else "")
            cost = ""
            if model is not None:
                from virtcore.arch.costs import step_price

                c = step_price(model, s)
                total += c
                cost = f"{c:>8g}  "
            lines.append(
                f"  {i:>2}  {s.src:<{width}} → {s.dst:<{width}} {kind:<14} {cost}{s.note}".rstrip()
            )
        if model is not None:
            lines.append(f"  total {total:g}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()


def tlb_miss_references(guest_levels: int = 4, nested_levels: int = 0) -> int:
    """Page-table references of one TLB miss: ``(n+1)(m+1) − 1`` [BHAR08, STOJ22].

    With no nested table (``m = 0``) it is the native ``n``; with 4-level guest
    and nested tables it is 24 (the 25th access, the data itself, is not a
    page-table reference).

    >>> tlb_miss_references(4), tlb_miss_references(4, 4)
    (4, 24)
    """
    if guest_levels < 1 or nested_levels < 0:
        raise ArchitectureError("page tables need at least one level")
    return (guest_levels + 1) * (nested_levels + 1) - 1


# -- path builders -------------------------------------------------------------------


def _vm_syscall_in(app: str, kernel: str, mon: str, assist: bool) -> list[Step]:
    if assist:
        return [
            Step(
                app,
                kernel,
                CrossingKind.SYSCALL,
                note="the guest's system call goes straight to its kernel",
            )
        ]
    return [
        Step(
            app,
            mon,
            CrossingKind.TRAP,
            note="the system call traps to the monitor (deprivileged guest)",
        ),
        Step(mon, kernel, CrossingKind.TRAP, note="the monitor reflects it into the guest kernel"),
    ]


def _vm_syscall_out(app: str, kernel: str, mon: str, assist: bool) -> list[Step]:
    if assist:
        return [Step(kernel, app, CrossingKind.SYSCALL, note="return to the app")]
    return [
        Step(kernel, mon, CrossingKind.TRAP, note="the return instruction is sensitive: it traps"),
        Step(mon, app, CrossingKind.TRAP, note="the monitor resumes the app"),
    ]


def _exit_kind(assist: bool) -> CrossingKind:
    return CrossingKind.VM_EXIT if assist else CrossingKind.TRAP


def _kernel_below(stack: Stack, name: str) -> str:
    """The kernel a user-space VMM process runs on (the host's, or a guest's when nested)."""
    for layer in stack.below(name):
        if layer.kind in (LayerKind.HOST_KERNEL, LayerKind.GUEST_KERNEL):
            return layer.name
    raise ArchitectureError(f"{name!r} in {stack.name!r} runs on no kernel")


def _kernel_does_io(stack: Stack, kernel: str, hw: str) -> list[Step]:
    """A kernel drives the device — unless that kernel is itself a guest (nesting):
    then its driver's I/O instruction exits to *its* monitor, whose own I/O path
    runs one level down, and the guest kernel resumes with the data."""
    layer = stack.layer(kernel)
    if layer.kind is LayerKind.GUEST_KERNEL and layer.guest:
        mon = stack.role("monitor", layer.guest).name
        return [
            Step(kernel, mon, CrossingKind.VM_EXIT,
                 note=f"{layer.guest}'s own driver touches a virtual device: VM exit"),
            *_vm_io_service(stack, layer.guest, mon, hw),
            Step(mon, kernel, CrossingKind.VM_EXIT, note=f"back into {layer.guest} (VM entry)"),
        ]
    return [
        Step(kernel, hw, CrossingKind.DEVICE, note="the host's driver does the I/O"),
        Step(hw, kernel, CrossingKind.INTERRUPT, note="completion interrupt"),
    ]


def _hypercall(domain: str, xen: str, kind: CrossingKind, what: str) -> list[Step]:
    return [
        Step(domain, xen, kind, note=f"hypercall {what}"),
        Step(xen, domain, kind, note="the hypercall returns"),
    ]


def _xen_split_driver(stack: Stack, guest: str, xen: str, hw: str, assist: bool) -> list[Step]:
    """Xen's split driver: frontend in the guest, backend in Domain 0 (see the module docstring).

    Starts and ends in the guest kernel (its frontend), unlike the other I/O services.
    """
    front = stack.role("kernel", guest).name
    back = stack.role("backend", guest).name
    x = _exit_kind(assist)
    return [
        Step(front, front, CrossingKind.RING_SLOT,
             note="the frontend writes the request (with a grant reference) on the ring"),
        Step(front, xen, x, note="hypercall EVTCHNOP_send: notify the backend"),
        Step(xen, back, CrossingKind.CONTEXT_SWITCH, note="Xen switches to Domain 0"),
        Step(back, back, CrossingKind.INTERRUPT, note="event-channel upcall to the backend"),
        Step(back, back, CrossingKind.RING_SLOT, note="the backend reads the request"),
        Step(back, xen, x, note="hypercall GNTTABOP_map_grant_ref: map the guest's page"),
        Step(xen, xen, CrossingKind.VALIDATE, note="Xen checks the grant entry (domid, flags)"),
        Step(xen, xen, CrossingKind.PTE_UPDATE, note="Xen maps the frame into Domain 0"),
        Step(xen, back, x, note="the hypercall returns"),
        Step(back, hw, CrossingKind.DEVICE, note="Domain 0's native driver does the I/O"),
        Step(hw, xen, CrossingKind.INTERRUPT, note="the device interrupt goes to Xen"),
        Step(xen, back, CrossingKind.INTERRUPT, note="Xen forwards it to Domain 0 as an event"),
        Step(back, xen, x, note="hypercall GNTTABOP_unmap_grant_ref"),
        Step(xen, xen, CrossingKind.PTE_UPDATE, note="Xen clears the mapping"),
        Step(xen, xen, CrossingKind.TLB_FLUSH, note="and flushes the stale translation"),
        Step(xen, back, x, note="the hypercall returns"),
        Step(back, back, CrossingKind.RING_SLOT, note="the backend writes the response"),
        Step(back, xen, x, note="hypercall EVTCHNOP_send: notify the frontend"),
        Step(xen, front, CrossingKind.CONTEXT_SWITCH, note="Xen switches back to the guest"),
        Step(front, front, CrossingKind.INTERRUPT, note="event-channel upcall to the frontend"),
        Step(front, front, CrossingKind.RING_SLOT, note="the frontend reads the response"),
    ]


def _vm_io_service(stack: Stack, guest: str, mon: str, hw: str,
                   assist: bool = False) -> list[Step]:
    """From the monitor to the device and back to the monitor."""
    arch = stack.architecture
    if arch is Architecture.HOSTED:
        hk = _kernel_below(stack, mon)
        return [
            Step(
                mon,
                mon,
                CrossingKind.EMULATE,
                note="the VMM decodes the access to its virtual disk",
            ),
            Step(
                mon, hk, CrossingKind.WORLD_SWITCH, note="switch from the VMM's world to the host's"
            ),
            Step(
                hk, mon, CrossingKind.SYSCALL, note="back in the VMM's application half (user mode)"
            ),
            Step(mon, hk, CrossingKind.SYSCALL, note="it issues read() to the host OS"),
            Step(hk, hw, CrossingKind.DEVICE, note="the host's driver does the I/O"),
            Step(hw, hk, CrossingKind.INTERRUPT, note="completion interrupt"),
            Step(hk, mon, CrossingKind.SYSCALL, note="read() returns to the VMM application"),
            Step(mon, hk, CrossingKind.SYSCALL, note="it asks the VMM driver to resume the guest"),
            Step(hk, mon, CrossingKind.WORLD_SWITCH, note="switch back to the VMM's world"),
        ]
    if arch is Architecture.HYBRID or stack.has_role("user_vmm", guest):
        qemu = stack.role("user_vmm", guest).name
        hk = _kernel_below(stack, qemu)
        return [
            Step(
                mon, qemu, CrossingKind.CONTEXT_SWITCH, note="KVM_RUN returns to QEMU in user space"
            ),
            Step(qemu, qemu, CrossingKind.EMULATE, note="QEMU emulates the disk controller"),
            Step(qemu, hk, CrossingKind.SYSCALL, note="QEMU issues read() to the host kernel"),
            *_kernel_does_io(stack, hk, hw),
            Step(hk, qemu, CrossingKind.SYSCALL, note="read() returns to QEMU"),
            Step(qemu, mon, CrossingKind.CONTEXT_SWITCH, note="QEMU calls KVM_RUN again"),
        ]
    if stack.has_role("backend", guest):
        return _xen_split_driver(stack, guest, mon, hw, assist)
    return [
        Step(
            mon,
            mon,
            CrossingKind.EMULATE,
            note="the hypervisor decodes the access to the virtual disk",
        ),
        Step(mon, hw, CrossingKind.DEVICE, note="the hypervisor's own driver does the I/O"),
        Step(hw, mon, CrossingKind.INTERRUPT, note="completion interrupt"),
    ]


def event_path(
    stack: Stack,
    event: Event | str,
    *,
    hardware_assist: bool = False,
    guest: str | None = None,
    page_table_levels: int = 4,
) -> Path:
    """The layers and crossings ``event`` passes in ``stack``, there and back.

    Parameters
    ----------
    stack : Stack
    event : Event or str
    hardware_assist : bool
        Whether the CPU has (and the VMM uses) VT-x / AMD-V with EPT/NPT.
        Hybrid stacks require it (S1.5) and raise :class:`ArchitectureError`
        without it.  OS-level and native paths do not depend on it.
    guest : str, optional
        Which VM or container issues the event; the first one by default.
    page_table_levels : int
        Levels of the guest's (and the nested) page table, for ``TLB_MISS``.

    Returns
    -------
    Path

    See the module docstring for the model and its simplifications.

    >>> p = event_path(hosted(), Event.IO)
    >>> print(" → ".join(p.layers))  # doctest: +NORMALIZE_WHITESPACE
    vm1 app → vm1 VMM → vm1 kernel → vm1 VMM → host kernel → vm1 VMM → host kernel → hardware
    → host kernel → vm1 VMM → host kernel → vm1 VMM → vm1 kernel → vm1 VMM → vm1 app
    >>> event_path(bare_metal(), "tlb_miss", hardware_assist=True).count("memory_reference")
    24
    >>> event_path(bare_metal(), Event.COMPUTE).layers
    ('vm1 app', 'hardware')
    """
    ev = coerce_event(event)
    if stack.requires_hardware_assist and not hardware_assist:
        raise ArchitectureError(
            f"{stack.name!r} needs hardware virtualization (Intel VT-x / AMD-V, S1.5); "
            "pass hardware_assist=True"
        )
    g = guest if guest is not None else stack.guests[0]
    app = stack.role("app", g).name
    kernel = stack.role("kernel", g).name
    hw = stack.role("hardware").name
    is_vm = stack.has_role("monitor", g)
    assist = bool(hardware_assist)

    steps: list[Step]
    if ev is Event.COMPUTE:
        steps = [Step(app, hw, CrossingKind.DIRECT, note="runs directly on the CPU")]
    elif ev is Event.TLB_MISS:
        nested = page_table_levels if (is_vm and assist) else 0
        refs = tlb_miss_references(page_table_levels, nested)
        how = (
            "two-dimensional walk: guest and nested (EPT/NPT) tables"
            if nested
            else ("walk of the shadow page table" if is_vm else "native page walk")
        )
        steps = [Step(app, hw, CrossingKind.MEMORY_REFERENCE, count=refs, note=how)]
    elif not is_vm:
        # OS-level or native: the kernel is the host's own
        if ev is Event.SYSCALL:
            steps = [
                Step(
                    app,
                    kernel,
                    CrossingKind.SYSCALL,
                    note="a container's system call goes to the shared kernel",
                ),
                Step(kernel, app, CrossingKind.SYSCALL, note="return to the container"),
            ]
        elif ev is Event.PRIVILEGED_INSTRUCTION:
            steps = [
                Step(
                    kernel,
                    hw,
                    CrossingKind.DIRECT,
                    note="the shared kernel runs its own privileged instruction natively",
                )
            ]
        else:  # IO
            steps = [
                Step(app, kernel, CrossingKind.SYSCALL, note="read() to the shared kernel"),
                Step(kernel, hw, CrossingKind.DEVICE, note="its driver does the I/O"),
                Step(hw, kernel, CrossingKind.INTERRUPT, note="completion interrupt"),
                Step(kernel, app, CrossingKind.SYSCALL, note="read() returns"),
            ]
    else:
        mon = stack.role("monitor", g).name
        x = _exit_kind(assist)
        if ev is Event.SYSCALL:
            steps = _vm_syscall_in(app, kernel, mon, assist) + _vm_syscall_out(
                app, kernel, mon, assist
            )
        elif ev is Event.PRIVILEGED_INSTRUCTION:
            steps = [
                Step(
                    kernel,
                    mon,
                    x,
                    note="the guest kernel's privileged instruction leaves the guest",
                ),
                Step(
                    mon,
                    mon,
                    CrossingKind.EMULATE,
                    note="the monitor emulates it on the virtual CPU",
                ),
                Step(
                    mon, kernel, x, note="back into the guest" + (" (VM entry)" if assist else "")
                ),
            ]
        elif stack.has_role("backend", g):  # IO through a split driver (Xen)
            steps = [
                *_vm_syscall_in(app, kernel, mon, assist),
                *_vm_io_service(stack, g, mon, hw, assist),
                *_vm_syscall_out(app, kernel, mon, assist),
            ]
        else:  # IO
            steps = [
                *_vm_syscall_in(app, kernel, mon, assist),
                Step(kernel, mon, x, note="the guest driver's I/O instruction leaves the guest"),
                *_vm_io_service(stack, g, mon, hw, assist),
                Step(
                    mon,
                    kernel,
                    x,
                    note="back into the guest with the data" + (" (VM entry)" if assist else ""),
                ),
                *_vm_syscall_out(app, kernel, mon, assist),
            ]
    return Path(stack.name, stack.architecture, ev, g, assist, tuple(steps))

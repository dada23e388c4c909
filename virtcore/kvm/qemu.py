"""A QEMU-like userspace VMM (用户态VMM): the run loop on KVM exits, emulated devices, exit costs.

The KVM stack (syllabus S4.3; [KVM-ORIG; LWN15; QEMU-ACCEL]): the
guest runs in guest mode; **KVM** (the kernel module) virtualizes CPU and memory
and intercepts the guest's I/O; **QEMU** (a user-space process) emulates the
I/O devices and talks to KVM through ioctls on ``/dev/kvm``.  Each vCPU is a
QEMU thread looping on ``KVM_RUN``: when the guest touches a device register,
the CPU leaves guest mode (a *VM exit*), KVM returns from the ioctl with
``exit_reason = KVM_EXIT_IO`` or ``KVM_EXIT_MMIO``, QEMU emulates the access
and calls ``KVM_RUN`` again.  KVM + QEMU = qemu-kvm.

Concepts and how each is represented:

- **an exit, as user space sees it** — :class:`VcpuExit` with the
  ``kvm_run`` members :class:`IOExit` (``direction, size, port, count``, data)
  and :class:`MMIOExit` (``phys_addr, len, is_write``, data), reasons
  :data:`KVM_EXIT_IO` = 2, :data:`KVM_EXIT_HLT` = 5, :data:`KVM_EXIT_MMIO` = 6 … [KVM-H];
- **a vCPU** — anything with ``run() -> VcpuExit`` and ``complete(data)``
  (the :class:`Vcpu` protocol): :class:`TeachingVcpu` runs the teaching ISA on
  :mod:`virtcore.hw`'s CPU in guest mode; :class:`KvmApiVcpu` drives a vCPU
  descriptor of the ``/dev/kvm`` API (:mod:`virtcore.kvm.api`: the model, or
  the real kernel module);
- **emulated devices** (设备模拟) — :mod:`virtcore.hw.devices` models on a bus
  owned by the VMM: the 16550-like :class:`~virtcore.hw.devices.Serial` (ports
  0x3F8–0x3FF), the ATA-like :class:`~virtcore.hw.devices.BlockDevice` (ports
  0x1F0–0x1F7) and the MMIO :class:`~virtcore.hw.devices.NetworkCard`
  (0xFEB00000); every register access the guest makes is one exit;
- **virtio devices** (paravirtual I/O — not pass-through, which is VFIO /
  SR-IOV; syllabus N4, N5) — :mod:`virtcore.kvm.virtio` devices behind a one-register
  :class:`VirtioNotifyPort` (the kick), optionally an *ioeventfd*
  (``KVM_IOEVENTFD``: a guest write to the registered address signals an eventfd
  instead of exiting to user space [KVM-API §4.59]) — the vCPU thread then stays in
  the kernel, but QEMU's I/O thread, woken by the eventfd, still does the device's
  work in user space — or *vhost* (the device's data path in a host-kernel worker:
  no trip to user space at all);
- **the in-kernel interrupt controller** (``KVM_CREATE_IRQCHIP``, which QEMU
  creates on x86): a guest's ``hlt`` then stays in KVM (the vCPU sleeps as
  ``KVM_MP_STATE_HALTED``) and never reaches QEMU as ``KVM_EXIT_HLT`` [KVM-X86];
- **accounting** — :class:`ExitStats`: every exit with its VM exit/entry and
  kernel↔user transitions, priced by :class:`ExitCosts` — the course's one cost
  model (:mod:`virtcore.costs`) seen from this VMM;
- **the run loop** — :meth:`QemuVMM.run`; the comparisons
  :func:`compare_block_io` and :func:`compare_net_tx` (emulated device vs
  virtio, S4.5), each against a native baseline with the *same* driver, batching
  and interrupt policy.

Every number in :class:`ExitCosts` comes from :data:`virtcore.costs.DEFAULT_COSTS`
and is a **teaching assumption** (≈ ns, order of magnitude); see
:meth:`ExitCosts.assumptions`.

Simplified (say so in class): devices complete synchronously inside the exit
that starts them (QEMU uses AIO and IOThreads); interrupts are counted and
priced but, for guests that poll, not delivered; one vCPU; the I/O thread's
work is on the request's path (the guest waits for its batch), so it is added
to the elapsed time and also reported apart.  Every exit reaches this object —
a kick on an ioeventfd port is *accounted* as handled inside KVM on the vCPU
thread plus a wake-up of QEMU's I/O thread (or of the vhost worker), which is
what the real kernel would have done.  With the in-kernel irqchip a halted vCPU
would sleep until an interrupt; the guests here poll and never enable one, so
the run ends there (real QEMU would leave the vCPU thread asleep in ``KVM_RUN``).
The ``KVM_EXIT_*`` numbers are repeated here so that the device side does not
depend on the ``/dev/kvm`` model; a test checks they equal :mod:`virtcore.kvm.api`'s.

>>> vcpu = TeachingVcpu('''
...     movi r1, 'h'
...     out  0x3f8, r1
...     movi r1, 'i'
...     out  0x3f8, r1
...     hlt''')
>>> run = QemuVMM(vcpu.memory).run(vcpu)
>>> run.output, [e.reason for e in run.trace], run.stop
('hi', ['KVM_EXIT_IO', 'KVM_EXIT_IO', 'hlt (in KVM)'], 'KVM_MP_STATE_HALTED')
>>> run.stats.kernel_to_user, run.stats.user_to_kernel   # the hlt never reached QEMU
(2, 2)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol, runtime_checkable

from virtcore.costs import DEFAULT_COSTS as COURSE_COSTS
from virtcore.costs import Costs
from virtcore.errors import AddressError, ConfigurationError, VirtcoreError
from virtcore.hw.asm import Program, assemble
from virtcore.hw.cpu import CPU, VMCS, StopReason
from virtcore.hw.devices import (
    BLK_COMMAND,
    BLK_COUNT,
    BLK_DMA_ADDR,
    BLK_SECTOR,
    BLK_STATUS,
    NIC_BASE,
    NIC_STATUS,
    NIC_TX_ADDR,
    NIC_TX_DONE,
    NIC_TX_DOORBELL,
    NIC_TX_LEN,
    STATUS_DONE,
    BlockDevice,
    Bus,
    Device,
    InterruptController,
    MemoryLike,
    NetworkCard,
    Serial,
)
from virtcore.hw.events import ExitReason, TrapCause, VMExit
from virtcore.hw.isa import ISA, MASK32, SP, decode
from virtcore.hw.memory import PhysicalMemory
from virtcore.hw.paging import MMU, PagingConfig
from virtcore.kvm.virtio import (
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    GuestRAM,
    VirtioBlk,
    VirtioBlkDriver,
    VirtioDevice,
    VirtioNet,
    VirtioNetDriver,
)
from virtcore.rng import make_rng

__all__ = [
    "COURSE_FIELDS",
    "DEFAULT_COSTS",
    "KVM_EXIT_FAIL_ENTRY",
    "KVM_EXIT_HLT",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_INTR",
    "KVM_EXIT_IO",
    "KVM_EXIT_IO_IN",
    "KVM_EXIT_IO_OUT",
    "KVM_EXIT_MMIO",
    "KVM_EXIT_SHUTDOWN",
    "PATHS",
    "VIRTIO_NOTIFY_PORT",
    "ExitCosts",
    "ExitLogEntry",
    "ExitStats",
    "GuestIO",
    "IOComparison",
    "IOExit",
    "IOPathResult",
    "KvmApiVcpu",
    "MMIOExit",
    "QemuError",
    "QemuRun",
    "QemuVMM",
    "SlotMemory",
    "TeachingVcpu",
    "Vcpu",
    "VcpuExit",
    "VirtioNotifyPort",
    "as_exit_costs",
    "compare_block_io",
    "compare_net_tx",
    "exit_name",
]

# ---------------------------------------------------------------------------
# Exit reasons and the kvm_run members [KVM-H; KVM-API §5]
# ---------------------------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
_KVM_MP_STATE_HALTED = 3  # KVM_GET_MP_STATE [KVM-H]
#: ``KVM_INTERNAL_ERROR_EMULATION``: an instruction KVM's emulator cannot emulate [KVM-H; LWN15].
KVM_INTERNAL_ERROR_EMULATION = 1

_EXIT_NAMES = {
    0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR", 24: "KVM_EXIT_SYSTEM_EVENT",
}

#: Port of the virtio kick register used here (teaching choice; virtio-pci puts
#: QUEUE_NOTIFY in a BAR the guest's PCI code finds, wherever the firmware put it).
VIRTIO_NOTIFY_PORT = 0xC050


def exit_name(reason: int) -> str:
    """The ``KVM_EXIT_*`` name of ``reason``.

    >>> exit_name(2), exit_name(5), exit_name(6), exit_name(99)
    ('KVM_EXIT_IO', 'KVM_EXIT_HLT', 'KVM_EXIT_MMIO', 'KVM_EXIT_99')
    """
    return _EXIT_NAMES.get(reason, f"KVM_EXIT_{reason}")


class QemuError(VirtcoreError):
    """Misuse of the VMM model (bad device set-up, a vCPU not speaking the protocol)."""


class IOExit(NamedTuple):
    """``kvm_run.io``: a port access (``direction`` 0 = IN, 1 = OUT), with its data inline.

    Real KVM leaves the bytes in the ``kvm_run`` page at ``data_offset``; for
    an OUT they are here in ``data`` (``size × count`` bytes), for an IN ``data``
    is empty and the VMM supplies the bytes.

    >>> str(IOExit(KVM_EXIT_IO_OUT, 1, 0x3F8, 1, b"4"))
    "OUT port 0x3f8 size 1 data 34 '4'"
    """

    direction: int
    size: int
    port: int
    count: int = 1  # type: ignore[assignment]  # kvm_run.io.count (shadows tuple.count)
    data: bytes = b""

    def __str__(self) -> str:
        d = "OUT" if self.direction == KVM_EXIT_IO_OUT else "IN"
        rep = f" count {self.count}" if self.count != 1 else ""
        return f"{d} port {self.port:#x} size {self.size}{rep}" + _data_text(self.data)


class MMIOExit(NamedTuple):
    """``kvm_run.mmio``: ``phys_addr``, ``len``, ``is_write``, and the written bytes.

    >>> str(MMIOExit(0xFEB00008, 4, True, (1).to_bytes(4, "little")))
    'WRITE 0xfeb00008 len 4 data 01000000'
    """

    phys_addr: int
    len: int
    is_write: bool
    data: bytes = b""

    def __str__(self) -> str:
        d = "WRITE" if self.is_write else "READ"
        return f"{d} {self.phys_addr:#x} len {self.len}" + _data_text(self.data)


def _data_text(data: bytes) -> str:
    if not data:
        return ""
    text = f" data {data.hex()}"
    if len(data) == 1 and 32 <= data[0] < 127:
        text += f" {chr(data[0])!r}"
    return text


class VcpuExit(NamedTuple):
    """Why ``KVM_RUN`` returned: ``reason`` (a ``KVM_EXIT_*`` number) and its member.

    ``steps`` is how many guest instructions ran (natively) since the last
    exit, when the vCPU knows (0 otherwise); ``detail`` explains errors.
    ``halted`` marks a ``KVM_RUN`` ended by a signal while the vCPU slept in the
    kernel after a ``hlt`` (in-kernel irqchip: ``EINTR``, ``KVM_EXIT_INTR``,
    ``KVM_MP_STATE_HALTED``).

    >>> VcpuExit(KVM_EXIT_HLT).name, VcpuExit(KVM_EXIT_INTR, halted=True).halted
    ('KVM_EXIT_HLT', True)
    """

    reason: int
    io: IOExit | None = None
    mmio: MMIOExit | None = None
    steps: int = 0
    detail: str = ""
    halted: bool = False

    @property
    def name(self) -> str:
        """The ``KVM_EXIT_*`` name."""
        return exit_name(self.reason)

    def __str__(self) -> str:
        member = self.io if self.io is not None else self.mmio
        extra = f" {member}" if member is not None else ""
        return f"{self.name}{extra}" + (f" ({self.detail})" if self.detail else "")


@runtime_checkable
class Vcpu(Protocol):
    """What the VMM's loop needs from a vCPU: ``KVM_RUN`` and a way to hand back IN/read data.

    >>> isinstance(TeachingVcpu("hlt"), Vcpu), isinstance(object(), Vcpu)
    (True, False)
    """

    def run(self) -> VcpuExit:
        """Enter the guest; return at the next exit (``ioctl(vcpufd, KVM_RUN, 0)``)."""
        ...  # pragma: no cover

    def complete(self, data: bytes) -> None:
        """Data for the last IN / MMIO read; it reaches the guest on the next :meth:`run`."""
        ...  # pragma: no cover


# ---------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------


#: Which field of the course's cost model (:class:`virtcore.costs.Costs`) prices each
#: field of :class:`ExitCosts`.
COURSE_FIELDS: dict[str, str] = {
    "native_instruction": "instruction",
    "register_access": "register_access",
    "vm_exit": "vm_exit",
    "vm_entry": "vm_exit",  # an entry is priced like an exit (one direction)
    "kernel_user": "context_switch",
    "emulate": "emulate",
    "in_kernel": "kvm_in_kernel",
    "device": "device",
    "interrupt": "interrupt",
    "tcg_translate": "tcg_translate",
    "tcg_execute": "tcg_execute",
    "tcg_helper": "tcg_helper",
}


@dataclass(frozen=True)
class ExitCosts:
    """The prices of the events on an I/O path, taken from the course's one cost model.

    Each field is a field of :data:`virtcore.costs.DEFAULT_COSTS` under the name this
    VMM uses for it (:data:`COURSE_FIELDS`: ``kernel_user`` is the course's
    ``context_switch`` — kernel ↔ a user-space VMM —, ``vm_entry`` its ``vm_exit``,
    ``in_kernel`` its ``kvm_in_kernel`` …), so a number here means what it means in
    every chapter.  :meth:`from_costs` makes one from another :class:`~virtcore.costs.Costs`;
    every function of this package taking ``costs=`` also accepts a ``Costs``.

    An exit handled in user space costs ``vm_exit + 2·kernel_user + emulate +
    vm_entry``: out of the guest into KVM, KVM_RUN returns to QEMU, QEMU
    emulates the access, QEMU calls KVM_RUN, back into the guest.  An exit
    handled inside KVM (an ioeventfd kick, an in-kernel ``hlt``) costs
    ``vm_exit + in_kernel (+ vm_entry)``.

    >>> c = DEFAULT_COSTS
    >>> c.user_exit, c.kernel_exit, c.kernel_user == COURSE_COSTS.context_switch
    (4100, 1000, True)
    >>> import dataclasses
    >>> ExitCosts.from_costs(dataclasses.replace(COURSE_COSTS, vm_exit=0)).kernel_exit
    200
    >>> ExitCosts(vm_exit=-1)
    Traceback (most recent call last):
    ...
    virtcore.errors.ConfigurationError: cost 'vm_exit' must be a finite number >= 0, got -1
    """

    native_instruction: float = COURSE_COSTS.instruction
    register_access: float = COURSE_COSTS.register_access
    vm_exit: float = COURSE_COSTS.vm_exit
    vm_entry: float = COURSE_COSTS.vm_exit
    kernel_user: float = COURSE_COSTS.context_switch
    emulate: float = COURSE_COSTS.emulate
    in_kernel: float = COURSE_COSTS.kvm_in_kernel
    device: float = COURSE_COSTS.device
    interrupt: float = COURSE_COSTS.interrupt
    tcg_translate: float = COURSE_COSTS.tcg_translate
    tcg_execute: float = COURSE_COSTS.tcg_execute
    tcg_helper: float = COURSE_COSTS.tcg_helper

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ConfigurationError(f"cost {f.name!r} must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_costs(cls, costs: Costs) -> ExitCosts:
        """This VMM's view of a course cost model (see :data:`COURSE_FIELDS`)."""
        if not isinstance(costs, Costs):
            raise ConfigurationError(f"from_costs needs a virtcore.costs.Costs, got {costs!r}")
        return cls(**{mine: getattr(costs, theirs) for mine, theirs in COURSE_FIELDS.items()})

    @property
    def user_exit(self) -> float:
        """One exit handled in QEMU, round trip."""
        return self.vm_exit + 2 * self.kernel_user + self.emulate + self.vm_entry

    @property
    def kernel_exit(self) -> float:
        """One exit handled inside KVM (ioeventfd), round trip."""
        return self.vm_exit + self.in_kernel + self.vm_entry

    @classmethod
    def assumptions(cls) -> dict[str, str]:
        """Why each default has its size: the course model's note on the field it comes from.

        >>> sorted(ExitCosts.assumptions()) == sorted(f.name for f in fields(ExitCosts))
        True
        >>> ExitCosts.assumptions()["kernel_user"].startswith("= costs.context_switch:")
        True
        """
        notes = Costs.assumptions()
        return {mine: f"= costs.{theirs}: {notes[theirs]}" for mine, theirs in
                COURSE_FIELDS.items()}

    def describe(self) -> str:
        """Each price with its assumption.

        >>> DEFAULT_COSTS.describe().splitlines()[0]
        'ExitCosts (virtcore.costs, teaching assumptions; units ≈ ns, order of magnitude only)'
        """
        notes = self.assumptions()
        lines = ["ExitCosts (virtcore.costs, teaching assumptions; units ≈ ns, order of "
                 "magnitude only)"]
        for f in fields(self):
            lines.append(f"  {f.name:<19}{getattr(self, f.name):>7g}  {notes[f.name]}")
        return "\n".join(lines)


def as_exit_costs(costs: ExitCosts | Costs) -> ExitCosts:
    """``costs`` as :class:`ExitCosts` (a course :class:`~virtcore.costs.Costs` is converted).

    >>> as_exit_costs(COURSE_COSTS) == DEFAULT_COSTS
    True
    """
    if isinstance(costs, ExitCosts):
        return costs
    if isinstance(costs, Costs):
        return ExitCosts.from_costs(costs)
    raise ConfigurationError(f"costs must be a virtcore.costs.Costs or an ExitCosts, got "
                             f"{costs!r}")


#: The default prices (the course's :data:`virtcore.costs.DEFAULT_COSTS`).
DEFAULT_COSTS = ExitCosts.from_costs(COURSE_COSTS)


# ---------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------


class ExitLogEntry(NamedTuple):
    """One exit in a run's trace.

    ``path`` is ``"user"`` (handled in QEMU), ``"kernel"`` (handled in KVM:
    an ioeventfd or vhost kick, a ``hlt`` on the in-kernel irqchip) or ``"stop"``
    (returned to QEMU, which stopped).

    >>> e = ExitLogEntry(1, "KVM_EXIT_IO", "OUT port 0x3f8 size 1", "serial", "user", 4100)
    >>> str(e).split()
    ['1', 'KVM_EXIT_IO', 'OUT', 'port', '0x3f8', 'size', '1', 'serial', 'user', '4100', 'ns']
    """

    index: int  # type: ignore[assignment]  # the exit's number (shadows tuple.index)
    reason: str
    detail: str
    device: str
    path: str
    cost_ns: float

    def __str__(self) -> str:
        return (f"{self.index:4d}  {self.reason:<22} {self.detail:<40} {self.device:<8} "
                f"{self.path:<6} {self.cost_ns:8.0f} ns")


@dataclass
class ExitStats:
    """What the VMM counted: exits and their transitions, interrupts, simulated time.

    Attributes
    ----------
    exits : int
        VM exits of every kind.
    user_exits, kernel_exits : int
        Handled in QEMU / inside KVM.
    vm_exits, vm_entries : int
        Guest→host and host→guest switches.
    kernel_to_user, user_to_kernel : int
        ``KVM_RUN`` returning to QEMU / QEMU calling ``KVM_RUN`` again.
    by_reason, by_device : Counter
        Exits per ``KVM_EXIT_*`` name / per device.
    interrupts : int
        Interrupts signalled to the guest.
    requests : int
        Units of device work (disk commands, frames) completed.
    native_instructions : int
        Guest instructions that ran natively.
    iothread_wakeups, iothread_transitions : int
        Kicks that woke QEMU's I/O thread (ioeventfd) or the vhost worker, and the
        I/O thread's own kernel↔user crossings (0 with vhost).
    iothread_ns : float
        The part of ``time_ns`` spent by that thread rather than the vCPU's.
    time_ns : float
        Simulated time of everything above under the cost model.

    >>> s = ExitStats(kernel_to_user=3, user_to_kernel=2); s.transitions
    5
    """

    exits: int = 0
    user_exits: int = 0
    kernel_exits: int = 0
    vm_exits: int = 0
    vm_entries: int = 0
    kernel_to_user: int = 0
    user_to_kernel: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_device: Counter[str] = field(default_factory=Counter)
    interrupts: int = 0
    requests: int = 0
    native_instructions: int = 0
    register_accesses: int = 0
    iothread_wakeups: int = 0
    iothread_transitions: int = 0
    iothread_ns: float = 0.0
    time_ns: float = 0.0

    @property
    def transitions(self) -> int:
        """Kernel↔user crossings of the vCPU thread, in both directions."""
        return self.kernel_to_user + self.user_to_kernel

    @property
    def vcpu_ns(self) -> float:
        """Simulated time spent on the vCPU thread (``time_ns`` minus the I/O thread's)."""
        return self.time_ns - self.iothread_ns

    def __repr__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.by_reason.items()))
        return (
            f"ExitStats({self.exits} exits ({self.user_exits} to QEMU, {self.kernel_exits} in "
            f"KVM; {reasons or 'none'}), {self.transitions} kernel↔user transitions, "
            f"{self.interrupts} interrupts, {self.requests} device requests, "
            f"{self.time_ns / 1000:.1f} µs)"
        )


# ---------------------------------------------------------------------------
# Devices in "user space"
# ---------------------------------------------------------------------------


class VirtioNotifyPort(Device):
    """The kick register of a virtio device: a 32-bit write of a queue index notifies it.

    Stands for virtio-pci's QUEUE_NOTIFY register (simplified: one port per
    device, no PCI configuration).  The device's used-buffer notifications
    raise ``irq_line`` on the VMM's interrupt controller.

    >>> ram = GuestRAM(64 * 1024)
    >>> port = VirtioNotifyPort(VirtioBlk(ram, capacity_sectors=4), name="vblk")
    >>> port.ports
    range(49232, 49236)
    """

    def __init__(self, device: VirtioDevice, *, name: str = "virtio", base: int =
                 VIRTIO_NOTIFY_PORT, irq_line: int = 10, ioeventfd: bool = False,
                 vhost: bool = False) -> None:
        super().__init__(name)
        if not isinstance(device, VirtioDevice):
            raise ConfigurationError(f"a VirtioNotifyPort needs a VirtioDevice, not {device!r}")
        self.device = device
        self.ports = range(base, base + 4)
        self.irq_line = irq_line
        self.ioeventfd = ioeventfd or vhost  # vhost is always kicked through an ioeventfd
        self.vhost = vhost
        device.interrupt_callback = lambda _queue: self.interrupt()

    ports: range  # always set (a port device)

    def port_write(self, port: int, value: int) -> None:
        if port == self.ports.start:
            self.device.kick(value & 0xFFFF)

    def port_read(self, port: int) -> int:
        return 0

    def __repr__(self) -> str:
        fd = ", vhost" if self.vhost else ", ioeventfd" if self.ioeventfd else ""
        return f"VirtioNotifyPort({self.name} {self.ports.start:#x} -> {self.device!r}{fd})"


def _work_units(dev: Device) -> int:
    """Completed units of device work (for the device cost)."""
    if isinstance(dev, BlockDevice):
        return dev.reads + dev.writes + dev.errors
    if isinstance(dev, NetworkCard):
        return len(dev.sent) + len(dev.received)
    if isinstance(dev, VirtioNotifyPort):
        d = dev.device
        if isinstance(d, VirtioBlk):
            return d.requests
        if isinstance(d, VirtioNet):
            return d.tx_frames + d.rx_frames
    return 0


class QemuVMM:
    """A QEMU-like VMM: devices in user space, the loop on ``KVM_RUN``, exits counted and priced.

    Parameters
    ----------
    memory : MemoryLike
        The guest's RAM (devices DMA into it).
    costs : ExitCosts or virtcore.costs.Costs
        The cost model (default: the course's).
    devices : {"pc", "none"}
        ``"pc"``: a serial port (COM1), an ATA-like disk of ``disk_sectors``
        512-byte sectors and an MMIO network card, all completing at once.
    disk_sectors : int
        Size of the emulated disk.
    trace_limit : int
        Exits kept in :attr:`trace` (all are counted).

    Attributes
    ----------
    bus : virtcore.hw.devices.Bus
        The devices, as QEMU's memory/IO address space dispatch.
    irq : virtcore.hw.devices.InterruptController
        Interrupts the devices raise (counted as injections into the guest).
    stats : ExitStats
    trace : list of ExitLogEntry

    Examples
    --------
    >>> vmm = QemuVMM(GuestRAM(64 * 1024))
    >>> data = vmm.handle_exit(VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_IN, 1, 0x3FD)))
    >>> data.hex(), vmm.stats.user_exits, vmm.stats.time_ns    # LSR: THRE | TEMT
    ('60', 1, 4100.0)
    """

    def __init__(
        self,
        memory: MemoryLike,
        *,
        costs: ExitCosts | Costs = DEFAULT_COSTS,
        devices: str = "pc",
        disk_sectors: int = 256,
        trace_limit: int = 10_000,
    ) -> None:
        self.memory = memory
        self.costs = as_exit_costs(costs)
        self.irq = InterruptController()
        self.bus = Bus(self.irq, memory)
        self.stats = ExitStats()
        self.trace: list[ExitLogEntry] = []
        self.trace_limit = trace_limit
        self._raised = 0
        self._work = 0
        if devices == "pc":
            self.bus.attach(Serial())
            self.bus.attach(BlockDevice(sectors=disk_sectors, latency=0))
            self.bus.attach(NetworkCard(latency=0))
        elif devices != "none":
            raise ConfigurationError(f"devices must be 'pc' or 'none', got {devices!r}")

    # -- set-up ----------------------------------------------------------------------
    def add_device(self, device: Device) -> Device:
        """Attach an emulated device (a :class:`virtcore.hw.devices.Device`)."""
        return self.bus.attach(device)

    def add_virtio(self, device: VirtioDevice, *, name: str = "virtio",
                   port: int = VIRTIO_NOTIFY_PORT, irq_line: int = 10,
                   ioeventfd: bool = False, vhost: bool = False) -> VirtioNotifyPort:
        """Attach a virtio device behind a kick register at ``port``.

        With ``ioeventfd=True`` the kick is handled inside KVM — the vCPU thread does
        not return to user space — as QEMU sets up with ``KVM_IOEVENTFD``
        [KVM-API §4.59]; the eventfd then wakes QEMU's I/O thread, which does the
        device's work in user space.  With ``vhost=True`` a host-kernel worker does
        that work instead (vhost-net, vhost-scsi [VHOST]): no trip to user space at all.
        """
        kick = VirtioNotifyPort(device, name=name, base=port, irq_line=irq_line,
                                ioeventfd=ioeventfd, vhost=vhost)
        self.bus.attach(kick)
        return kick

    @property
    def serial(self) -> Serial:
        """COM1."""
        return self.bus["serial"]  # type: ignore[return-value]

    @property
    def output(self) -> str:
        """What the guest wrote to COM1."""
        return self.serial.text if "serial" in self.bus else ""

    # -- exits ---------------------------------------------------------------------------
    def _owner(self, port: int | None = None, addr: int | None = None) -> Device | None:
        for d in self.bus.devices:
            if port is not None and d.ports is not None and port in d.ports:
                return d
            if addr is not None and d.mmio is not None and addr in d.mmio:
                return d
        return None

    def handle_exit(self, ex: VcpuExit) -> bytes:
        """Emulate one I/O or MMIO exit and account for it; returns the data of an IN/read.

        Also counts HLT and other exits (they return to QEMU too) — those
        return ``b""``.
        """
        st = self.stats
        c = self.costs
        bus = self.bus
        bus.advance(bus.now + 1)  # one tick per exit; devices complete within the tick
        result = b""
        dev: Device | None = None
        path = "user"
        if ex.reason == KVM_EXIT_IO and ex.io is not None:
            io = ex.io
            dev = self._owner(port=io.port)
            mask = (1 << (8 * io.size)) - 1
            if io.direction == KVM_EXIT_IO_OUT:
                for k in range(max(io.count, 1)):
                    chunk = io.data[k * io.size : (k + 1) * io.size]
                    bus.port_out(io.port, int.from_bytes(chunk, "little") & mask)
            else:
                result = b"".join(
                    (bus.port_in(io.port) & mask).to_bytes(io.size, "little")
                    for _ in range(max(io.count, 1))
                )
            if isinstance(dev, VirtioNotifyPort) and dev.ioeventfd \
                    and io.direction == KVM_EXIT_IO_OUT:
                path = "kernel"
            detail = str(io)
        elif ex.reason == KVM_EXIT_MMIO and ex.mmio is not None:
            mm = ex.mmio
            dev = self._owner(addr=mm.phys_addr)
            if mm.is_write:  # nobody there: the write vanishes (QEMU's unassigned memory)
                bus.mmio_write(mm.phys_addr, int.from_bytes(mm.data[: mm.len], "little"))
            else:
                v = bus.mmio_read(mm.phys_addr)
                v = MASK32 if v is None else v
                result = (v & ((1 << (8 * mm.len)) - 1)).to_bytes(mm.len, "little")
            detail = str(mm)
        else:
            detail = ex.detail
            path = "stop"
        bus.advance(bus.now)
        st.exits += 1
        st.vm_exits += 1
        st.by_reason[ex.name] += 1
        name = dev.name if dev is not None else "-"
        if dev is not None:
            st.by_device[name] += 1
        if path == "kernel":
            st.kernel_exits += 1
            st.vm_entries += 1
            cost = c.kernel_exit
            # the eventfd wakes the thread that does the device's work: QEMU's I/O thread
            # (in user space: a crossing each way) or the vhost worker (in the kernel)
            vhost = isinstance(dev, VirtioNotifyPort) and dev.vhost
            side = c.emulate + (c.in_kernel if vhost else 2 * c.kernel_user)
            st.iothread_wakeups += 1
            st.iothread_transitions += 0 if vhost else 2
            st.iothread_ns += side
            cost += side
        elif path == "user":
            st.user_exits += 1
            st.kernel_to_user += 1
            st.user_to_kernel += 1
            st.vm_entries += 1
            cost = c.user_exit
        else:  # back to QEMU, which does not re-enter
            st.user_exits += 1
            st.kernel_to_user += 1
            cost = c.vm_exit + c.kernel_user
        cost += self.charge_devices()
        st.time_ns += cost
        if len(self.trace) < self.trace_limit:
            self.trace.append(ExitLogEntry(st.exits, ex.name, detail, name, path, cost))
        return result

    def _halt_in_kernel(self) -> None:
        """Account a ``hlt`` that KVM handled (in-kernel irqchip): a VM exit, no return."""
        st, c = self.stats, self.costs
        st.exits += 1
        st.vm_exits += 1
        st.kernel_exits += 1
        st.by_reason["hlt (in KVM)"] += 1
        cost = c.vm_exit + c.in_kernel + self.charge_devices()
        st.time_ns += cost
        if len(self.trace) < self.trace_limit:
            self.trace.append(ExitLogEntry(st.exits, "hlt (in KVM)",
                                           "vCPU halted in the kernel (KVM_MP_STATE_HALTED)",
                                           "-", "kernel", cost))

    def charge_devices(self) -> float:
        """Count device work done and interrupts raised since the last call; return their cost.

        Called after every exit; call it yourself after driving the bus directly
        (as TCG does).  The interrupts are acknowledged: counted as injected.
        """
        c = self.costs
        st = self.stats
        raised = sum(self.irq.raised)
        work = sum(_work_units(d) for d in self.bus.devices)
        n_irq, self._raised = raised - self._raised, raised
        n_work, self._work = work - self._work, work
        st.interrupts += n_irq
        st.requests += n_work
        while self.irq.acknowledge() is not None:  # counted as injected; the guests here poll
            pass
        return n_irq * c.interrupt + n_work * c.device

    def charge_native(self, instructions: int) -> None:
        """Guest instructions that ran natively (between exits)."""
        self.stats.native_instructions += instructions
        self.stats.time_ns += instructions * self.costs.native_instruction

    # -- the loop --------------------------------------------------------------------
    def run(self, vcpu: Vcpu, *, max_exits: int = 100_000) -> QemuRun:
        """The vCPU thread's loop: ``KVM_RUN``, handle the exit, again — until HLT or an error.

        A ``KVM_EXIT_HLT`` (a VM without an in-kernel irqchip, like the LWN program's
        [LWN15]) ends the run in QEMU.  With the in-kernel irqchip the ``hlt`` stays in
        KVM: the vCPU reports ``halted`` (``KVM_MP_STATE_HALTED``) and the run ends
        there, accounted as an exit handled inside KVM — QEMU never sees it [KVM-X86].
        Errors (``KVM_EXIT_SHUTDOWN``, ``FAIL_ENTRY``, ``INTERNAL_ERROR``) end it too.
        """
        if not callable(getattr(vcpu, "run", None)) or not callable(getattr(vcpu, "complete",
                                                                            None)):
            raise QemuError(f"{vcpu!r} does not speak the Vcpu protocol (run, complete)")
        stop = "max_exits"
        last: VcpuExit | None = None
        for _ in range(max_exits):
            ex = vcpu.run()
            last = ex
            if ex.steps:
                self.charge_native(ex.steps)
            if ex.reason == KVM_EXIT_IO and ex.io is not None:
                data = self.handle_exit(ex)
                if ex.io.direction == KVM_EXIT_IO_IN:
                    vcpu.complete(data)
                continue
            if ex.reason == KVM_EXIT_MMIO and ex.mmio is not None:
                data = self.handle_exit(ex)
                if not ex.mmio.is_write:
                    vcpu.complete(data)
                continue
            if ex.reason == KVM_EXIT_INTR and ex.halted:
                self._halt_in_kernel()
                stop = "KVM_MP_STATE_HALTED"
                break
            if ex.reason == KVM_EXIT_INTR:  # a signal: nothing to emulate, just re-enter
                self.stats.kernel_to_user += 1
                self.stats.user_to_kernel += 1
                self.stats.time_ns += 2 * self.costs.kernel_user
                continue
            self.handle_exit(ex)
            stop = ex.name
            break
        return QemuRun(stop, self.output, tuple(self.trace), self.stats, last)


@dataclass(frozen=True, repr=False)
class QemuRun:
    """The result of :meth:`QemuVMM.run`: why it stopped, serial output, exit trace, stats.

    >>> vcpu = TeachingVcpu("movi r1, 'a'; out 0x3f8, r1; hlt".replace(";", chr(10)))
    >>> run = QemuVMM(vcpu.memory).run(vcpu)
    >>> run.stop, run.output, len(run.trace), run.last_exit.halted
    ('KVM_MP_STATE_HALTED', 'a', 2, True)
    """

    stop: str
    output: str
    trace: tuple[ExitLogEntry, ...]
    stats: ExitStats
    last_exit: VcpuExit | None

    def format_trace(self, limit: int = 40) -> str:
        """The exit trace as text, one exit per line."""
        lines = [str(r) for r in self.trace[:limit]]
        if len(self.trace) > limit:
            lines.append(f"... {len(self.trace) - limit} more exits")
        return "\n".join(lines)

    def __repr__(self) -> str:
        out = self.output if len(self.output) <= 60 else self.output[:57] + "..."
        return (f"QemuRun(stopped on {self.stop}, output {out!r}, {self.stats!r})\n"
                + self.format_trace(12))


# ---------------------------------------------------------------------------
# vCPUs speaking the protocol
# ---------------------------------------------------------------------------


class TeachingVcpu:
    """A teaching-ISA vCPU (virtcore.hw CPU in guest mode) behind the :class:`Vcpu` protocol.

    The CPU runs the guest in VT-x-like non-root mode: ``in``/``out`` exit
    (unconditional I/O exiting) and become :data:`KVM_EXIT_IO`; ``hlt`` exits
    to KVM (pc past the ``hlt``, as ``rip`` is past x86's [LWN15]): with the
    in-kernel irqchip (``irqchip=True``, what QEMU sets up on x86) KVM keeps it and
    the vCPU sleeps — :meth:`run` returns ``KVM_EXIT_INTR`` with ``halted`` set, what a
    VMM sees when a signal ends that sleep; without it (``irqchip=False``, the LWN
    program's VM) it becomes :data:`KVM_EXIT_HLT` in user space; a load or
    store to a guest-physical address with no RAM becomes :data:`KVM_EXIT_MMIO`
    (KVM finds it by an EPT fault; here the machine check such an access raises is
    made to exit, and the instruction is decoded to find the register — what KVM's
    instruction emulator does [KVM-X86]).
    Data for an ``in`` or an MMIO load lands in the register on the next
    :meth:`run` [KVM-API §5].  The teaching ISA's ``in``/``out`` move 4
    bytes, so ``size`` is 4.

    Other stops: a trap with no guest handler → :data:`KVM_EXIT_SHUTDOWN`
    (like a triple fault); an exit the model cannot emulate →
    :data:`KVM_EXIT_INTERNAL_ERROR`; the step budget → :data:`KVM_EXIT_INTR`
    (as if a signal interrupted ``KVM_RUN``).

    Parameters
    ----------
    program : str or Program
        Guest code (teaching-ISA assembly), loaded at ``origin``.
    memory_size : int
        Guest RAM in bytes.
    origin : int
        Load address and initial pc.
    budget : int
        Steps per :meth:`run` before :data:`KVM_EXIT_INTR`.
    irqchip : bool
        Whether the VM has KVM's in-kernel interrupt controller (default True, as QEMU).

    >>> v = TeachingVcpu('''
    ...     movi r1, 7
    ...     out  0x3f8, r1
    ...     in   r2, 0x3fd
    ...     ld   r3, [r0+0x7000]     ; no RAM there: MMIO
    ...     hlt''', memory_size=0x4000)
    >>> str(v.run())
    'KVM_EXIT_IO OUT port 0x3f8 size 4 data 07000000'
    >>> str(v.run())
    'KVM_EXIT_IO IN port 0x3fd size 4'
    >>> v.complete((0x60).to_bytes(4, "little")); str(v.run())
    'KVM_EXIT_MMIO READ 0x7000 len 4'
    >>> v.complete((42).to_bytes(4, "little")); ex = v.run()
    >>> ex.name, ex.halted, v.cpu.regs[2], v.cpu.regs[3]
    ('KVM_EXIT_INTR', True, 96, 42)
    >>> TeachingVcpu("hlt", irqchip=False).run().name
    'KVM_EXIT_HLT'
    """

    def __init__(self, program: str | Program, *, memory_size: int = 64 * 1024,
                 origin: int = 0, budget: int = 1_000_000, irqchip: bool = True) -> None:
        self.memory = PhysicalMemory(memory_size, 4096)
        self.mmu = MMU(self.memory, PagingConfig.x86_32())
        self.bus = Bus(InterruptController(), self.memory)  # empty: every MMIO access exits
        self.cpu = CPU(self.memory, self.mmu, self.bus)
        prog = program if isinstance(program, Program) else assemble(program, origin)
        self.memory.load_words(prog.origin, prog.words)
        self.program = prog
        self.cpu.pc = origin
        self.cpu.regs[SP] = memory_size
        self.vmcs = VMCS(exception_bitmap={TrapCause.MACHINE_CHECK})
        self.cpu.enter_guest(self.vmcs)
        self.budget = budget
        self.irqchip = irqchip
        self._after: tuple[str, int] | None = None  # ("in", reg) or ("next", 0)
        self._data = b""
        self.exits = 0

    def complete(self, data: bytes) -> None:
        """Data for the pending ``in`` / MMIO load (used on the next :meth:`run`)."""
        self._data = bytes(data)

    def run(self) -> VcpuExit:
        """Run until the next exit."""
        cpu = self.cpu
        if self._after is not None:
            kind, reg = self._after
            if kind == "in":
                cpu.regs[reg] = int.from_bytes(self._data[:4].ljust(4, b"\0"), "little") & MASK32
            cpu.pc = (cpu.pc + 4) & MASK32
            self._after = None
            self._data = b""
        r = cpu.run(self.budget)
        self.exits += 1
        steps = r.steps
        if r.reason is StopReason.BUDGET:
            return VcpuExit(KVM_EXIT_INTR, steps=steps, detail="step budget spent")
        if r.reason is StopReason.HALTED:
            return self._hlt(steps)
        ev = r.event
        if not isinstance(ev, VMExit):
            return VcpuExit(KVM_EXIT_SHUTDOWN, steps=steps, detail=str(ev))
        q = ev.qualification
        if ev.reason is ExitReason.IO_INSTRUCTION:
            port = int(q["port"])  # type: ignore[call-overload]
            if q["direction"] == "out":
                self._after = ("next", 0)
                data = (int(q["value"]) & MASK32).to_bytes(4, "little")  # type: ignore[call-overload]
                return VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_OUT, 4, port, 1, data),
                                steps=steps)
            self._after = ("in", int(q["register"]))  # type: ignore[call-overload]
            return VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_IN, 4, port), steps=steps)
        if ev.reason is ExitReason.HLT:
            cpu.pc = (ev.pc + 4) & MASK32
            return self._hlt(steps)
        if ev.reason is ExitReason.EXCEPTION_NMI and q.get("vector") == TrapCause.MACHINE_CHECK \
                and "address" in q:
            return self._mmio(ev, int(q["address"]), steps)  # type: ignore[call-overload]
        return VcpuExit(KVM_EXIT_INTERNAL_ERROR, steps=steps,
                        detail=f"suberror {KVM_INTERNAL_ERROR_EMULATION}: {ev}")

    def _hlt(self, steps: int) -> VcpuExit:
        if self.irqchip:  # kvm_emulate_halt with the LAPIC in the kernel [KVM-X86]
            return VcpuExit(KVM_EXIT_INTR, steps=steps, detail="hlt: halted in KVM",
                            halted=True)
        return VcpuExit(KVM_EXIT_HLT, steps=steps)

    def _mmio(self, ev: VMExit, addr: int, steps: int) -> VcpuExit:
        """Decode the load/store at ``ev.pc`` (KVM's emulator does this on an MMIO exit)."""
        cpu = self.cpu
        word = self.memory.read_word(ev.pc) if ev.pc + 4 <= self.memory.size else 0
        row = decode(word)
        rd = (word >> 20) & 0xF
        if row is ISA["ld"]:
            cpu.pc = ev.pc
            self._after = ("in", rd)
            return VcpuExit(KVM_EXIT_MMIO, mmio=MMIOExit(addr, 4, False), steps=steps)
        if row is ISA["st"]:
            cpu.pc = ev.pc
            self._after = ("next", 0)
            data = (cpu.regs[rd] & MASK32).to_bytes(4, "little")
            return VcpuExit(KVM_EXIT_MMIO, mmio=MMIOExit(addr, 4, True, data), steps=steps)
        return VcpuExit(KVM_EXIT_INTERNAL_ERROR, steps=steps,
                        detail=f"suberror {KVM_INTERNAL_ERROR_EMULATION}: cannot emulate "
                        f"{row.mnemonic if row else 'word'} touching MMIO at {addr:#x}")

    def __repr__(self) -> str:
        return (f"TeachingVcpu(pc={self.cpu.pc:#x}, {self.cpu.retired} instructions, "
                f"{self.exits} exits)")


class KvmApiVcpu:
    """A vCPU descriptor of :mod:`virtcore.kvm.api` behind the :class:`Vcpu` protocol.

    Works with both backends of that API — the simulated ``/dev/kvm`` and the
    real one (:mod:`virtcore.kvm.real`) — because it uses only what a C VMM
    uses: ``ioctl(vcpufd, KVM_RUN, 0)``, then ``exit_reason`` and the ``io`` /
    ``mmio`` members of the mapped ``kvm_run``; an IN's data goes to
    ``io.data_offset`` and an MMIO read's into ``mmio.data`` before the next
    ``KVM_RUN`` [KVM-API §5].  ``EINTR`` from ``KVM_RUN`` (a signal; the
    model's run budget) becomes :data:`KVM_EXIT_INTR`, which the loop
    re-enters, as QEMU does — unless ``KVM_GET_MP_STATE`` then says the vCPU is
    halted (a ``hlt`` on the in-kernel irqchip), which is reported as ``halted``;
    other errors are the kernel's :class:`OSError`, passed through.

    The real KVM does not say how many instructions the guest ran between
    exits, so ``steps`` is 0 and a run's simulated time counts exits only.

    Parameters
    ----------
    vcpu : virtcore.kvm.api.VcpuFd
        From ``vm.create_vcpu(id)``.
    run : virtcore.kvm.api.kvm_run, optional
        The vCPU's mapping; default ``vcpu.mmap()``.

    Examples
    --------
    A teaching-ISA guest on the ``/dev/kvm`` model, its devices in this VMM:

    >>> from virtcore.hw.asm import assemble
    >>> from virtcore.kvm import api
    >>> from virtcore.kvm.model import open_model_kvm
    >>> kvm = open_model_kvm(); vm = kvm.create_vm()
    >>> mem = api.GuestMemory(0x1000)
    >>> mem.write(0, assemble("movi r1, 'k'; out 0x3f8, r1; hlt".replace(";", chr(10))).to_bytes())
    >>> vm.set_user_memory_region(0, 0, 0x1000, mem.address)
    >>> vcpu = vm.create_vcpu(0)
    >>> s = vcpu.get_sregs(); s.cs.base = s.cs.selector = 0; vcpu.set_sregs(s)
    >>> vcpu.set_regs(api.kvm_regs(rip=0, rflags=2))
    >>> run = QemuVMM(SlotMemory(mem, 0)).run(KvmApiVcpu(vcpu))
    >>> run.output, [e.reason for e in run.trace]
    ('k', ['KVM_EXIT_IO', 'KVM_EXIT_HLT'])
    """

    def __init__(self, vcpu: Any, run: Any = None) -> None:
        from virtcore.kvm.api import read_exit  # the /dev/kvm API (model or real)

        self.fd = vcpu
        self.kvm_run = run if run is not None else vcpu.mmap()
        self._read_exit = read_exit
        self._last: VcpuExit | None = None
        self.exits = 0

    def run(self) -> VcpuExit:
        """``KVM_RUN``, and the exit read out of ``kvm_run`` (``EINTR`` → :data:`KVM_EXIT_INTR`)."""
        self.exits += 1
        try:
            self.fd.run()
        except InterruptedError as e:  # a signal (the model: its run budget); QEMU re-enters
            self._last = None
            halted = getattr(self.fd, "get_mp_state", None)
            if halted is not None and halted() == _KVM_MP_STATE_HALTED:
                return VcpuExit(KVM_EXIT_INTR, detail="hlt: halted in KVM", halted=True)
            return VcpuExit(KVM_EXIT_INTR, detail=f"KVM_RUN: EINTR ({e.strerror or e})")
        rec = self._read_exit(self.kvm_run)
        if rec.reason == KVM_EXIT_IO:
            ex = VcpuExit(KVM_EXIT_IO, io=IOExit(rec.direction or 0, rec.size or 0,
                                                  rec.port or 0, rec.count or 0, rec.data))
        elif rec.reason == KVM_EXIT_MMIO:
            ex = VcpuExit(KVM_EXIT_MMIO, mmio=MMIOExit(rec.phys_addr or 0, rec.size or 0,
                                                        bool(rec.is_write), rec.data))
        else:
            detail = f"suberror {rec.suberror}" if rec.suberror is not None else ""
            ex = VcpuExit(rec.reason, detail=detail)
        self._last = ex
        return ex

    def complete(self, data: bytes) -> None:
        """Hand back an IN's or an MMIO read's bytes for the next ``KVM_RUN``."""
        ex = self._last
        if ex is None:
            return
        if ex.io is not None and ex.io.direction == KVM_EXIT_IO_IN:
            n = ex.io.size * max(ex.io.count, 1)
            self.kvm_run.set_io_data(bytes(data[:n]).ljust(n, b"\xff"))
        elif ex.mmio is not None and not ex.mmio.is_write:
            n = ex.mmio.len
            self.kvm_run.set_mmio_data(bytes(data[:n]).ljust(n, b"\xff"))

    def __repr__(self) -> str:
        return f"KvmApiVcpu({self.fd!r}, {self.exits} exits)"


class SlotMemory:
    """Guest-physical view of user memory backing one memory slot (for DMA by devices).

    ``memory`` is anything with ``read(offset, n)`` / ``write(offset, data)``
    and a length — :class:`virtcore.kvm.api.GuestMemory` — mapped at guest
    address ``guest_phys_addr``.  Addresses below the slot are not RAM.

    >>> class Buf(bytearray):
    ...     def read(self, o, n): return bytes(self[o:o + n])
    ...     def write(self, o, d): self[o:o + len(d)] = d
    >>> m = SlotMemory(Buf(4096), 0x1000)
    >>> m.write_bytes(0x1010, b"dma"); m.read_bytes(0x1010, 3), hex(m.size)
    (b'dma', '0x2000')
    """

    def __init__(self, memory: Any, guest_phys_addr: int) -> None:
        self.memory = memory
        self.base = guest_phys_addr
        self.size = guest_phys_addr + len(memory)

    def _off(self, paddr: int, n: int) -> int:
        if paddr < self.base or n < 0 or paddr + n > self.size:
            raise AddressError(f"guest-physical {paddr:#x}..{paddr + n:#x} is not in the slot "
                               f"{self.base:#x}..{self.size:#x}")
        return paddr - self.base

    def read_bytes(self, paddr: int, n: int) -> bytes:
        """``n`` bytes at guest-physical ``paddr``."""
        return bytes(self.memory.read(self._off(paddr, n), n))

    def write_bytes(self, paddr: int, data: bytes) -> None:
        """Store ``data`` at guest-physical ``paddr``."""
        self.memory.write(self._off(paddr, len(data)), bytes(data))

    def __repr__(self) -> str:
        return f"SlotMemory({self.base:#x}..{self.size:#x})"


# ---------------------------------------------------------------------------
# A guest driver written in Python: each register access is an exit
# ---------------------------------------------------------------------------


class GuestIO:
    """Register accesses of a guest driver modelled in Python, each one trapping to the VMM.

    A driver in a real guest executes ``out``/``in`` or a ``mov`` to an MMIO
    address; under KVM each such instruction exits.  This object turns the
    Python driver's accesses into exactly those exits (:meth:`QemuVMM.handle_exit`),
    and prices the driver's own instructions as native (:meth:`compute`).
    With ``native=True`` the same driver runs on bare hardware: accesses go
    straight to the devices at ``register_access`` cost, no exits.

    >>> vmm = QemuVMM(GuestRAM(64 * 1024))
    >>> gio = GuestIO(vmm)
    >>> gio.outl(0x3F8, ord("k"), size=1); hex(gio.inl(0x3FD, size=1)), vmm.output
    ('0x60', 'k')
    >>> vmm.stats.exits
    2
    """

    def __init__(self, vmm: QemuVMM, *, native: bool = False) -> None:
        self.vmm = vmm
        self.native = native

    def compute(self, instructions: int) -> None:
        """The driver's own work: ``instructions`` guest instructions, natively."""
        self.vmm.charge_native(instructions)

    def _direct(self) -> None:
        vmm = self.vmm
        vmm.stats.register_accesses += 1
        vmm.stats.time_ns += vmm.costs.register_access
        vmm.bus.advance(vmm.bus.now + 1)

    def outl(self, port: int, value: int, size: int = 4) -> None:
        """``out port, value``."""
        if self.native:
            self._direct()
            self.vmm.bus.port_out(port, value & ((1 << (8 * size)) - 1))
            self.vmm.stats.time_ns += self.vmm.charge_devices()
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.vmm.handle_exit(VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_OUT, size, port, 1,
                                                             data)))

    def inl(self, port: int, size: int = 4) -> int:
        """``in port``."""
        if self.native:
            self._direct()
            v = self.vmm.bus.port_in(port) & ((1 << (8 * size)) - 1)
            self.vmm.stats.time_ns += self.vmm.charge_devices()
            return v
        data = self.vmm.handle_exit(VcpuExit(KVM_EXIT_IO, io=IOExit(KVM_EXIT_IO_IN, size, port)))
        return int.from_bytes(data, "little")

    def mmio_write(self, addr: int, value: int, size: int = 4) -> None:
        """A store to an MMIO register."""
        if self.native:
            self._direct()
            self.vmm.bus.mmio_write(addr, value & MASK32)
            self.vmm.stats.time_ns += self.vmm.charge_devices()
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.vmm.handle_exit(VcpuExit(KVM_EXIT_MMIO, mmio=MMIOExit(addr, size, True, data)))

    def mmio_read(self, addr: int, size: int = 4) -> int:
        """A load from an MMIO register."""
        if self.native:
            self._direct()
            v = self.vmm.bus.mmio_read(addr)
            self.vmm.stats.time_ns += self.vmm.charge_devices()
            return MASK32 if v is None else v
        data = self.vmm.handle_exit(VcpuExit(KVM_EXIT_MMIO, mmio=MMIOExit(addr, size, False)))
        return int.from_bytes(data, "little")


# ---------------------------------------------------------------------------
# Comparisons: emulated device vs virtio (S4.5)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IOPathResult:
    """One I/O path's figures for the same workload.

    Attributes
    ----------
    name : str
    requests : int
    exits, user_exits, kernel_exits, transitions, interrupts, kicks : int
    time_ns : float
        Simulated time for all requests.
    mean_latency_ns : float
        Mean time from a request's submission to the guest seeing it done.
    data_ok : bool
        Every byte read or sent matched the reference.
    iothread_transitions : int
        Kernel↔user crossings of QEMU's I/O thread (ioeventfd: it still runs the device).
    vcpu_time_ns : float
        The part of ``time_ns`` on the vCPU thread.

    >>> r = IOPathResult("x", 10, 5, 5, 0, 10, 10, 0, 50_000.0, 5_000.0, True)
    >>> r.exits_per_request, r.requests_per_s
    (0.5, 200000.0)
    """

    name: str
    requests: int
    exits: int
    user_exits: int
    kernel_exits: int
    transitions: int
    interrupts: int
    kicks: int
    time_ns: float
    mean_latency_ns: float
    data_ok: bool
    iothread_transitions: int = 0
    vcpu_time_ns: float = 0.0

    @property
    def exits_per_request(self) -> float:
        """VM exits per request."""
        return self.exits / self.requests if self.requests else 0.0

    @property
    def requests_per_s(self) -> float:
        """Requests per simulated second."""
        return self.requests / self.time_ns * 1e9 if self.time_ns else math.inf


@dataclass(frozen=True, repr=False)
class IOComparison:
    """Several I/O paths on one workload (rows in a fixed order).

    >>> cmp = compare_block_io(requests=16, batch=4)
    >>> [r.name for r in cmp.rows]
    ['native-legacy', 'emulated', 'native', 'virtio', 'virtio+ioeventfd', 'vhost']
    >>> cmp["emulated"].exits_per_request, cmp["virtio"].exits_per_request
    (5.0, 0.25)
    """

    workload: str
    rows: tuple[IOPathResult, ...]
    costs: ExitCosts

    def __getitem__(self, name: str) -> IOPathResult:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no path {name!r}; have {', '.join(r.name for r in self.rows)}")

    def speedup(self, faster: str, slower: str) -> float:
        """How many times more requests/s ``faster`` gets than ``slower``."""
        return self[faster].requests_per_s / self[slower].requests_per_s

    def __repr__(self) -> str:
        head = ("path", "exits/req", "to QEMU", "in KVM", "k↔u vCPU", "k↔u I/O thr.",
                "interrupts", "kicks", "req/s", "mean lat µs", "data")
        rows = [head]
        for r in self.rows:
            rows.append((
                r.name, f"{r.exits_per_request:.3g}", str(r.user_exits), str(r.kernel_exits),
                str(r.transitions), str(r.iothread_transitions), str(r.interrupts), str(r.kicks),
                f"{r.requests_per_s:,.0f}", f"{r.mean_latency_ns / 1000:.1f}",
                "ok" if r.data_ok else "BAD",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"IOComparison: {self.workload}"]
        for i, row in enumerate(rows):
            lines.append("  " + "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
            if i == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _result(name: str, vmm: QemuVMM, requests: int, kicks: int, latencies: Sequence[float],
            ok: bool) -> IOPathResult:
    st = vmm.stats
    return IOPathResult(name, requests, st.exits, st.user_exits, st.kernel_exits,
                        st.transitions, st.interrupts, kicks, st.time_ns,
                        sum(latencies) / len(latencies) if latencies else 0.0, ok,
                        st.iothread_transitions, st.vcpu_ns)


#: The I/O paths the comparisons know, in their order: each pair shares its driver,
#: batching and interrupt policy with its native baseline.
PATHS = ("native-legacy", "emulated", "native", "virtio", "virtio+ioeventfd", "vhost")
#: Paths with the register-by-register legacy driver, and with the queue (virtio) driver.
LEGACY_PATHS = ("native-legacy", "emulated")
QUEUE_PATHS = ("native", "virtio", "virtio+ioeventfd", "vhost")

#: Guest instructions a driver spends per request besides register accesses (assumptions).
EMULATED_DRIVER_INSTRUCTIONS = 30
VIRTIO_DRIVER_INSTRUCTIONS = 60


def _check_workload(requests: int, batch: int, size: int, unit: int, what: str,
                    paths: Sequence[str] = PATHS) -> None:
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise ConfigurationError(f"paths must be some of {PATHS}, got {tuple(paths)!r}")
    for n, v in (("requests", requests), ("batch", batch), (what, size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigurationError(f"{n} must be a positive int, got {v!r}")
    if size % unit:
        raise ConfigurationError(f"{what} must be a multiple of {unit}, got {size}")


def compare_block_io(
    requests: int = 64,
    batch: int = 8,
    request_bytes: int = 4096,
    *,
    write_fraction: float = 0.5,
    queue_size: int = 32,
    event_idx: bool = True,
    costs: ExitCosts | Costs = DEFAULT_COSTS,
    seed: int = 0,
    paths: Sequence[str] = PATHS,
) -> IOComparison:
    """The same disk workload through six paths, each virtual one beside a fair native one.

    The guest issues ``requests`` reads and writes of ``request_bytes`` at
    random sectors, ``batch`` at a time (an application with that many I/Os
    outstanding).  Two drivers, each measured natively and virtualized with the
    *same* batching and interrupt policy, so that no virtual path can look faster
    than the hardware because its baseline was handicapped:

    - **native-legacy** — the ATA-like disk's register driver on bare hardware:
      five register accesses per request (SECTOR, DMA_ADDR, COUNT, COMMAND, then
      STATUS), one request at a time, one completion interrupt per request;
    - **emulated** — the same driver in a KVM guest, the disk emulated in QEMU:
      each of the five accesses is a VM exit to user space and back;
    - **native** — a queue-based device on bare hardware (the virtqueue protocol,
      as NVMe-like devices work): requests written to the ring in memory, one
      doorbell register write per batch, completion interrupts suppressed like
      virtio's (``event_idx``) — the fair baseline for the three below;
    - **virtio** — virtio-blk: the same ring and batching, but the doorbell (the
      kick) is a VM exit to QEMU, which runs the device;
    - **virtio+ioeventfd** — the kick is an ioeventfd: the vCPU thread stays in
      KVM, but QEMU's I/O thread is woken and still does the device's work in
      user space (two crossings of its own);
    - **vhost** — the device's data path in a host-kernel worker (vhost), woken by
      the same ioeventfd: no trip to user space at all.

    Every read is checked against a reference copy of the disk
    (``data_ok``).  Simulated time comes from ``costs`` (the course's cost model by
    default).  ``paths`` picks some of :data:`PATHS` (default: all six).

    Returns
    -------
    IOComparison

    Examples
    --------
    >>> cmp = compare_block_io(requests=32, batch=8)
    >>> all(r.data_ok for r in cmp.rows)
    True
    >>> cmp.speedup("virtio", "emulated") > 2
    True
    >>> cmp.speedup("native", "virtio") > 1 and cmp.speedup("native-legacy", "emulated") > 1
    True
    """
    sector = 512
    _check_workload(requests, batch, request_bytes, sector, "request_bytes", paths)
    if batch > 4096:
        raise ConfigurationError(f"batch must be at most 4096, got {batch}")
    nsec = request_bytes // sector
    disk_sectors = max(64, 4 * nsec * batch)
    rng = make_rng(seed)
    plan = [(rng.random() < write_fraction, rng.randrange(0, disk_sectors - nsec + 1))
            for _ in range(requests)]
    qs = max(queue_size, _pow2(3 * batch))  # 3 descriptors per request
    # queue + request headers from 0x1000, then the data buffers
    buf_base = max(0x20000, (0x2000 + 64 * qs + 0xFFF) & ~0xFFF)
    mem_size = buf_base + batch * request_bytes + 0x1000

    ramp = bytes(range(256)) * (request_bytes // 256 + 2)

    def pattern(i: int) -> bytes:  # a different byte ramp for each request
        k = (i * 131) & 0xFF
        return ramp[k : k + request_bytes]

    rows = []
    for name in [p for p in LEGACY_PATHS if p in paths]:
        mem = GuestRAM(mem_size)
        vmm = QemuVMM(mem, costs=costs, disk_sectors=disk_sectors)
        gio = GuestIO(vmm, native=name == "native-legacy")
        disk: BlockDevice = vmm.bus["disk"]  # type: ignore[assignment]
        ref = bytearray(disk.data)
        lat: list[float] = []
        ok = True
        for b0 in range(0, requests, batch):
            t0 = vmm.stats.time_ns
            for k, i in enumerate(range(b0, min(b0 + batch, requests))):
                is_write, s = plan[i]
                buf = buf_base + k * request_bytes
                if is_write:
                    data = pattern(i)
                    mem.write_bytes(buf, data)
                    ref[s * sector : s * sector + request_bytes] = data
                gio.compute(EMULATED_DRIVER_INSTRUCTIONS)
                base = disk.base
                gio.outl(base + BLK_SECTOR, s)
                gio.outl(base + BLK_DMA_ADDR, buf)
                gio.outl(base + BLK_COUNT, nsec)
                gio.outl(base + BLK_COMMAND, 2 if is_write else 1)
                status = gio.inl(base + BLK_STATUS)
                ok &= status == STATUS_DONE
                if not is_write:
                    ok &= mem.read_bytes(buf, request_bytes) == bytes(
                        ref[s * sector : s * sector + request_bytes])
                lat.append(vmm.stats.time_ns - t0)
        ok &= bytes(disk.data) == bytes(ref)
        rows.append(_result(name, vmm, requests, 0, lat, ok))

    for name in [p for p in QUEUE_PATHS if p in paths]:
        mem = GuestRAM(mem_size)
        vmm = QemuVMM(mem, costs=costs, disk_sectors=8)
        dev = VirtioBlk(mem, capacity_sectors=disk_sectors, event_idx=event_idx)
        dev.driver_init()
        vmm.add_virtio(dev, name="vblk", ioeventfd=name == "virtio+ioeventfd",
                       vhost=name == "vhost")
        gio = GuestIO(vmm, native=name == "native")
        def kick_blk(g: GuestIO = gio) -> None:
            g.outl(VIRTIO_NOTIFY_PORT, 0)

        drv = VirtioBlkDriver(mem, dev, queue_size=qs, base=0x1000, notify=kick_blk)
        ref = bytearray(dev.disk)
        lat = []
        ok = True
        for b0 in range(0, requests, batch):
            t0 = vmm.stats.time_ns
            for k, i in enumerate(range(b0, min(b0 + batch, requests))):
                is_write, s = plan[i]
                buf = buf_base + k * request_bytes
                expect = None  # the device serves a batch in order: reads see earlier writes
                if is_write:
                    data = pattern(i)
                    mem.write_bytes(buf, data)
                    ref[s * sector : s * sector + request_bytes] = data
                else:
                    expect = bytes(ref[s * sector : s * sector + request_bytes])
                gio.compute(VIRTIO_DRIVER_INSTRUCTIONS)
                drv.submit(VIRTIO_BLK_T_OUT if is_write else VIRTIO_BLK_T_IN, s, buf,
                           request_bytes, token=(k, expect))
            drv.kick()
            for (k, expect), status, _written in drv.collect():  # type: ignore[misc]
                ok &= status == VIRTIO_BLK_S_OK
                if expect is not None:
                    ok &= mem.read_bytes(buf_base + k * request_bytes, request_bytes) == expect
                gio.compute(VIRTIO_DRIVER_INSTRUCTIONS // 2)
                lat.append(vmm.stats.time_ns - t0)
        ok &= bytes(dev.disk) == bytes(ref) and len(drv.completed) == requests
        rows.append(_result(name, vmm, requests, drv.queue.kicks, lat, ok))
    wl = (f"{requests} requests of {request_bytes} B, {int(100 * write_fraction)}% writes, "
          f"batch {batch}, event_idx={event_idx}, seed {seed}")
    return IOComparison(wl, tuple(rows), as_exit_costs(costs))


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def compare_net_tx(
    frames: int = 64,
    batch: int = 8,
    frame_bytes: int = 1000,
    *,
    queue_size: int = 32,
    event_idx: bool = True,
    costs: ExitCosts | Costs = DEFAULT_COSTS,
    seed: int = 0,
    paths: Sequence[str] = PATHS,
) -> IOComparison:
    """The guest sends ``frames`` frames to the host over the six paths of :func:`compare_block_io`.

    - **native-legacy / emulated** — the MMIO network card's driver: TX_ADDR,
      TX_LEN, DOORBELL, then STATUS (TX_DONE) read and cleared — five MMIO
      accesses per frame, each an exit to QEMU under KVM;
    - **native / virtio / virtio+ioeventfd / vhost** — virtio-net's transmit queue:
      header + frame in guest memory, one doorbell (natively a register write,
      virtualized a kick) per ``batch`` frames; with ioeventfd the kick stays in KVM
      and QEMU's I/O thread sends the frames, with vhost a host-kernel worker does.

    Every frame that reaches the host is checked against what the guest sent.

    >>> cmp = compare_net_tx(frames=16, batch=4)
    >>> cmp["emulated"].exits_per_request, cmp["virtio"].exits_per_request, cmp["virtio"].data_ok
    (5.0, 0.25, True)
    >>> cmp["native"].requests_per_s > cmp["vhost"].requests_per_s > cmp["virtio"].requests_per_s
    True
    """
    _check_workload(frames, batch, frame_bytes, 1, "frame_bytes", paths)
    if batch > 4096:
        raise ConfigurationError(f"batch must be at most 4096, got {batch}")
    if frame_bytes > 1514:
        raise ConfigurationError(f"a frame has at most 1514 bytes, got {frame_bytes}")
    rng = make_rng(seed)
    payloads = [bytes(rng.randrange(256) for _ in range(frame_bytes)) for _ in range(frames)]
    qs = max(queue_size, _pow2(batch))
    mem_size = 0x30000 + qs * 2 * (1536 + 64)
    rows = []
    for name in [p for p in LEGACY_PATHS if p in paths]:
        mem = GuestRAM(mem_size)
        vmm = QemuVMM(mem, costs=costs)
        gio = GuestIO(vmm, native=name == "native-legacy")
        nic: NetworkCard = vmm.bus["nic"]  # type: ignore[assignment]
        lat: list[float] = []
        ok = True
        buf = 0x1000
        for b0 in range(0, frames, batch):
            t0 = vmm.stats.time_ns
            for i in range(b0, min(b0 + batch, frames)):
                mem.write_bytes(buf, payloads[i])
                gio.compute(EMULATED_DRIVER_INSTRUCTIONS)
                gio.mmio_write(NIC_BASE + NIC_TX_ADDR, buf)
                gio.mmio_write(NIC_BASE + NIC_TX_LEN, frame_bytes)
                gio.mmio_write(NIC_BASE + NIC_TX_DOORBELL, 1)
                status = gio.mmio_read(NIC_BASE + NIC_STATUS)
                ok &= bool(status & NIC_TX_DONE)
                gio.mmio_write(NIC_BASE + NIC_STATUS, NIC_TX_DONE)
                lat.append(vmm.stats.time_ns - t0)
        ok &= nic.sent == payloads
        rows.append(_result(name, vmm, frames, 0, lat, ok))
    for name in [p for p in QUEUE_PATHS if p in paths]:
        mem = GuestRAM(mem_size)
        vmm = QemuVMM(mem, costs=costs)
        dev = VirtioNet(mem, event_idx=event_idx)
        dev.driver_init()
        wire: list[bytes] = []
        dev.on_transmit = wire.append
        vmm.add_virtio(dev, name="vnet", ioeventfd=name == "virtio+ioeventfd",
                       vhost=name == "vhost", irq_line=9)
        gio = GuestIO(vmm, native=name == "native")
        def kick_net(q: int, g: GuestIO = gio) -> None:
            g.outl(VIRTIO_NOTIFY_PORT, q)

        drv = VirtioNetDriver(mem, dev, queue_size=qs, base=0x1000, notify=kick_net)
        lat = []
        for b0 in range(0, frames, batch):
            t0 = vmm.stats.time_ns
            idx = range(b0, min(b0 + batch, frames))
            for i in idx:
                gio.compute(VIRTIO_DRIVER_INSTRUCTIONS)
                drv.send(payloads[i], kick=False)
            drv.tx.kick()
            drv.reclaim_tx()
            lat.extend(vmm.stats.time_ns - t0 for _ in idx)
        ok = wire == payloads
        rows.append(_result(name, vmm, frames, drv.tx.kicks, lat, ok))
    wl = f"{frames} frames of {frame_bytes} B, batch {batch}, event_idx={event_idx}, seed {seed}"
    return IOComparison(wl, tuple(rows), as_exit_costs(costs))


"""A Xen domain (域): its vCPUs, its shared-info page, its state — Xen's ``struct domain``.

The real rules modelled [XEN-GLOSSARY; XEN-H; XL-1; XL-INFO-C]:

- a **domain** is "Xen's unit of resource ownership": some RAM (machine frames behind a P2M,
  :class:`~virtcore.xen.memory.DomainMemory`) and virtual CPUs; its **domid** is allocated
  sequentially from 0; ids from ``DOMID_FIRST_RESERVED`` (0x7FF0) up are never domains.
- **Domain 0** is created by Xen at boot; it is the **control domain** (``is_privileged``: may
  use domctl/sysctl) and the **hardware domain** (owns the devices). A **driver domain** is an
  unprivileged domain that was given a device. **DomU**s are the ordinary guests.
- guest types as ``xl.cfg`` ``type=`` says: ``"pv"`` (paravirtualised kernel, hypercalls by
  ``SYSCALL``), ``"hvm"`` (unmodified guest with hardware assist, ``VMCALL``/``VMMCALL``),
  ``"pvh"`` (HVM container without emulated devices) [XL-CFG; XEN-HCALL-ABI].
- each vCPU has a ``vcpu_info`` in the shared-info page: ``evtchn_upcall_pending``,
  ``evtchn_upcall_mask`` and ``evtchn_pending_sel`` (one bit per word of ``evtchn_pending``);
  the shared-info page has ``evtchn_pending[64]`` and ``evtchn_mask[64]`` (64-bit words:
  4096 ports) [XEN-H].
- the state ``xl list`` prints is six letters, ``r b p s c d`` (running, blocked, paused,
  shutdown, the shutdown reason as ``"-rscwS"[reason]``, dying), computed as ``xl_info.c`` does
  (the man page calls column 5 "crashed"; the code prints the reason letter) [XL-1; XL-INFO-C].

Simplified: "running" means *runnable* — not paused, shut down, dying or blocked on all vCPUs —
since this model has no wall-clock execution; a vCPU's run state is ``blocked`` after
``SCHEDOP_block`` until an event is pending for it.

>>> from virtcore.xen.memory import MachineMemory
>>> d = Domain(1, "web", "pv", MachineMemory(8).new_domain_memory(1, 4), vcpus=2)
>>> d, d.state_letters()
(Domain(d1 'web' pv, 2 vCPUs, 0/4 pages, r-----), 'r-----')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from virtcore.errors import ConfigurationError
from virtcore.xen.constants import BITS_PER_XEN_ULONG, EVTCHN_2L_NR_CHANNELS

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtcore.xen.evtchn import Channel
    from virtcore.xen.grant import GrantTable, MapTrack
    from virtcore.xen.memory import DomainMemory

__all__ = ["GUEST_TYPES", "SHUTDOWN_LETTERS", "Domain", "DomainStats", "SharedInfo", "VCPUInfo"]

#: ``xl.cfg`` ``type=`` values [XL-CFG].
GUEST_TYPES = ("pv", "hvm", "pvh")
#: ``xl_info.c``'s ``shutdown_reason_letters`` [XL-INFO-C].
SHUTDOWN_LETTERS = "-rscwS"


@dataclass
class VCPUInfo:
    """One vCPU: its ``vcpu_info`` fields in the shared-info page plus Xen's run state.

    >>> VCPUInfo(0)
    VCPUInfo(0: upcall_pending=0 upcall_mask=0 pending_sel=0x0, upcalls=0)
    """

    vcpu_id: int
    evtchn_upcall_pending: int = 0
    evtchn_upcall_mask: int = 0
    evtchn_pending_sel: int = 0
    blocked: bool = False
    upcalls: int = 0

    def __repr__(self) -> str:
        b = " blocked" if self.blocked else ""
        return (f"VCPUInfo({self.vcpu_id}: upcall_pending={self.evtchn_upcall_pending}"
                f" upcall_mask={self.evtchn_upcall_mask}"
                f" pending_sel={self.evtchn_pending_sel:#x}, upcalls={self.upcalls}{b})")


class SharedInfo:
    """The 2-level event-channel bitmaps of ``struct shared_info``: PENDING and MASK per port.

    ``evtchn_pending[w]`` bit ``b`` is port ``w * 64 + b`` [XEN-H]. Both start clear; a guest
    that wants a port masked sets its MASK bit itself (Linux masks ports until it binds them).

    >>> s = SharedInfo(); s.test_and_set(s.evtchn_pending, 65), s.test(s.evtchn_pending, 65)
    (False, True)
    >>> s.pending_ports()
    [65]
    """

    __slots__ = ("evtchn_mask", "evtchn_pending")

    def __init__(self) -> None:
        self.evtchn_pending: list[int] = [0] * BITS_PER_XEN_ULONG
        self.evtchn_mask: list[int] = [0] * BITS_PER_XEN_ULONG

    @staticmethod
    def test(words: list[int], port: int) -> bool:
        """Bit ``port`` of ``words``."""
        return bool(words[port >> 6] >> (port & 63) & 1)

    @staticmethod
    def test_and_set(words: list[int], port: int) -> bool:
        """Set bit ``port``; return its old value (``guest_test_and_set_bit``)."""
        w, bit = port >> 6, 1 << (port & 63)
        old = words[w] & bit
        words[w] |= bit
        return bool(old)

    @staticmethod
    def test_and_clear(words: list[int], port: int) -> bool:
        """Clear bit ``port``; return its old value."""
        w, bit = port >> 6, 1 << (port & 63)
        old = words[w] & bit
        words[w] &= ~bit
        return bool(old)

    def pending_ports(self) -> list[int]:
        """Ports whose PENDING bit is set."""
        return [w * 64 + b for w, word in enumerate(self.evtchn_pending) if word
                for b in range(64) if word >> b & 1]

    def masked_ports(self) -> list[int]:
        """Ports whose MASK bit is set."""
        return [w * 64 + b for w, word in enumerate(self.evtchn_mask) if word
                for b in range(64) if word >> b & 1]


@dataclass
class DomainStats:
    """Counters of one domain (what a notebook plots)."""

    hypercalls: int = 0
    hypercall_errors: int = 0
    events_sent: int = 0
    events_received: int = 0
    upcalls: int = 0
    traps: int = 0
    exits: int = 0
    cost_ns: float = 0.0
    by_hypercall: dict[str, int] = field(default_factory=dict)


class Domain:
    """A domain (域): id, name, type, privilege, vCPUs, memory, channels, grants, state.

    Made by the hypervisor (``XEN_DOMCTL_createdomain`` or at boot for Dom0); a notebook reads
    it.  Guest-kernel behaviour (what a driver does on an event) is registered with
    :meth:`on_event`.

    Parameters
    ----------
    domid : int
    name : str
    type : {"pv", "hvm", "pvh"}
    memory : DomainMemory
        Its P2M over the host's machine frames.
    vcpus : int
    privileged : bool
        Control domain (may use domctl/sysctl).
    hardware : bool
        Hardware domain (owns the devices at boot).
    """

    def __init__(self, domid: int, name: str, type: str, memory: DomainMemory, *,
                 vcpus: int = 1, privileged: bool = False, hardware: bool = False,
                 weight: int = 256, cap: int = 0, max_evtchn_port: int = EVTCHN_2L_NR_CHANNELS - 1
                 ) -> None:
        if type not in GUEST_TYPES:
            raise ConfigurationError(f"guest type must be one of {GUEST_TYPES}, got {type!r}")
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 64:
            raise ConfigurationError(f"vcpus must be an int in 1..64, got {vcpus!r}")
        self.domid = domid
        self.name = name
        self.type = type
        self.memory = memory
        self.is_privileged = privileged
        self.is_hardware = hardware
        self.vcpus: list[VCPUInfo] = [VCPUInfo(i) for i in range(vcpus)]
        self.shared_info = SharedInfo()
        self.evtchn: dict[int, Channel] = {}
        self.max_evtchn_port = max_evtchn_port
        self.grant_table: GrantTable | None = None
        self.maptrack: MapTrack | None = None
        self.pause_count = 0  # controller pauses (xl pause / createdomain)
        self.is_shutting_down = False
        self.is_shut_down = False
        self.shutdown_code = -1
        self.is_dying = False
        self.weight = weight
        self.cap = cap
        self.ioports: set[int] = set()
        self.irqs: set[int] = set()
        self.iomem: set[int] = set()
        self.devices: set[str] = set()
        self.pirq_to_port: dict[int, int] = {}
        self.virq_to_port: dict[tuple[int, int], int] = {}
        self.cpu_time_ns = 0.0
        self.stats = DomainStats()
        self.config: dict[str, object] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.console: list[str] = []
        self.kernel_pages: set[int] = set()

    def alloc_page(self) -> int | None:
        """The guest kernel's page allocator: a populated pfn not yet in use (or None)."""
        for pfn in sorted(self.memory.p2m):
            if pfn not in self.kernel_pages:
                self.kernel_pages.add(pfn)
                return pfn
        return None

    def free_page(self, pfn: int) -> None:
        """Give a page back to the guest kernel's allocator."""
        self.kernel_pages.discard(pfn)

    def frame_of(self, pfn: int) -> int:
        """The value this guest puts in a grant's ``frame`` for its page ``pfn``: the machine
        frame for PV (gfn == mfn), the pfn itself for HVM/PVH (auto-translated)."""
        return int(self.memory.pfn_to_mfn(pfn)) if self.type == "pv" else pfn  # type: ignore

    # ------------------------------------------------------------------ state
    @property
    def paused(self) -> bool:
        """Paused by the controller (``xl pause``, or created and not yet unpaused)."""
        return self.pause_count > 0

    @property
    def blocked(self) -> bool:
        """All vCPUs blocked (``SCHEDOP_block``) with nothing pending."""
        return all(v.blocked for v in self.vcpus)

    @property
    def runnable(self) -> bool:
        """Eligible for scheduling: not paused, shut down or dying, some vCPU not blocked."""
        return not (self.paused or self.is_shut_down or self.is_dying or self.blocked)

    def state_letters(self) -> str:
        """The six-letter ``xl list`` state, as ``xl_info.c`` prints it [XL-INFO-C].

        >>> from virtcore.xen.memory import MachineMemory
        >>> d = Domain(3, "x", "hvm", MachineMemory(4).new_domain_memory(3, 1))
        >>> d.is_shut_down, d.shutdown_code = True, 3; d.state_letters()
        '---sc-'
        """
        running = self.runnable
        reason = self.shutdown_code if self.is_shut_down else 0
        letter = SHUTDOWN_LETTERS[reason] if 0 <= reason < len(SHUTDOWN_LETTERS) else "?"
        return ("r" if running else "-") + ("b" if self.blocked and not self.paused
                                            and not self.is_shut_down else "-") + (
            "p" if self.paused else "-") + ("s" if self.is_shut_down else "-") + letter + (
            "d" if self.is_dying else "-")

    @property
    def memory_kib(self) -> int:
        """Memory in KiB (pages populated × frame size)."""
        return self.memory.nr_pages * self.memory.machine.frame_size // 1024

    @property
    def hypercall_instruction(self) -> str:
        """How this domain enters Xen: 64-bit PV ``SYSCALL``, HVM/PVH ``VMCALL`` [XEN-HCALL-ABI]."""
        return "SYSCALL" if self.type == "pv" else "VMCALL"

    # ------------------------------------------------------------------ guest kernel side
    def on_event(self, port: int, handler: Callable[[int], None]) -> None:
        """Register the guest kernel's handler for ``port`` (Linux ``bind_evtchn_to_irqhandler``).

        The handler runs inside the guest's upcall when the port is found pending.
        """
        self.handlers[port] = handler

    def __repr__(self) -> str:
        roles = []
        if self.is_privileged:
            roles.append("control")
        if self.is_hardware:
            roles.append("hardware")
        r = f" [{'+'.join(roles)}]" if roles else ""
        return (f"Domain(d{self.domid} {self.name!r} {self.type}{r}, {len(self.vcpus)} vCPUs,"
                f" {self.memory.nr_pages}/{self.memory.max_pages} pages, {self.state_letters()})")

"""The Xen hypervisor (Xen 虚拟机监控器): boots first, owns the machine, runs the domains.

The real structure modelled [XEN-SOSP03; XEN-GLOSSARY; XIG ch. 2]:

- Xen is a small hypervisor on the bare hardware; the boot loader starts *Xen* first (with the
  Dom0 kernel as a module); Xen sets up its own memory management (frame table, M2P), scheduler,
  timers, event channels and grant tables, then builds **Domain 0** — the privileged *control
  domain* (may use ``domctl``/``sysctl``) and the *hardware domain* (gets every device) — and
  unpauses it.  Dom0's Linux then starts xenstored, the toolstack (``xl``) and the backend
  drivers (S3.4, S3.5, S5.1–S5.3).
- Every guest request enters through one hypercall dispatcher (:mod:`virtcore.xen.hypercall`);
  results are 0 or ``-errno`` and a failed call changes nothing.
- Xen has no device drivers of its own: the hardware is reached by the domain that owns each
  device (:mod:`virtcore.xen.hwiface`); other domains use split drivers.

What a notebook calls: ``xen = Xen()`` (boots, see :attr:`boot_trace`), ``xen.xl`` (the
toolstack in Dom0), ``xen.hypercall(domid, nr, ...)``, ``xen.trace``, ``xen.domains``.

Simplified: one host object holds Xen's and Dom0's user-space state (XenStore, toolstack); time
is the sum of the priced steps (:data:`virtcore.costs.DEFAULT_COSTS`), not a clock that runs
guest code; an upcall runs the guest's handler immediately when Xen returns to the guest.

>>> xen = Xen(frames=256)
>>> for e in xen.boot_trace[:2]: print(e.text)
boot loader starts Xen (xen.gz) with the Dom0 kernel as a module
Xen: frame table and M2P for 256 machine frames of 4096 bytes
>>> xen.dom0
Domain(d0 'Domain-0' pv [control+hardware], 1 vCPUs, 64/64 pages, r-----)
>>> xen.hypercall(0, 99)   # no such hypercall
-38
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from virtcore.costs import DEFAULT_COSTS, Costs
from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.xen.constants import (
    DOMID_FIRST_RESERVED,
    DOMID_SELF,
    ENOSYS,
    EVTCHNOP_NAMES,
    GNTTABOP_NAMES,
    HYPERCALL_NAMES,
    PHYSDEVOP_NAMES,
    SCHEDOP_NAMES,
    HYPERVISOR_domctl,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_grant_table_op,
    HYPERVISOR_memory_op,
    HYPERVISOR_physdev_op,
    HYPERVISOR_sched_op,
    HYPERVISOR_sysctl,
    HYPERVISOR_xen_version,
    errno_name,
)
from virtcore.xen.domain import Domain
from virtcore.xen.hypercall import HypercallTable, Trace
from virtcore.xen.memory import MachineMemory

if TYPE_CHECKING:
    from virtcore.xen.hwiface import Platform
    from virtcore.xen.toolstack import XL
    from virtcore.xen.xenstore import XenStore

__all__ = ["XEN_VERSION", "Xen", "XenError"]

#: What ``xen_version`` (17) returns: major << 16 | minor (this model claims 4.19).
XEN_VERSION = (4 << 16) | 19

_CMD_NAMES = {
    HYPERVISOR_event_channel_op: EVTCHNOP_NAMES,
    HYPERVISOR_grant_table_op: GNTTABOP_NAMES,
    HYPERVISOR_sched_op: SCHEDOP_NAMES,
    HYPERVISOR_physdev_op: PHYSDEVOP_NAMES,
}


class XenError(VirtcoreError):
    """Misuse of the simulator from Python (not a guest's bad argument, which is ``-errno``)."""


_HEX_FIELDS = frozenset({"host_addr", "dev_bus_addr", "frame", "gmfn"})


_OUT_FIELDS = {
    "EvtchnAllocUnbound": {"port"}, "EvtchnBindInterdomain": {"local_port"},
    "EvtchnBindVirq": {"port"}, "EvtchnBindPirq": {"port"}, "EvtchnBindIpi": {"port"},
    "EvtchnStatus": {"status", "vcpu", "remote_dom", "remote_port", "pirq", "virq"},
    "GnttabMapGrantRef": {"status", "handle", "dev_bus_addr"},
    "GnttabUnmapGrantRef": {"status"}, "GnttabCopy": {"status"},
    "GnttabSetupTable": {"status", "frame_list"},
    "GnttabQuerySize": {"nr_frames", "max_nr_frames", "status"},
}


def _struct(a: Any) -> str:
    """A structure's IN fields (its OUT fields are results, not arguments)."""
    out = _OUT_FIELDS.get(type(a).__name__, set())
    shown = []
    for name in a.__dataclass_fields__:
        if name in out:
            continue
        v = getattr(a, name)
        if name == "cmd" and type(a).__name__ in ("XenDomctl", "XenSysctl"):
            from virtcore.xen.constants import XEN_DOMCTL_NAMES, XEN_SYSCTL_NAMES

            names = XEN_DOMCTL_NAMES if type(a).__name__ == "XenDomctl" else XEN_SYSCTL_NAMES
            shown.append(names.get(v, repr(v)))
            continue
        if name == "interface_version":
            continue
        hexed = name in _HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool)
        if isinstance(v, list) and len(v) > 6:
            shown.append(f"{name}=[{', '.join(map(repr, v[:3]))}, … {len(v)} items]")
        else:
            shown.append(f"{name}={v:#x}" if hexed else f"{name}={v!r}")
    return f"{type(a).__name__}({', '.join(shown)})"


def _describe(nr: int, args: tuple[Any, ...]) -> str:
    parts: list[str] = []
    names = _CMD_NAMES.get(nr)
    for i, a in enumerate(args):
        if i == 0 and names is not None and isinstance(a, int):
            parts.append(names.get(a, str(a)))
        elif hasattr(a, "__dataclass_fields__"):
            parts.append(_struct(a))
        elif isinstance(a, list) and a and all(hasattr(x, "__dataclass_fields__") for x in a):
            parts.append("[" + ", ".join(_struct(x) for x in a) + "]")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


class Xen:
    """One host running Xen: machine frames, domains, the hypercall table, the trace.

    Parameters
    ----------
    frames : int
        Machine frames (4 KiB each by default).
    frame_size : int
        Bytes per frame (4096 on x86).
    pcpus : int
        Physical CPUs (for the credit scheduler).
    dom0_memory_pages, dom0_vcpus : int
        Domain 0's size.
    name : str
        Host name (for migration between hosts).
    vendor : {"intel", "amd"}
        Decides ``VMCALL`` or ``VMMCALL`` for HVM guests.
    costs : Costs
        Prices of steps (default :data:`virtcore.costs.DEFAULT_COSTS`).
    nr_pirqs : int
        Physical IRQ numbers (``nr_irqs``).
    gnttab_max_frames : int
        Per-domain grant-table limit (Xen's command-line default 64) [XEN-CMDLINE].

    Attributes
    ----------
    memory : MachineMemory
    domains : dict of int to Domain
    hypercalls : HypercallTable
    trace : Trace
    boot_trace : list of TraceEvent
    platform : Platform
        The physical devices and who owns them (:mod:`virtcore.xen.hwiface`).
    xenstore : XenStore
        Dom0's xenstored.
    """

    def __init__(self, *, frames: int = 1024, frame_size: int = 4096, pcpus: int = 2,
                 dom0_memory_pages: int | None = None, dom0_vcpus: int = 1, name: str = "host0",
                 vendor: str = "intel", costs: Costs = DEFAULT_COSTS, nr_pirqs: int = 64,
                 gnttab_max_frames: int = 64, disk_sectors: int = 256) -> None:
        if dom0_memory_pages is None:
            dom0_memory_pages = min(256, frames // 4)
        if vendor not in ("intel", "amd"):
            raise ConfigurationError(f"vendor must be 'intel' or 'amd', got {vendor!r}")
        if isinstance(pcpus, bool) or not isinstance(pcpus, int) or pcpus < 1:
            raise ConfigurationError(f"pcpus must be an int >= 1, got {pcpus!r}")
        self.name = name
        self.vendor = vendor
        self.costs = costs
        self.pcpus = pcpus
        self.nr_pirqs = nr_pirqs
        self.gnttab_max_frames = gnttab_max_frames
        self.trace = Trace()
        self.domains: dict[int, Domain] = {}
        self.hypercalls = HypercallTable()
        self._next_domid = 0
        self._upcalls: deque[tuple[int, int]] = deque()
        self._delivering = False
        self._depth = 0
        self.clock_ns = 0.0
        self._boot(frames, frame_size, dom0_memory_pages, dom0_vcpus, disk_sectors)

    # ------------------------------------------------------------------ boot
    def _boot(self, frames: int, frame_size: int, dom0_pages: int, dom0_vcpus: int,
              disk_sectors: int) -> None:
        from virtcore.xen import control, grant, hwiface, memop, sched, vcpu
        from virtcore.xen.evtchn import do_event_channel_op
        from virtcore.xen.xenstore import XenStore

        t = self.trace
        t.add("boot", None, "boot loader starts Xen (xen.gz) with the Dom0 kernel as a module")
        self.memory = MachineMemory(frames, frame_size)
        t.add("boot", None, f"Xen: frame table and M2P for {frames} machine frames of"
                            f" {frame_size} bytes")
        reg = self.hypercalls.register
        reg(HYPERVISOR_event_channel_op, do_event_channel_op)
        reg(HYPERVISOR_grant_table_op, grant.do_grant_table_op)
        reg(HYPERVISOR_memory_op, memop.do_memory_op)
        reg(HYPERVISOR_domctl, control.do_domctl)
        reg(HYPERVISOR_sysctl, control.do_sysctl)
        reg(HYPERVISOR_sched_op, sched.do_sched_op)
        reg(HYPERVISOR_physdev_op, hwiface.do_physdev_op)
        reg(HYPERVISOR_xen_version, lambda xen, dom, v, args: XEN_VERSION)
        reg(vcpu.HYPERVISOR_console_io, vcpu.do_console_io)
        t.add("boot", None, f"Xen: hypercall table ({len(self.hypercalls.numbers())} entries),"
                            " event channels (2-level, 4096 ports), grant tables")
        t.add("boot", None, f"Xen: credit scheduler on {self.pcpus} pCPUs")
        self.platform: Platform = hwiface.Platform(self, disk_sectors=disk_sectors)
        t.add("boot", None, "Xen: IOMMU on; PCI devices found: "
                            + ", ".join(self.platform.devices))
        dom0 = self.create_domain("Domain-0", "pv", dom0_pages, vcpus=dom0_vcpus,
                                  privileged=True, hardware=True)
        populated = dom0.memory.populate_physmap(range(dom0_pages))
        t.add("boot", None, f"Xen: build Domain 0 (privileged control + hardware domain),"
                            f" {populated} pages")
        self.platform.give_all_to(dom0)
        t.add("boot", None, "Xen: Dom0 owns every device: " + ", ".join(sorted(dom0.devices)))
        dom0.pause_count = 0
        t.add("boot", None, "Xen: unpause Domain 0; Dom0 Linux boots with its native drivers")
        self.xenstore: XenStore = XenStore(self)
        t.add("boot", None, "Dom0: xenstored, the xl toolstack and the backend drivers start")
        self.boot_trace = list(t)
        self._xl: XL | None = None

    #: Xen's own parts (S3.4): it does CPU and memory virtualization itself …
    components = ("credit scheduler", "memory manager (frame table, M2P, P2M)", "timers",
                  "event channels", "grant tables", "hypercall table", "IOMMU control")
    #: … but holds no drivers for ordinary devices: Dom0 (or a driver domain) does (S5.3).
    drivers: tuple[str, ...] = ()

    # ------------------------------------------------------------------ domains
    @property
    def dom0(self) -> Domain:
        """Domain 0."""
        return self.domains[0]

    @property
    def xl(self) -> XL:
        """The ``xl`` toolstack running in Dom0 (:class:`~virtcore.xen.toolstack.XL`)."""
        if self._xl is None:
            from virtcore.xen.toolstack import XL

            self._xl = XL(self)
        return self._xl

    def domain(self, ref: int | str | Domain) -> Domain:
        """A live domain by id, name or itself; raises :class:`XenError`."""
        if isinstance(ref, Domain):
            if self.domains.get(ref.domid) is ref:
                return ref
        elif isinstance(ref, str):
            for d in self.domains.values():
                if d.name == ref:
                    return d
        elif isinstance(ref, int) and ref in self.domains:
            return self.domains[ref]
        raise XenError(f"no domain {ref!r} on {self.name}")

    def lookup_any(self, cur: Domain, domid: object) -> Domain | None:
        """``rcu_lock_domain_by_any_id``: DOMID_SELF is the caller; None if no such domain."""
        if isinstance(domid, bool) or not isinstance(domid, int):
            return None
        if domid == DOMID_SELF:
            return cur
        d = self.domains.get(domid)
        return None if d is None or d.is_dying else d

    def create_domain(self, name: str, type: str, max_pages: int, *, vcpus: int = 1,
                      privileged: bool = False, hardware: bool = False) -> Domain:
        """Xen's ``domain_create``: a new paused domain with empty memory (host side).

        Guests are created through ``XEN_DOMCTL_createdomain`` from Dom0 (``xen.xl.create``).
        """
        from virtcore.xen.grant import GrantTable, MapTrack

        domid = self._alloc_domid()
        mem = self.memory.new_domain_memory(domid, max_pages)
        d = Domain(domid, name, type, mem, vcpus=vcpus, privileged=privileged,
                   hardware=hardware)
        d.grant_table = GrantTable(d, self.gnttab_max_frames)
        d.maptrack = MapTrack()
        d.pause_count = 1
        self.domains[domid] = d
        return d

    def _alloc_domid(self) -> int:
        for _ in range(DOMID_FIRST_RESERVED):
            domid = self._next_domid
            self._next_domid = (self._next_domid + 1) % DOMID_FIRST_RESERVED
            if (domid not in self.domains and domid not in self.memory.domains
                    and domid not in self.memory.owner):  # a zombie's frames still held
                return domid
        raise XenError("no free domain ids")

    def create_guest(self, name: str, *, memory_pages: int = 16, vcpus: int = 1,
                     type: str = "pv", **config: Any) -> Domain:
        """Create and start a DomU through Dom0's toolstack (``xl create``); returns it."""
        cfg = {"name": name, "memory_pages": memory_pages, "vcpus": vcpus, "type": type}
        cfg.update(config)
        return self.xl.create(cfg)

    # ------------------------------------------------------------------ hypercalls
    def hypercall(self, caller: int | Domain, nr: int, *args: Any, vcpu: int = 0) -> int:
        """Domain ``caller`` makes hypercall ``nr`` with ``args``; returns 0/value or ``-errno``.

        The call is traced with the transfer instruction of the caller's type and priced:
        a PV hypercall as one trap in and one out, an HVM/PVH one as a VM exit and entry.
        """
        dom = self.domain(caller)
        if dom.is_dying or dom.is_shut_down or dom.paused:
            state = "dying" if dom.is_dying else "shut down" if dom.is_shut_down else "paused"
            raise XenError(f"d{dom.domid} is {state}: it runs no code and makes no hypercalls")
        if isinstance(vcpu, bool) or not isinstance(vcpu, int) or not 0 <= vcpu < len(dom.vcpus):
            raise XenError(f"d{dom.domid} has no vCPU {vcpu!r}")
        handler = self.hypercalls.get(nr)
        c = self.costs
        cost = 2 * (c.trap if dom.type == "pv" else c.vm_exit)
        name = HYPERCALL_NAMES.get(nr, str(nr)) if isinstance(nr, int) else repr(nr)
        ev = None
        if self.trace.enabled:  # recorded before the handler runs, so its steps follow it
            insn = dom.hypercall_instruction
            if insn == "VMCALL" and self.vendor == "amd":
                insn = "VMMCALL"
            ev = self.trace.add("hypercall", dom.domid, f"{name}({_describe(nr, args)})"
                                f"   [{insn}]", cost, notify=False)
        else:
            self.trace.add("hypercall", dom.domid, "", cost)
        self._depth += 1
        try:
            rc = -ENOSYS if handler is None else handler(self, dom, vcpu, args)
        finally:
            self._depth -= 1
        if ev is not None:
            ev.text = ev.text.replace("   [", f" = {errno_name(rc)}   [", 1)
            for fn in self.trace.listeners:  # after its result: nested steps came first
                fn(ev)
        st = dom.stats
        st.hypercalls += 1
        st.by_hypercall[name] = st.by_hypercall.get(name, 0) + 1
        if rc < 0:
            st.hypercall_errors += 1
        st.cost_ns += cost
        self.clock_ns += cost
        if self._depth == 0:
            self.deliver()
        return rc

    # ------------------------------------------------------------------ upcalls
    def queue_upcall(self, domid: int, vcpu: int) -> None:
        """Remember that ``domid``'s vCPU has ``evtchn_upcall_pending`` newly set."""
        self._upcalls.append((domid, vcpu))
        if self._depth == 0:
            self.deliver()

    def deliver(self) -> int:
        """Make the pending upcalls (when Xen returns to each guest); returns how many ran.

        A vCPU with ``evtchn_upcall_mask`` set, or a paused domain, keeps its upcall pending.
        """
        if self._delivering or not self._upcalls:
            return 0
        from virtcore.xen.evtchn import guest_do_upcall

        self._delivering = True
        ran = 0
        try:
            q = self._upcalls
            kept: list[tuple[int, int]] = []
            while q:
                domid, v = q.popleft()
                d = self.domains.get(domid)
                if d is None or d.is_dying or d.is_shut_down:
                    continue
                vi = d.vcpus[v]
                if not vi.evtchn_upcall_pending:
                    continue
                if vi.evtchn_upcall_mask or d.paused:
                    kept.append((domid, v))
                    continue
                self._depth += 1
                try:
                    guest_do_upcall(self, d, v)
                finally:
                    self._depth -= 1
                ran += 1
            q.extend(kept)
        finally:
            self._delivering = False
        return ran

    def deliver_later(self, d: Domain) -> None:
        """Re-queue upcalls a paused domain kept (called when it is unpaused)."""
        for v in d.vcpus:
            if v.evtchn_upcall_pending:
                self._upcalls.append((d.domid, v.vcpu_id))

    def set_upcall_mask(self, domid: int, vcpu: int, masked: bool) -> None:
        """The guest writes ``vcpu_info.evtchn_upcall_mask`` (Linux ``xen_irq_disable/enable``).

        Unmasking with an upcall pending delivers it (Linux forces the callback).
        """
        d = self.domain(domid)
        vi = d.vcpus[vcpu]
        vi.evtchn_upcall_mask = 1 if masked else 0
        if not masked and vi.evtchn_upcall_pending:
            self._upcalls.append((d.domid, vcpu))
            self.deliver()

    # ------------------------------------------------------------------ memory access
    def can_access(self, domid: int, mfn: int, write: bool) -> bool:
        """May domain ``domid`` read (or write) machine frame ``mfn``?

        Yes if it owns the frame, or holds a grant mapping of it (writable for a write).  This
        is the rule Xen enforces through validated page tables and the IOMMU.
        """
        if self.memory.owner_of(mfn) == domid:  # type: ignore[arg-type]
            return True
        d = self.domains.get(domid)
        if d is None or d.maptrack is None:
            return False
        return d.maptrack.allows(mfn, write)

    def guest_read(self, domid: int, mfn: int, offset: int, n: int) -> bytes | int:
        """Domain ``domid`` reads ``n`` bytes of frame ``mfn``: the bytes, or ``-EFAULT``.

        Stands for a load through the domain's page tables, which Xen validated so that they
        map only the domain's own frames and frames granted to it.
        """
        from virtcore.xen.constants import EFAULT

        if not self._in_frame(mfn, offset, n) or not self.can_access(domid, mfn, False):
            return -EFAULT
        return self.memory.read_bytes(mfn, offset, n)  # type: ignore[arg-type]

    def guest_write(self, domid: int, mfn: int, offset: int, data: bytes) -> int:
        """Domain ``domid`` writes ``data`` into frame ``mfn``: 0, or ``-EFAULT``."""
        from virtcore.xen.constants import EFAULT

        if not self._in_frame(mfn, offset, len(data)) or not self.can_access(domid, mfn, True):
            return -EFAULT
        self.memory.write_bytes(mfn, offset, bytes(data))  # type: ignore[arg-type]
        return 0

    def _in_frame(self, mfn: object, offset: object, n: object) -> bool:
        if type(mfn) is not int or type(offset) is not int or type(n) is not int:
            return False  # (``type(True) is bool``: flags are not addresses either)
        return (0 <= mfn < self.memory.nframes and offset >= 0 and n >= 0
                and offset + n <= self.memory.frame_size)

    def pfn_to_mfn(self, domid: int, pfn: int) -> int:
        """The machine frame behind ``domid``'s pseudo-physical frame ``pfn``."""
        return int(self.domain(domid).memory.pfn_to_mfn(pfn))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ teardown
    def destroy_domain(self, d: Domain) -> None:
        """Xen's ``domain_kill`` + ``domain_relinquish_resources`` (host side, after the checks).

        Closes its event channels (peers go back to unbound), unmaps its grant mappings, gives
        its devices back to Dom0, frees its frames (a frame another domain still maps stays
        allocated until that domain unmaps it) and forgets the domain.
        """
        from virtcore.xen.evtchn import close_port
        from virtcore.xen.grant import release_mappings

        d.is_dying = True
        for port in list(d.evtchn):
            close_port(self, d, port)
        release_mappings(self, d)
        self.platform.reclaim(d)
        self.memory.destroy_domain_memory(d.domid)
        self.xenstore.remove_domain(d.domid)
        del self.domains[d.domid]
        self._upcalls = deque(x for x in self._upcalls if x[0] != d.domid)

    def snapshot(self) -> tuple[object, ...]:
        """All guest-visible state (memory, domains, channels, grants, mappings, XenStore).

        Two equal snapshots mean nothing changed — the check behind "a failed call changes
        nothing" in the property tests.
        """
        doms = []
        for d in sorted(self.domains.values(), key=lambda d: d.domid):
            chans = tuple(sorted((p, c.state, c.remote_dom, c.remote_port, c.virq, c.pirq,
                                  c.notify_vcpu) for p, c in d.evtchn.items()))
            gt = d.grant_table.snapshot() if d.grant_table else ()
            mt = d.maptrack.snapshot() if d.maptrack else ()
            vc = tuple((v.evtchn_upcall_pending, v.evtchn_upcall_mask, v.evtchn_pending_sel,
                        v.blocked) for v in d.vcpus)
            doms.append((d.domid, d.name, d.pause_count, d.is_shut_down, d.shutdown_code,
                         d.is_dying, d.weight, d.cap, tuple(sorted(d.ioports)),
                         tuple(sorted(d.irqs)), tuple(sorted(d.devices)), chans, gt, mt, vc,
                         tuple(d.shared_info.evtchn_pending), tuple(d.shared_info.evtchn_mask)))
        return (self.memory.snapshot(), tuple(doms), self.xenstore.snapshot(),
                self.platform.snapshot())

    def __repr__(self) -> str:
        return (f"Xen({self.name}: {len(self.domains)} domains, {self.memory.nframes} frames"
                f" ({self.memory.allocator.free_count} free), {self.pcpus} pCPUs)")

"""Isolation as properties (隔离性质): random guest and toolstack operations, checked against a
reference model of what *should* be allowed.

The properties (issue 8 §2), each checked after every operation of a sequence:

1. no DomU reads or writes a machine frame it neither owns nor has mapped through a grant;
2. read-only grants stay read-only (a writable map fails; the mapper cannot write);
3. a revoked grant stops working (every later map fails), and an in-use grant cannot be revoked;
4. no event reaches an unbound or closed port (a send on it changes no domain's event state);
5. no control operation (domctl/sysctl) succeeds from a DomU;
6. a DomU without a device never reaches its I/O ports, its DMA or its interrupt;
7. every hypercall with bad arguments returns Xen's error code, never raises, and changes
   nothing (:meth:`~virtcore.xen.hypervisor.Xen.snapshot` before and after);
plus the frame table's own invariants (:meth:`MachineMemory.check_invariants`).

An operation is a tuple of a name and small ints that are interpreted *modulo* the choices that
exist at that moment, so any sequence of ints is a valid sequence (hypothesis can shrink it).
:func:`run_ops` runs one sequence on a fresh host and returns the violations it found (an empty
list when every property held); :func:`random_ops` draws a sequence from a seed (the soak
command runs ten thousand of them).

>>> run_ops(random_ops(0, 40))
[]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from virtcore.xen import constants as k
from virtcore.xen.control import XenDomctl, XenSysctl
from virtcore.xen.evtchn import (
    EvtchnAllocUnbound,
    EvtchnBindInterdomain,
    EvtchnBindPirq,
    EvtchnClose,
    EvtchnSend,
    EvtchnStatus,
    EvtchnUnmask,
)
from virtcore.xen.grant import (
    GnttabCopy,
    GnttabCopyPtr,
    GnttabMapGrantRef,
    GnttabQuerySize,
    GnttabSetupTable,
    GnttabUnmapGrantRef,
)
from virtcore.xen.hwiface import dma, pci_conf_read, port_io
from virtcore.xen.hypervisor import Xen

__all__ = ["OP_NAMES", "Checker", "random_ops", "run_ops"]

Op = tuple[Any, ...]
OP_NAMES = ("grant", "revoke", "map", "unmap", "access", "alloc", "bind", "send", "close",
            "mask", "domctl", "device", "junk", "pause", "copy")
_DOMCTLS = (k.XEN_DOMCTL_createdomain, k.XEN_DOMCTL_destroydomain, k.XEN_DOMCTL_pausedomain,
            k.XEN_DOMCTL_unpausedomain, k.XEN_DOMCTL_getdomaininfo, k.XEN_DOMCTL_max_mem,
            k.XEN_DOMCTL_scheduler_op, k.XEN_DOMCTL_assign_device,
            k.XEN_DOMCTL_ioport_permission, k.XEN_DOMCTL_irq_permission)
_JUNK: tuple[Any, ...] = (-1, 0, 1, 7, 2**31, 2**64, -(2**63), None, "x", b"\0", 3.5, True,
                          [], {}, EvtchnSend(port=-5), EvtchnClose(port=2**40),
                          GnttabMapGrantRef(ref=-1, dom=-3), XenSysctl(cmd=99),
                          EvtchnStatus(dom=2**16, port=-1))


@dataclass
class Checker:
    """A host with Dom0 and three DomUs (``c`` owns the NIC: a driver domain) plus the
    reference model; :meth:`apply` runs one operation and checks the properties."""

    xen: Xen = field(default_factory=lambda: Xen(frames=64, nr_pirqs=32))
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        xen = self.xen
        xen.trace.enabled = False
        self.domus = [xen.create_guest(n, memory_pages=8) for n in ("a", "b", "c")]
        self.ids = [0] + [d.domid for d in self.domus]
        rc, _ = xen.xl._domctl(k.XEN_DOMCTL_assign_device, self.domus[2].domid, dev="nic")
        assert rc == 0
        # model: grants[(granter, ref)] = (grantee, mfn, readonly); maps[(mapper, handle)]
        self.grants: dict[tuple[int, int], tuple[int, int, bool]] = {}
        self.revoked: set[tuple[int, int, int]] = set()  # (granter, ref, grantee) revoked
        self.maps: dict[tuple[int, int], tuple[int, int, int, bool]] = {}
        # channels[(dom, port)] = ("unbound", remote) | ("inter", rdom, rport)
        self.chans: dict[tuple[int, int], tuple[Any, ...]] = {}

    # ------------------------------------------------------------------ helpers
    def _fail(self, op: Op, what: str) -> None:
        self.violations.append(f"{op}: {what}")

    def _dom(self, i: int) -> int:
        return self.ids[i % len(self.ids)]

    def _domu(self, i: int) -> int:
        return self.ids[1 + i % 3]

    def _frames(self) -> list[int]:
        mem = self.xen.memory
        return [f for f in range(mem.nframes) if mem.owner_of(f) is not None]  # type: ignore

    def _allowed(self, domid: int, mfn: int, write: bool) -> bool:
        if self.xen.memory.owner_of(mfn) == domid:  # type: ignore[arg-type]
            return True
        return any(mapper == domid and m[2] == mfn and (m[3] or not write)
                   for (mapper, _h), m in self.maps.items())

    def _event_state(self) -> tuple[Any, ...]:
        return tuple((d.domid, d.stats.events_received, tuple(d.shared_info.evtchn_pending),
                      tuple(v.evtchn_upcall_pending for v in d.vcpus))
                     for d in self.xen.domains.values())

    def _runs(self, domid: int) -> bool:
        d = self.xen.domains.get(domid)
        return d is not None and not d.paused

    # ------------------------------------------------------------------ operations
    def apply(self, op: Op) -> None:
        xen = self.xen
        name, a, b, c, e = ((*tuple(op), 0, 0, 0, 0))[:5]
        if name == "grant":
            g, t = self._dom(a), self._dom(b)
            gd = xen.domains[g]
            if not self._runs(g):
                return
            pfn = sorted(gd.memory.p2m)[c % len(gd.memory.p2m)]
            mfn = xen.pfn_to_mfn(g, pfn)
            assert gd.grant_table is not None
            ref = gd.grant_table.grant_access(t, gd.frame_of(pfn), readonly=bool(e % 2))
            if ref >= 0:
                self.grants[(g, ref)] = (t, mfn, bool(e % 2))
                self.revoked.discard((g, ref, t))
        elif name == "revoke":
            keys = sorted(self.grants)
            if not keys:
                return
            g, ref = keys[a % len(keys)]
            if not self._runs(g):
                return
            gt = xen.domains[g].grant_table
            assert gt is not None
            in_use = any(m[0] == g and m[1] == ref for m in self.maps.values())
            ok = gt.end_foreign_access(ref)
            if ok == in_use:
                self._fail(op, f"end_foreign_access={ok} while in_use={in_use}")
            if ok:
                self.revoked.add((g, ref, self.grants.pop((g, ref))[0]))
        elif name == "map":
            mapper, granter = self._dom(a), self._dom(b)
            if not self._runs(mapper):
                return
            refs = [*sorted(r for g, r in self.grants if g == granter), 8 + c % 40]
            ref = refs[c % len(refs)]
            ro = bool(e % 2)
            m = GnttabMapGrantRef(host_addr=0x10000 * (1 + e % 7),
                                  flags=k.GNTMAP_host_map | (k.GNTMAP_readonly if ro else 0),
                                  ref=ref, dom=granter)
            snap = xen.snapshot()
            rc = xen.hypercall(mapper, k.HYPERVISOR_grant_table_op, k.GNTTABOP_map_grant_ref,
                               m, 1)
            grant = self.grants.get((granter, ref))
            should = (grant is not None and grant[0] == mapper and (ro or not grant[2])
                      and xen.memory.owner_of(grant[1]) == granter)  # type: ignore[arg-type]
            if rc != 0:
                self._fail(op, f"grant_table_op returned {rc}")
            if (m.status == k.GNTST_okay) != should:
                self._fail(op, f"map status {m.status}, model says allowed={should}"
                               f" (revoked={(granter, ref, mapper) in self.revoked})")
            if m.status == k.GNTST_okay and grant is not None:
                self.maps[(mapper, m.handle)] = (granter, ref, grant[1], not ro)
            elif m.status != k.GNTST_okay and xen.snapshot() != snap:
                self._fail(op, "a failed map changed state")
        elif name == "unmap":
            keys = [*sorted(self.maps), (self._dom(a), 999)]
            mapper, handle = keys[a % len(keys)]
            if not self._runs(mapper):
                return
            u = GnttabUnmapGrantRef(handle=handle)
            xen.hypercall(mapper, k.HYPERVISOR_grant_table_op, k.GNTTABOP_unmap_grant_ref, u, 1)
            if (u.status == k.GNTST_okay) != ((mapper, handle) in self.maps):
                self._fail(op, f"unmap status {u.status}")
            self.maps.pop((mapper, handle), None)
        elif name == "access":
            dom = self._dom(a)
            frames = self._frames()
            mfn = frames[b % len(frames)]
            write = bool(c % 2)
            allowed = self._allowed(dom, mfn, write)
            if write:
                rc = xen.guest_write(dom, mfn, 8 * (e % 8), b"\xab")
                got = rc == 0
            else:
                got = not isinstance(xen.guest_read(dom, mfn, 0, 4), int)
            if got != allowed:
                self._fail(op, f"d{dom} {'write' if write else 'read'} mfn {mfn}: got {got},"
                               f" allowed {allowed}")
        elif name == "copy":
            dom, granter = self._dom(a), self._dom(b)
            if not self._runs(dom):
                return
            refs = [*sorted(r for g, r in self.grants if g == granter), 8]
            ref = refs[c % len(refs)]
            own = xen.domains[dom]
            pfn = sorted(own.memory.p2m)[e % len(own.memory.p2m)]
            to_grant = bool(e % 2)
            mine = GnttabCopyPtr(gmfn=own.frame_of(pfn))
            theirs = GnttabCopyPtr(ref=ref, domid=granter)
            cp = GnttabCopy(mine if to_grant else theirs, theirs if to_grant else mine, 16,
                            k.GNTCOPY_dest_gref if to_grant else k.GNTCOPY_source_gref)
            xen.hypercall(dom, k.HYPERVISOR_grant_table_op, k.GNTTABOP_copy, cp, 1)
            grant = self.grants.get((granter, ref))
            should = (grant is not None and grant[0] == dom and not (to_grant and grant[2])
                      and xen.memory.owner_of(grant[1]) == granter)  # type: ignore[arg-type]
            if (cp.status == k.GNTST_okay) != should:
                self._fail(op, f"copy status {cp.status}, model says {should}")
        elif name == "alloc":
            dom, remote = self._dom(a), self._dom(b)
            if not self._runs(dom):
                return
            al = EvtchnAllocUnbound(remote_dom=remote)
            if xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_alloc_unbound,
                             al) == 0:
                self.chans[(dom, al.port)] = ("unbound", remote)
        elif name == "bind":
            dom = self._dom(a)
            if not self._runs(dom):
                return
            keys = [*sorted(self.chans), (self._dom(b), 1 + c % 9)]
            rdom, rport = keys[b % len(keys)]
            bi = EvtchnBindInterdomain(remote_dom=rdom, remote_port=rport)
            rc = xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_bind_interdomain,
                               bi)
            should = self.chans.get((rdom, rport)) == ("unbound", dom)
            if (rc == 0) != should:
                self._fail(op, f"bind_interdomain rc {rc}, model {should}")
            if rc == 0:
                self.chans[(dom, bi.local_port)] = ("inter", rdom, rport)
                self.chans[(rdom, rport)] = ("inter", dom, bi.local_port)
        elif name == "send":
            dom = self._dom(a)
            if not self._runs(dom):
                return
            ports = [*sorted(p for d, p in self.chans if d == dom), 1 + b % 12]
            port = ports[b % len(ports)]
            before = self._event_state()
            chan = self.chans.get((dom, port))
            rc = xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_send,
                               EvtchnSend(port=port))
            if chan is None or chan[0] == "unbound":
                if self._event_state() != before:
                    self._fail(op, f"a send on {'closed' if chan is None else 'unbound'} port"
                                   f" {port} changed event state")
                if (rc == 0) != (chan is not None):
                    self._fail(op, f"send rc {rc} on {chan}")
            elif rc != 0:
                self._fail(op, f"send on {chan} failed: {rc}")
        elif name == "close":
            dom = self._dom(a)
            if not self._runs(dom):
                return
            ports = [*sorted(p for d, p in self.chans if d == dom), 1 + b % 12]
            port = ports[b % len(ports)]
            rc = xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_close,
                               EvtchnClose(port=port))
            chan = self.chans.pop((dom, port), None)
            if (rc == 0) != (chan is not None):
                self._fail(op, f"close rc {rc} on {chan}")
            if chan is not None and chan[0] == "inter":
                self.chans[(chan[1], chan[2])] = ("unbound", dom)
        elif name == "mask":
            dom = self._dom(a)
            if not self._runs(dom):
                return
            d = xen.domains[dom]
            port = 1 + b % 12
            if c % 2:
                d.shared_info.test_and_set(d.shared_info.evtchn_mask, port)
            else:
                xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_unmask,
                              EvtchnUnmask(port=port))
        elif name == "domctl":
            dom = self._domu(a)
            if not self._runs(dom):
                return
            target = self.ids[b % len(self.ids)] if c % 5 else 4000 + c
            params = {"dev": "disk", "first_port": 0x1F0, "nr_ports": 8, "pirq": 14, "cmd": 0,
                 "weight": 1000, "max_memkb": 1 << 20, "max_vcpus": 2}
            snap = xen.snapshot()
            rc = xen.hypercall(dom, k.HYPERVISOR_domctl,
                               XenDomctl(_DOMCTLS[e % len(_DOMCTLS)], target, params))
            rc2 = xen.hypercall(dom, k.HYPERVISOR_sysctl, XenSysctl(k.XEN_SYSCTL_physinfo))
            if rc != -k.EPERM or rc2 != -k.EPERM:
                self._fail(op, f"control op from DomU d{dom}: {rc}, {rc2}")
            if xen.snapshot() != snap:
                self._fail(op, "a refused control op changed state")
        elif name == "device":
            dom = self._domu(a)
            if not self._runs(dom):
                return
            d = xen.domains[dom]
            for dev in xen.platform.devices.values():
                owns = dev.owner == dom
                for port in dev.ioports:
                    if port_io(xen, dom, port).ok != owns:
                        self._fail(op, f"d{dom} port {port:#x} of {dev.name}: owns={owns}")
                if (pci_conf_read(xen, dom, dev.bdf, 0) != 0xFFFFFFFF) != owns:
                    self._fail(op, f"d{dom} PCI config of {dev.name}")
                rc = xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_bind_pirq,
                                   EvtchnBindPirq(pirq=dev.irq))
                if rc == 0:
                    if not owns:
                        self._fail(op, f"d{dom} bound IRQ {dev.irq} of {dev.name}")
                    xen.hypercall(dom, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_close,
                                  EvtchnClose(port=d.pirq_to_port[dev.irq]))
                elif rc != (-k.EPERM if not owns else -k.EEXIST):
                    self._fail(op, f"bind_pirq {dev.irq} from d{dom}: {rc}")
            frames = self._frames()
            mfn = frames[b % len(frames)]
            for dev in xen.platform.devices.values():
                allowed = self._allowed(dev.owner, mfn, True)
                if (dma(xen, dev.name, mfn, 0, b"\x5a") == 0) != allowed:
                    self._fail(op, f"{dev.name} DMA into mfn {mfn}: allowed={allowed}")
        elif name == "junk":
            dom = self._dom(a)
            if not self._runs(dom):
                return
            nr = b % 64
            args = tuple(_JUNK[(c + i * e) % len(_JUNK)] for i in range(e % 4))
            snap = xen.snapshot()
            try:
                rc = xen.hypercall(dom, nr, *args)
            except Exception as ex:
                self._fail(op, f"hypercall {nr}{args} raised {type(ex).__name__}: {ex}")
                return
            if not isinstance(rc, int):
                self._fail(op, f"hypercall {nr}{args} returned {rc!r}")
            elif rc < 0 and xen.snapshot() != snap:
                self._fail(op, f"hypercall {nr}{args} = {rc} changed state")
            for v in xen.domains[dom].vcpus:
                v.blocked = False  # a junk SCHEDOP_block: the guest wakes again
        elif name == "pause":
            dom = self._domu(a)
            if c % 2:
                xen.xl.pause(dom) if not xen.domains[dom].paused else xen.xl.unpause(dom)
            else:
                xen.xl.sched_credit(dom, weight=1 + b % 1000, cap=e % 101)
            q = GnttabQuerySize(dom=dom)
            xen.hypercall(0, k.HYPERVISOR_grant_table_op, k.GNTTABOP_query_size, q, 1)
            if q.status != 0:
                self._fail(op, f"Dom0 query_size of d{dom}: {q.status}")
            s = GnttabSetupTable(dom=dom, nr_frames=100)
            xen.hypercall(0, k.HYPERVISOR_grant_table_op, k.GNTTABOP_setup_table, s, 1)
            if s.status != k.GNTST_general_error:
                self._fail(op, "a grant table grew past gnttab_max_frames")
        self._invariants(op)

    def _invariants(self, op: Op) -> None:
        xen = self.xen
        try:
            xen.memory.check_invariants()
        except Exception as ex:
            self._fail(op, f"frame table: {ex}")
        for (g, ref), (_t, _mfn, ro) in self.grants.items():
            gt = xen.domains[g].grant_table
            assert gt is not None
            flags = gt.entries[ref].flags
            mapped = [m for m in self.maps.values() if m[0] == g and m[1] == ref]
            if bool(flags & k.GTF_reading) != bool(mapped):
                self._fail(op, f"d{g} ref {ref}: GTF_reading={bool(flags & k.GTF_reading)}"
                               f" but {len(mapped)} mappings")
            if bool(flags & k.GTF_writing) != any(m[3] for m in mapped):
                self._fail(op, f"d{g} ref {ref}: GTF_writing wrong")
            if ro and flags & k.GTF_writing:
                self._fail(op, f"d{g} ref {ref}: a read-only grant is mapped writable")
        for (mapper, handle), (g, ref, mfn, writable) in self.maps.items():
            mt = xen.domains[mapper].maptrack
            assert mt is not None
            m = mt.handles.get(handle)
            if m is None or (m.granter, m.ref, m.mfn, m.writable) != (g, ref, mfn, writable):
                self._fail(op, f"d{mapper} handle {handle} differs from the model")


def run_ops(ops: Sequence[Op]) -> list[str]:
    """Run ``ops`` on a fresh host; return the violations (empty: every property held)."""
    ch = Checker()
    for op in ops:
        ch.apply(op)
        if ch.violations:
            break
    return ch.violations


def random_ops(seed: int | random.Random, n: int = 60) -> list[Op]:
    """A sequence of ``n`` operations drawn from ``seed`` (same seed, same sequence)."""
    from virtcore.rng import make_rng

    rng = make_rng(seed)
    return [(rng.choice(OP_NAMES), *tuple(rng.randrange(64) for _ in range(4)))
            for _ in range(n)]

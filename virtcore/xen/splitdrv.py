"""Split drivers (分离设备驱动): blkfront/blkback and netfront/netback over shared rings.

The real protocol [XIG ch. 8; XWIKI-FRONTEND; XEN-RING; XEN-BLKIF; XEN-NETIF]:

- "The illusion of the virtual device is provided by two co-operating drivers: the frontend,
  which runs in the unprivileged domain and the backend, which runs in a domain with access to
  the real device hardware" — Dom0 or a *driver domain*.  Data goes through shared memory
  (a ring page and granted data pages), notifications through one interdomain event channel:
  "This separation of notification from data transfer allows message batching".
- handshake: the front end allocates and initialises the ring page (``SHARED_RING_INIT``),
  grants it to the back end, allocates an *unbound* event channel for the back end, and
  publishes ``ring-ref`` and ``event-channel`` in XenStore, switching its ``state`` to
  ``XenbusStateInitialised`` (3); the back end (watching) maps the ring through the grant,
  binds the port with ``EVTCHNOP_bind_interdomain`` and switches to ``XenbusStateConnected`` (4).
- a block request: ``blkif_request { operation (BLKIF_OP_READ 0 / WRITE 1), nr_segments
  (at most BLKIF_MAX_SEGMENTS_PER_REQUEST = 11), id, sector_number, seg[] { gref, first_sect,
  last_sect } }``; each segment is a granted page (read-only grant for a write: the back end
  only reads it).  The back end **validates** every field, maps the segments (the hypervisor
  authorises each mapping), has the *real* device do the transfer (DMA into/out of the mapped
  frames, checked by the IOMMU), unmaps, and answers ``blkif_response { id, operation, status
  (BLKIF_RSP_OKAY 0, ERROR -1, EOPNOTSUPP -2) }``.
- the network pair: netfront posts receive buffers (``netif_rx_request { id, gref }``, writable
  grants) and sends with ``netif_tx_request { gref, offset, flags, id, size }``; netback copies
  with ``GNTTABOP_copy`` (no mapping), forwards through a software bridge, and answers with
  ``netif_tx_response`` / ``netif_rx_response`` (``status`` = length or ``NETIF_RSP_*``).

Every request's path is recorded as trace steps — front end → ring → event → back end → grant
map/copy → device → response → event → front end — each priced from
:data:`virtcore.costs.DEFAULT_COSTS` (see :attr:`BlkResult.steps`).

Simplified: everything runs synchronously (a request completes before :meth:`BlkFront.read`
returns); one ring page; no persistent grants, indirect descriptors, flush/discard, multi-queue,
GSO or checksum offload; the bridge is a hub (every other vif receives every packet).

>>> from virtcore.xen import Xen
>>> xen = Xen(frames=512)
>>> guest = xen.create_guest("web", memory_pages=32, disk=True)
>>> blk = xen.xl.frontends[(guest.domid, "vbd")]
>>> w = blk.write(3, b"hello, disk")
>>> w
BlkResult(write sector 3 ×1: BLKIF_RSP_OKAY, 512 bytes)
>>> r = blk.read(3, 1); r.data[:11], r.status
(b'hello, disk', 0)
>>> [s.kind for s in r.steps][:6]
['front', 'ring', 'hypercall', 'event', 'upcall', 'sched']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtcore.xen.constants import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    BLKIF_SECTOR_SIZE,
    DOMID_SELF,
    NETIF_RSP_DROPPED,
    NETIF_RSP_ERROR,
    NETIF_RSP_OKAY,
    EVTCHNOP_alloc_unbound,
    EVTCHNOP_bind_interdomain,
    EVTCHNOP_close,
    EVTCHNOP_send,
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTST_okay,
    GNTTABOP_copy,
    GNTTABOP_map_grant_ref,
    GNTTABOP_unmap_grant_ref,
    HYPERVISOR_event_channel_op,
    HYPERVISOR_grant_table_op,
    XenbusStateConnected,
    XenbusStateInitialised,
)
from virtcore.xen.ring import (
    BLKIF_RING,
    NETIF_RX_RING,
    NETIF_TX_RING,
    BackRing,
    FrontRing,
    GuestAccessor,
    RingFaultError,
    RingLayout,
    shared_ring_init,
)

if TYPE_CHECKING:
    from virtcore.xen.hypercall import TraceEvent
    from virtcore.xen.hypervisor import Xen

__all__ = ["BLKIF_RSP_NAMES", "BlkBack", "BlkFront", "BlkResult", "NetBack", "NetFront",
           "NetResult"]

BLKIF_RSP_NAMES = {BLKIF_RSP_OKAY: "BLKIF_RSP_OKAY", BLKIF_RSP_ERROR: "BLKIF_RSP_ERROR",
                   BLKIF_RSP_EOPNOTSUPP: "BLKIF_RSP_EOPNOTSUPP"}
_HOST_ADDR_BASE = 0x4000_0000  # page number where back ends map foreign pages (2**42)


@dataclass
class BlkResult:
    """One block request: its status, the data read, and its path as priced trace steps."""

    op: str
    sector: int
    count: int
    status: int
    data: bytes = b""
    steps: list[TraceEvent] = field(default_factory=list)
    #: After each step: the ring indices (both sides' private ones too) and the event bits —
    #: what a step-by-step widget shows (see :func:`ring_state`).
    states: list[dict[str, int]] = field(default_factory=list)

    @property
    def cost_ns(self) -> float:
        """Simulated time of the whole path (sum of the steps' prices)."""
        return sum(s.cost for s in self.steps)

    def table(self) -> list[tuple[str, str, str, float]]:
        """The path as rows ``(who, kind, what, cost ns)`` for a notebook table."""
        return [("xen" if s.domid is None else f"d{s.domid}", s.kind, s.text, s.cost)
                for s in self.steps]

    def __repr__(self) -> str:
        return (f"BlkResult({self.op} sector {self.sector} ×{self.count}:"
                f" {BLKIF_RSP_NAMES.get(self.status, self.status)}, {len(self.data)} bytes)")


def ring_state(front: BlkFront, back: BlkBack | None) -> dict[str, int]:
    """The shared ring header, each side's private indices and the event-channel bits.

    Keys: ``req_prod, req_event, rsp_prod, rsp_event`` (shared page), ``req_prod_pvt,
    rsp_cons`` (front), ``req_cons, rsp_prod_pvt`` (back), and for each side ``*_pending``
    (its port's PENDING bit) and ``*_upcall_pending`` (vCPU 0's ``evtchn_upcall_pending``).
    """
    from virtcore.xen.ring import read_header

    xen = front.xen
    assert front.ring is not None
    mem = xen.memory
    mfn = front.ring.acc.mfn
    hdr = mem.read_bytes(mfn, 0, 16)  # type: ignore[arg-type]
    from virtcore.xen.ring import MemoryAccessor

    req_prod, req_event, rsp_prod, rsp_event = read_header(MemoryAccessor(bytearray(hdr)))
    out = {"req_prod": req_prod, "req_event": req_event, "rsp_prod": rsp_prod,
           "rsp_event": rsp_event, "req_prod_pvt": front.ring.req_prod_pvt,
           "rsp_cons": front.ring.rsp_cons}
    if back is not None and back.ring is not None:
        out["req_cons"] = back.ring.req_cons
        out["rsp_prod_pvt"] = back.ring.rsp_prod_pvt
    for side, domid, port in (("front", front.fe, front.port),
                              ("back", front.be, back.port if back is not None else 0)):
        d = xen.domains.get(domid)
        if d is None:
            continue
        si = d.shared_info
        out[f"{side}_pending"] = int(si.test(si.evtchn_pending, port))
        out[f"{side}_upcall_pending"] = d.vcpus[0].evtchn_upcall_pending
    return out


def _page_accessor(xen: Xen, domid: int, mfn: int) -> GuestAccessor:
    return GuestAccessor(xen.guest_read, xen.guest_write, domid, mfn)


def _evtchn(xen: Xen, domid: int, cmd: int, arg: Any) -> int:
    return xen.hypercall(domid, HYPERVISOR_event_channel_op, cmd, arg)


class _Front:
    """What both front ends share: ring pages, the grant of each, the unbound port."""

    kind = ""

    def __init__(self, xen: Xen, fe: int, be: int, devid: int) -> None:
        self.xen, self.fe, self.be, self.devid = xen, fe, be, devid
        self.port = 0
        self.state = 1
        self.path = f"/local/domain/{fe}/device/{self.kind}/{devid}"

    def _ring(self, layout: RingLayout) -> tuple[FrontRing, int, int]:
        d = self.xen.domain(self.fe)
        pfn = d.alloc_page()
        if pfn is None:
            from virtcore.xen.hypervisor import XenError

            raise XenError(f"d{self.fe} has no free page for a {layout.name} ring")
        mfn = self.xen.pfn_to_mfn(self.fe, pfn)
        acc = _page_accessor(self.xen, self.fe, mfn)
        shared_ring_init(acc)
        assert d.grant_table is not None
        ref = d.grant_table.grant_access(self.be, d.frame_of(pfn))
        return FrontRing(layout, acc), ref, pfn

    def _alloc_port(self) -> None:
        from virtcore.xen.evtchn import EvtchnAllocUnbound

        a = EvtchnAllocUnbound(dom=DOMID_SELF, remote_dom=self.be)
        rc = _evtchn(self.xen, self.fe, EVTCHNOP_alloc_unbound, a)
        if rc:
            from virtcore.xen.hypervisor import XenError

            raise XenError(f"alloc_unbound failed: {rc}")
        self.port = a.port

    def _publish(self, **keys: int) -> None:
        xs = self.xen.xenstore
        for k, v in keys.items():
            xs.write(self.fe, f"{self.path}/{k.replace('_', '-')}", str(v))
        xs.write(self.fe, f"{self.path}/state", str(XenbusStateInitialised))

    def _notify(self) -> None:
        from virtcore.xen.evtchn import EvtchnSend

        _evtchn(self.xen, self.fe, EVTCHNOP_send, EvtchnSend(port=self.port))

    def _grant_page(self, readonly: bool) -> tuple[int, int, int]:
        """A fresh data page granted to the back end: (pfn, mfn, ref)."""
        d = self.xen.domain(self.fe)
        pfn = d.alloc_page()
        if pfn is None:
            return -1, -1, -1
        assert d.grant_table is not None
        ref = d.grant_table.grant_access(self.be, d.frame_of(pfn), readonly=readonly)
        return pfn, self.xen.pfn_to_mfn(self.fe, pfn), ref

    def _release_page(self, pfn: int, ref: int) -> None:
        d = self.xen.domain(self.fe)
        assert d.grant_table is not None
        d.grant_table.end_foreign_access(ref)
        d.free_page(pfn)


class _Back:
    """What both back ends share: reading XenStore, mapping a ring, binding the port."""

    kind = ""

    def __init__(self, xen: Xen, be: int, fe: int, devid: int) -> None:
        self.xen, self.be, self.fe, self.devid = xen, be, fe, devid
        self.port = 0
        self.handles: list[int] = []
        self.front_path = f"/local/domain/{fe}/device/{self.kind}/{devid}"
        self.path = f"/local/domain/{be}/backend/{self.kind}/{fe}/{devid}"
        self.connected = False
        xen.xenstore.watch(be, f"{self.front_path}/state", self._front_changed)

    def _front_changed(self, path: str) -> None:
        if not self.connected and self.xen.xenstore.read(self.be, path) == str(
                XenbusStateInitialised):
            self.connect()

    def _read_int(self, key: str) -> int:
        v = self.xen.xenstore.read(self.be, f"{self.front_path}/{key}")
        if isinstance(v, int) or not v.isdigit():
            from virtcore.xen.hypervisor import XenError

            raise XenError(f"back end d{self.be}: cannot read {self.front_path}/{key}: {v}")
        return int(v)

    def _map_ring(self, ref: int) -> GuestAccessor:
        from virtcore.xen.grant import GnttabMapGrantRef

        op = GnttabMapGrantRef(host_addr=(_HOST_ADDR_BASE + len(self.handles)) << 12,
                               flags=GNTMAP_host_map, ref=ref, dom=self.fe)
        self.xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, op, 1)
        if op.status != GNTST_okay:
            from virtcore.xen.hypervisor import XenError

            raise XenError(f"back end d{self.be}: mapping ring ref {ref} failed: {op.status}")
        self.handles.append(op.handle)
        mfn = self.xen.domain(self.be).maptrack.handles[op.handle].mfn  # type: ignore[union-attr]
        return _page_accessor(self.xen, self.be, mfn)

    def _bind(self) -> None:
        from virtcore.xen.evtchn import EvtchnBindInterdomain

        port = self._read_int("event-channel")
        b = EvtchnBindInterdomain(remote_dom=self.fe, remote_port=port)
        rc = _evtchn(self.xen, self.be, EVTCHNOP_bind_interdomain, b)
        if rc:
            from virtcore.xen.hypervisor import XenError

            raise XenError(f"back end d{self.be}: bind_interdomain failed: {rc}")
        self.port = b.local_port
        self.xen.domain(self.be).on_event(self.port, self._on_event)

    def connect(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def disconnect(self) -> None:
        """The frontend went away: close our port and unmap what we mapped."""
        from virtcore.xen.evtchn import EvtchnClose
        from virtcore.xen.grant import GnttabUnmapGrantRef

        xen = self.xen
        if self.port and self.port in xen.domain(self.be).evtchn:
            _evtchn(xen, self.be, EVTCHNOP_close, EvtchnClose(port=self.port))
        maptrack = xen.domain(self.be).maptrack
        live = [h for h in self.handles if maptrack is not None and h in maptrack.handles]
        if live:
            xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref,
                          [GnttabUnmapGrantRef(handle=h) for h in live], len(live))
        self.handles = []
        self.connected = False

    def _connected(self) -> None:
        self.connected = True
        self.xen.xenstore.write(self.be, f"{self.path}/state", str(XenbusStateConnected))

    def _on_event(self, port: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _notify(self) -> None:
        from virtcore.xen.evtchn import EvtchnSend

        _evtchn(self.xen, self.be, EVTCHNOP_send, EvtchnSend(port=self.port))

    def _switch(self, to: int) -> None:
        self.xen.trace.add("sched", to, f"switch to d{to} to run its handler",
                           cost=self.xen.costs.context_switch)


# ====================================================================== block
class BlkFront(_Front):
    """blkfront in domain ``fe``: a virtual disk whose requests go to ``be``'s blkback."""

    kind = "vbd"

    def __init__(self, xen: Xen, fe: int, be: int, devid: int = 51712) -> None:
        super().__init__(xen, fe, be, devid)
        self.ring: FrontRing | None = None
        self.next_id = 0
        self.responses: dict[int, int] = {}

    def connect(self) -> None:
        """The handshake: ring page, grant, unbound port, publish; the back end connects."""
        self.ring, ref, _pfn = self._ring(BLKIF_RING)
        self._alloc_port()
        self.xen.domain(self.fe).on_event(self.port, self._on_event)
        self._publish(ring_ref=ref, event_channel=self.port)

    def _on_event(self, port: int) -> None:
        assert self.ring is not None
        self.xen.trace.add("sched", self.fe, f"switch to d{self.fe} (blkfront)",
                           cost=self.xen.costs.context_switch)
        for _ in range(4):  # bounded: a corrupted ring must not hang the guest either
            for _rsp in range(min(self.ring.unconsumed_responses(), self.ring.nr_ents)):
                rid, _op, status = self.ring.get_response()
                self.xen.trace.add("ring", self.fe, f"blkfront reads response id {rid}:"
                                   f" {BLKIF_RSP_NAMES.get(status, status)}",
                                   cost=self.xen.costs.ring_slot)
                self.responses[rid] = status
            if not self.ring.final_check_for_responses():
                break

    def request(self, op: int, sector: int, segments: list[tuple[int, int, int]],
                handle: int = 0) -> int:
        """Put one raw ``blkif_request`` on the ring (``segments``: (gref, first, last));
        returns its id.  Call :meth:`push` to publish and notify."""
        assert self.ring is not None
        rid = self.next_id
        self.next_id += 1
        segs: list[int] = []
        for gref, first, last in segments[:BLKIF_MAX_SEGMENTS_PER_REQUEST]:
            segs += [gref, first, last]
        segs += [0, 0, 0] * (BLKIF_MAX_SEGMENTS_PER_REQUEST - len(segments))
        self.ring.put_request(BLKIF_RING.pack_req((op & 0xFF, len(segments) & 0xFF, handle,
                                                   rid, sector, *segs)))
        self.xen.trace.add("ring", self.fe, f"blkfront puts request id {rid} (op {op},"
                           f" sector {sector}, {len(segments)} segments)",
                           cost=self.xen.costs.ring_slot)
        return rid

    def push(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`` and notify the back end if needed."""
        assert self.ring is not None
        notify = self.ring.push_requests_and_check_notify()
        if notify:
            self._notify()
        return notify

    def _io(self, op: int, sector: int, count: int, data: bytes = b"") -> BlkResult:
        xen = self.xen
        seq = xen.trace.seq
        per_page = xen.memory.frame_size // BLKIF_SECTOR_SIZE
        name = "read" if op == BLKIF_OP_READ else "write"
        back = xen.xl.backends.get((self.fe, "vbd"))
        states: dict[int, dict[str, int]] = {}

        def snap(ev: TraceEvent) -> None:
            states[ev.seq] = ring_state(self, back if isinstance(back, BlkBack) else None)

        if xen.trace.enabled:
            xen.trace.listeners.append(snap)
        try:
            return self._io_body(op, sector, count, data, seq, per_page, name, states)
        finally:
            if snap in xen.trace.listeners:
                xen.trace.listeners.remove(snap)

    def _io_body(self, op: int, sector: int, count: int, data: bytes, seq: int, per_page: int,
                 name: str, states: dict[int, dict[str, int]]) -> BlkResult:
        xen = self.xen
        xen.trace.add("front", self.fe, f"blkfront: {name} {count} sectors at {sector}")
        pages: list[tuple[int, int, int]] = []
        segments = []
        left = count
        status = BLKIF_RSP_OKAY
        while left > 0:
            pfn, mfn, ref = self._grant_page(readonly=op == BLKIF_OP_WRITE)
            if pfn < 0:
                status = BLKIF_RSP_ERROR
                break
            n = min(left, per_page)
            if op == BLKIF_OP_WRITE:
                off = (count - left) * BLKIF_SECTOR_SIZE
                xen.guest_write(self.fe, mfn, 0, data[off:off + n * BLKIF_SECTOR_SIZE])
            pages.append((pfn, mfn, ref))
            segments.append((ref, 0, n - 1))
            left -= n
        out = b""
        if status == BLKIF_RSP_OKAY:
            rid = self.request(op, sector, segments)
            self.push()
            status = self.responses.pop(rid, BLKIF_RSP_ERROR)
            if op == BLKIF_OP_READ and status == BLKIF_RSP_OKAY:
                chunks = []
                left = count
                for _pfn, mfn, _ref in pages:
                    n = min(left, per_page)
                    chunk = xen.guest_read(self.fe, mfn, 0, n * BLKIF_SECTOR_SIZE)
                    chunks.append(chunk if isinstance(chunk, bytes) else b"")
                    left -= n
                out = b"".join(chunks)
        for pfn, _mfn, ref in pages:
            self._release_page(pfn, ref)
        xen.trace.add("front", self.fe, f"blkfront: {name} done,"
                      f" {BLKIF_RSP_NAMES.get(status, status)}")
        steps = xen.trace.since(seq)
        # each state is taken when its step is reported: a hypercall's once it returned
        return BlkResult(name, sector, count, status, out if op == BLKIF_OP_READ else data,
                         steps, [states.get(e.seq, {}) for e in steps])

    def read(self, sector: int, count: int = 1) -> BlkResult:
        """Read ``count`` 512-byte sectors from ``sector`` (at most 11 pages' worth)."""
        per_page = self.xen.memory.frame_size // BLKIF_SECTOR_SIZE
        if not 1 <= count <= BLKIF_MAX_SEGMENTS_PER_REQUEST * per_page:
            from virtcore.errors import ConfigurationError

            raise ConfigurationError(f"count must be 1..{11 * per_page} sectors, got {count}")
        return self._io(BLKIF_OP_READ, sector, count)

    def write(self, sector: int, data: bytes) -> BlkResult:
        """Write ``data`` (padded to whole sectors) from ``sector``."""
        count = max(1, -(-len(data) // BLKIF_SECTOR_SIZE))
        per_page = self.xen.memory.frame_size // BLKIF_SECTOR_SIZE
        if count > BLKIF_MAX_SEGMENTS_PER_REQUEST * per_page:
            from virtcore.errors import ConfigurationError

            raise ConfigurationError(f"{len(data)} bytes do not fit in one request")
        return self._io(BLKIF_OP_WRITE, sector, count,
                        bytes(data).ljust(count * BLKIF_SECTOR_SIZE, b"\0"))


class BlkBack(_Back):
    """blkback in domain ``be`` (Dom0 or a driver domain owning the disk)."""

    kind = "vbd"

    def __init__(self, xen: Xen, be: int, fe: int, devid: int = 51712,
                 device: str = "disk") -> None:
        super().__init__(xen, be, fe, devid)
        self.device = device
        self.ring: BackRing | None = None
        self.requests = 0
        self.rejected = 0
        self.broken = False

    def connect(self) -> None:
        acc = self._map_ring(self._read_int("ring-ref"))
        self.ring = BackRing(BLKIF_RING, acc)
        self._bind()
        self._connected()

    def _on_event(self, port: int) -> None:
        assert self.ring is not None
        self._switch(self.be)
        try:
            while True:
                if self.ring.request_prod_overflow():
                    self.xen.trace.add("back", self.be, "blkback: frontend provided bogus ring"
                                       " requests; ring stopped")
                    self.broken = True
                    return
                for _req in range(self.ring.unconsumed_requests()):
                    req = self.ring.get_request()
                    self.xen.trace.add("ring", self.be, f"blkback reads request id {req[3]}",
                                       cost=self.xen.costs.ring_slot)
                    status = self._handle(req)
                    self.ring.put_response(BLKIF_RING.pack_rsp((req[3], req[0], status)))
                    self.xen.trace.add("ring", self.be, f"blkback puts response id {req[3]}:"
                                       f" {BLKIF_RSP_NAMES[status]}",
                                       cost=self.xen.costs.ring_slot)
                if not self.ring.final_check_for_requests():
                    break
            if self.ring.push_responses_and_check_notify():
                self._notify()
        except RingFaultError as e:
            self.xen.trace.add("back", self.be, f"blkback: ring fault ({e}); device closed")

    def _handle(self, req: tuple[Any, ...]) -> int:
        """Validate one request, map its segments, do the I/O on the real disk, unmap."""
        from virtcore.xen.grant import GnttabMapGrantRef, GnttabUnmapGrantRef
        from virtcore.xen.hwiface import dma

        xen = self.xen
        self.requests += 1
        op, nseg, _handle, _rid, sector = req[:5]
        segs = [req[5 + 3 * i: 8 + 3 * i] for i in range(min(nseg, 11))]
        per_page = xen.memory.frame_size // BLKIF_SECTOR_SIZE
        dev = xen.platform.find(self.device)
        disk = dev.hw if dev is not None else None
        total = sum(last - first + 1 for _g, first, last in segs)
        if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            status = BLKIF_RSP_EOPNOTSUPP
        elif (not 1 <= nseg <= BLKIF_MAX_SEGMENTS_PER_REQUEST or disk is None
              or any(not first <= last < per_page for _g, first, last in segs)
              or sector + total > disk.sectors):  # type: ignore[attr-defined]
            status = BLKIF_RSP_ERROR
        else:
            status = BLKIF_RSP_OKAY
        if status != BLKIF_RSP_OKAY:
            self.rejected += 1
            xen.trace.add("back", self.be, f"blkback rejects request: op {op}, {nseg} segments,"
                          f" sector {sector}", cost=xen.costs.validate)
            return status
        xen.trace.add("back", self.be, f"blkback validates request ({nseg} segments)",
                      cost=xen.costs.validate)
        ro = op == BLKIF_OP_WRITE
        ops = [GnttabMapGrantRef(host_addr=(_HOST_ADDR_BASE + 16 + i) << 12,
                                 flags=GNTMAP_host_map | (GNTMAP_readonly if ro else 0),
                                 ref=g, dom=self.fe) for i, (g, _f, _l) in enumerate(segs)]
        xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_map_grant_ref, ops, len(ops))
        maptrack = xen.domain(self.be).maptrack
        assert maptrack is not None
        ok = all(o.status == GNTST_okay for o in ops)
        if ok:
            s = sector
            for o, (_g, first, last) in zip(ops, segs):
                mfn = maptrack.handles[o.handle].mfn
                n = last - first + 1
                off = first * BLKIF_SECTOR_SIZE
                if op == BLKIF_OP_READ:
                    data = b"".join(disk.read_sector(s + k) for k in range(n))  # type: ignore
                    ok = ok and dma(xen, self.device, mfn, off, data) == 0
                else:
                    got = dma(xen, self.device, mfn, off, n=n * BLKIF_SECTOR_SIZE)
                    if isinstance(got, int):
                        ok = False
                    else:
                        for k in range(n):
                            disk.write_sector(s + k, got[k * BLKIF_SECTOR_SIZE:  # type: ignore
                                                         (k + 1) * BLKIF_SECTOR_SIZE])
                s += n
            xen.trace.add("device", self.be, f"{self.device}: {'read' if op == 0 else 'write'}"
                          f" {total} sectors at {sector}", cost=xen.costs.device)
        unmaps = [GnttabUnmapGrantRef(handle=o.handle) for o in ops if o.status == GNTST_okay]
        if unmaps:
            xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_unmap_grant_ref, unmaps,
                          len(unmaps))
        return BLKIF_RSP_OKAY if ok else BLKIF_RSP_ERROR


# ====================================================================== network
@dataclass
class NetResult:
    """One packet sent: the tx status and its path as priced trace steps."""

    size: int
    status: int
    delivered_to: list[int] = field(default_factory=list)
    steps: list[TraceEvent] = field(default_factory=list)

    @property
    def cost_ns(self) -> float:
        return sum(s.cost for s in self.steps)

    def __repr__(self) -> str:
        return (f"NetResult({self.size} bytes, status {self.status},"
                f" delivered to {[f'd{d}' for d in self.delivered_to]})")


class NetFront(_Front):
    """netfront in ``fe``: a virtual NIC with a tx ring, an rx ring and posted rx buffers."""

    kind = "vif"

    def __init__(self, xen: Xen, fe: int, be: int, devid: int = 0, rx_buffers: int = 4) -> None:
        super().__init__(xen, fe, be, devid)
        self.tx: FrontRing | None = None
        self.rx: FrontRing | None = None
        self.rx_buffers = rx_buffers
        self.posted: dict[int, tuple[int, int, int]] = {}  # id -> (pfn, mfn, ref)
        self.received: list[bytes] = []
        self.tx_status: dict[int, int] = {}
        self.next_id = 0

    def connect(self) -> None:
        self.tx, tx_ref, _ = self._ring(NETIF_TX_RING)
        self.rx, rx_ref, _ = self._ring(NETIF_RX_RING)
        self._alloc_port()
        self.xen.domain(self.fe).on_event(self.port, self._on_event)
        self._post_rx(self.rx_buffers, notify=False)
        self._publish(tx_ring_ref=tx_ref, rx_ring_ref=rx_ref, event_channel=self.port)

    def _post_rx(self, n: int, notify: bool = True) -> None:
        assert self.rx is not None
        for _ in range(n):
            pfn, mfn, ref = self._grant_page(readonly=False)
            if pfn < 0:
                break
            rid = self.next_id & 0xFFFF
            self.next_id += 1
            self.posted[rid] = (pfn, mfn, ref)
            self.rx.put_request(NETIF_RX_RING.pack_req((rid, 0, ref)))
        if self.rx.push_requests_and_check_notify() and notify:
            self._notify()

    def _on_event(self, port: int) -> None:
        assert self.tx is not None
        assert self.rx is not None
        xen = self.xen
        for _ in range(4):
            for _rsp in range(min(self.tx.unconsumed_responses(), self.tx.nr_ents)):
                tid, status = self.tx.get_response()
                self.tx_status[tid] = status
            if not self.tx.final_check_for_responses():
                break
        got = 0
        for _ in range(4):
            for _rsp in range(min(self.rx.unconsumed_responses(), self.rx.nr_ents)):
                rid, offset, _flags, status = self.rx.get_response()
                pfn, mfn, ref = self.posted.pop(rid, (-1, -1, -1))
                if pfn < 0:
                    continue
                if status > 0:
                    data = xen.guest_read(self.fe, mfn, offset, status)
                    if isinstance(data, bytes):
                        self.received.append(data)
                        xen.trace.add("front", self.fe, f"netfront receives {status} bytes",
                                      cost=xen.costs.ring_slot)
                self._release_page(pfn, ref)
                got += 1
            if not self.rx.final_check_for_responses():
                break
        if got:
            self._post_rx(got)

    def send(self, data: bytes) -> NetResult:
        """Transmit one packet (≤ one page) through netback; returns its path."""
        assert self.tx is not None
        xen = self.xen
        seq = xen.trace.seq
        size = len(data)
        if not 0 < size <= xen.memory.frame_size:
            from virtcore.errors import ConfigurationError

            raise ConfigurationError(f"a packet is 1..{xen.memory.frame_size} bytes, got {size}")
        pfn, mfn, ref = self._grant_page(readonly=True)
        if pfn < 0:
            return NetResult(size, NETIF_RSP_ERROR, [], xen.trace.since(seq))
        xen.guest_write(self.fe, mfn, 0, bytes(data))
        tid = self.next_id & 0xFFFF
        self.next_id += 1
        self.tx.put_request(NETIF_TX_RING.pack_req((ref, 0, 0, tid, size)))
        xen.trace.add("ring", self.fe, f"netfront puts tx request id {tid} ({size} bytes)",
                      cost=xen.costs.ring_slot)
        before = {d: len(b.front.received) if b.front else 0 for d, b in _bridge(xen).items()}
        if self.tx.push_requests_and_check_notify():
            self._notify()
        self._release_page(pfn, ref)
        status = self.tx_status.pop(tid, NETIF_RSP_ERROR)
        delivered = [d for d, b in _bridge(xen).items()
                     if b.front is not None and len(b.front.received) > before.get(d, 0)]
        return NetResult(size, status, delivered, xen.trace.since(seq))


def _bridge(xen: Xen) -> dict[int, NetBack]:
    """The software bridge in the back ends: frontend domid → its netback."""
    return {k[0]: v for k, v in xen.xl.backends.items() if isinstance(v, NetBack) and v.connected}


class NetBack(_Back):
    """netback in ``be``: copies packets out of/into the front end's granted pages."""

    kind = "vif"

    def __init__(self, xen: Xen, be: int, fe: int, devid: int = 0,
                 front: NetFront | None = None) -> None:
        super().__init__(xen, be, fe, devid)
        self.tx: BackRing | None = None
        self.rx: BackRing | None = None
        self.front = front  # the peer (for the bridge's bookkeeping only)
        self.buffer_pfn = -1
        self.dropped = 0

    def connect(self) -> None:
        self.tx = BackRing(NETIF_TX_RING, self._map_ring(self._read_int("tx-ring-ref")))
        self.rx = BackRing(NETIF_RX_RING, self._map_ring(self._read_int("rx-ring-ref")))
        pfn = self.xen.domain(self.be).alloc_page()
        self.buffer_pfn = -1 if pfn is None else pfn
        self._bind()
        self._connected()

    def _on_event(self, port: int) -> None:
        from virtcore.xen.grant import GnttabCopy, GnttabCopyPtr

        assert self.tx is not None
        xen = self.xen
        self._switch(self.be)
        packets: list[bytes] = []
        try:
            while True:
                if self.tx.request_prod_overflow():
                    xen.trace.add("back", self.be, "netback: bogus tx ring; stopped")
                    return
                for _req in range(self.tx.unconsumed_requests()):
                    gref, offset, _flags, tid, size = self.tx.get_request()
                    status = NETIF_RSP_OKAY
                    if self.buffer_pfn < 0 or offset + size > xen.memory.frame_size or not size:
                        status = NETIF_RSP_ERROR
                    else:
                        buf = xen.pfn_to_mfn(self.be, self.buffer_pfn)
                        bd = xen.domain(self.be)
                        op = GnttabCopy(GnttabCopyPtr(ref=gref, domid=self.fe, offset=offset),
                                        GnttabCopyPtr(gmfn=bd.frame_of(self.buffer_pfn)),
                                        size, GNTCOPY_source_gref)
                        xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_copy, op, 1)
                        if op.status != GNTST_okay:
                            status = NETIF_RSP_ERROR
                        else:
                            data = xen.guest_read(self.be, buf, 0, size)
                            packets.append(data if isinstance(data, bytes) else b"")
                    self.tx.put_response(NETIF_TX_RING.pack_rsp((tid, status)))
                if not self.tx.final_check_for_requests():
                    break
            if self.tx.push_responses_and_check_notify():
                self._notify()
        except RingFaultError as e:
            xen.trace.add("back", self.be, f"netback: ring fault ({e})")
            return
        for p in packets:
            xen.trace.add("back", self.be, f"bridge forwards {len(p)} bytes from d{self.fe}")
            xen.platform.wire.append((self.fe, p))
            for fe, peer in _bridge(xen).items():
                if fe != self.fe:
                    peer.deliver(p)

    def deliver(self, data: bytes) -> bool:
        """Copy a packet into the front end's next posted rx buffer (or drop it)."""
        from virtcore.xen.grant import GnttabCopy, GnttabCopyPtr

        assert self.rx is not None
        xen = self.xen
        if self.buffer_pfn < 0 or not self.rx.unconsumed_requests():
            self.dropped += 1
            xen.trace.add("back", self.be, f"netback: no rx buffer from d{self.fe}: dropped")
            return False
        rid, _pad, gref = self.rx.get_request()
        buf = xen.pfn_to_mfn(self.be, self.buffer_pfn)
        xen.guest_write(self.be, buf, 0, data)
        bd = xen.domain(self.be)
        op = GnttabCopy(GnttabCopyPtr(gmfn=bd.frame_of(self.buffer_pfn)),
                        GnttabCopyPtr(ref=gref, domid=self.fe), len(data), GNTCOPY_dest_gref)
        xen.hypercall(self.be, HYPERVISOR_grant_table_op, GNTTABOP_copy, op, 1)
        status = len(data) if op.status == GNTST_okay else NETIF_RSP_DROPPED
        self.rx.put_response(NETIF_RX_RING.pack_rsp((rid, 0, 0, status)))
        if self.rx.push_responses_and_check_notify():
            self._notify()
        return status > 0

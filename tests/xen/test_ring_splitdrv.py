"""io/ring.h semantics, and the split drivers (handshake, validation, batching, trace, net)."""

from __future__ import annotations

import pytest

from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.ring import (
    BLKIF_RING,
    NETIF_RX_RING,
    NETIF_TX_RING,
    BackRing,
    FrontRing,
    MemoryAccessor,
    _put,
    read_header,
    shared_ring_init,
)


def rings(start: int = 0) -> tuple[FrontRing, BackRing, MemoryAccessor]:
    acc = MemoryAccessor(bytearray(4096))
    shared_ring_init(acc)
    if start:
        for i in range(4):
            _put(acc, i, start + (i % 2))      # prods = start, events = start + 1
    return FrontRing(BLKIF_RING, acc, start), BackRing(BLKIF_RING, acc, start), acc


def req(i: int) -> bytes:
    return BLKIF_RING.pack_req((0, 1, 0, i, 0) + (0, 0, 0) * 11)


def test_sizes_are_powers_of_two() -> None:
    assert (BLKIF_RING.size, NETIF_TX_RING.size, NETIF_RX_RING.size) == (32, 256, 256)
    assert BLKIF_RING.req_size == 112 and BLKIF_RING.rsp_size == 16


@pytest.mark.parametrize("start", [0, 2**32 - 5])
def test_notify_only_when_crossing_req_event_and_wraparound(start: int) -> None:
    f, b, acc = rings(start)
    f.put_request(req(1))
    assert f.push_requests_and_check_notify()              # back end waits at start + 1
    f.put_request(req(2))
    assert not f.push_requests_and_check_notify()          # it has not re-armed: no notify
    got = []
    while b.unconsumed_requests():
        got.append(b.get_request()[3])
    assert got == [1, 2]
    assert not b.final_check_for_requests()                # re-arm: req_event = req_cons + 1
    assert read_header(acc)[1] == (start + 3) & 0xFFFFFFFF
    f.put_request(req(3))
    assert f.push_requests_and_check_notify()
    assert b.get_request()[3] == 3
    assert (b.req_cons - start) & 0xFFFFFFFF == 3          # free-running, wraps mod 2**32


def test_batching_one_notification_for_many_requests() -> None:
    f, b, _acc = rings()
    for i in range(10):
        f.put_request(req(i))
    assert f.push_requests_and_check_notify()
    assert b.unconsumed_requests() == 10
    assert f.free_requests() == 22                          # no flow control beyond RING_SIZE


def test_responses_and_final_check() -> None:
    f, b, _acc = rings()
    f.put_request(req(7))
    f.push_requests_and_check_notify()
    r = b.get_request()
    b.put_response(BLKIF_RING.pack_rsp((r[3], 0, k.BLKIF_RSP_OKAY)))
    assert b.push_responses_and_check_notify()             # rsp_event was 1
    assert f.unconsumed_responses() == 1 and f.get_response() == (7, 0, 0)
    assert not f.final_check_for_responses()


@pytest.fixture
def xen() -> Xen:
    return Xen(frames=1024)


def test_handshake_publishes_and_connects(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=16, disk=True)
    fe = f"/local/domain/{g.domid}/device/vbd/51712"
    be = f"/local/domain/0/backend/vbd/{g.domid}/51712"
    xs = xen.xenstore
    assert xs.read(0, fe + "/state") == str(k.XenbusStateInitialised)
    assert xs.read(0, be + "/state") == str(k.XenbusStateConnected)
    port = int(xs.read(0, fe + "/event-channel"))
    assert g.evtchn[port].state == k.EVTCHNSTAT_interdomain and g.evtchn[port].remote_dom == 0
    other = xen.create_guest("nosy")
    assert xs.read(other.domid, fe + "/ring-ref") == -k.EACCES
    ref = int(xs.read(0, fe + "/ring-ref"))
    assert g.grant_table.entries[ref].flags & k.GTF_reading       # mapped by the backend


def test_block_io_roundtrip_and_trace_prices(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=32, disk=True)
    blk = xen.xl.frontends[(g.domid, "vbd")]
    data = bytes(range(256)) * 8                               # 4 sectors
    w = blk.write(10, data)
    assert w.status == k.BLKIF_RSP_OKAY
    assert xen.platform["disk"].hw.read_sector(11) == data[512:1024]
    r = blk.read(10, 4)
    assert r.data == data
    kinds = [s.kind for s in r.steps]
    for kind in ("front", "ring", "hypercall", "event", "upcall", "sched", "back", "grant",
                 "dma", "device"):
        assert kind in kinds
    assert kinds.index("device") > kinds.index("grant") > kinds.index("upcall")
    c = xen.costs
    assert r.cost_ns >= c.device + 2 * c.context_switch + 4 * (2 * c.trap)
    assert r.cost_ns == sum(s.cost for s in r.steps)
    # all grants were revoked and the pages returned
    assert g.grant_table.in_use() == [int(xen.xenstore.read(0, blk.path + "/ring-ref"))]


def test_many_segments_and_limits(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=32, disk=True)
    blk = xen.xl.frontends[(g.domid, "vbd")]
    r = blk.read(0, 11 * 8)
    assert r.status == 0 and len(r.data) == 11 * 4096
    with pytest.raises(Exception, match="count"):
        blk.read(0, 11 * 8 + 1)


def test_backend_validates_requests(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=32, disk=True)
    blk = xen.xl.frontends[(g.domid, "vbd")]
    back = xen.xl.backends[(g.domid, "vbd")]
    pfn = g.alloc_page()
    ref = g.grant_table.grant_access(0, g.frame_of(pfn))
    nosy = xen.create_guest("nosy")
    theirs = nosy.grant_table.grant_access(0, nosy.frame_of(0), ref=300)  # g's 300 is empty
    cases = {
        "bad op": (7, 0, [(ref, 0, 0)], k.BLKIF_RSP_EOPNOTSUPP),
        "no segments": (0, 0, [], k.BLKIF_RSP_ERROR),
        "first > last": (0, 0, [(ref, 3, 1)], k.BLKIF_RSP_ERROR),
        "past page": (0, 0, [(ref, 0, 8)], k.BLKIF_RSP_ERROR),
        "past disk": (0, 10**6, [(ref, 0, 0)], k.BLKIF_RSP_ERROR),
        "bad gref": (0, 0, [(4000, 0, 0)], k.BLKIF_RSP_ERROR),
        "not granted by g": (0, 0, [(theirs, 0, 0)], k.BLKIF_RSP_ERROR),
    }
    for name, (op, sector, segs, want) in cases.items():
        rid = blk.request(op, sector, segs)
        blk.push()
        assert blk.responses.pop(rid) == want, name
    assert back.rejected == 5
    assert not xen.domain(0).maptrack.handles or all(
        m.granter != nosy.domid for m in xen.domain(0).maptrack.handles.values())


def test_segment_pointing_at_the_ring_page_does_not_hang_the_backend(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=32, disk=True)
    blk = xen.xl.frontends[(g.domid, "vbd")]
    back = xen.xl.backends[(g.domid, "vbd")]
    ring_ref = int(xen.xenstore.read(0, blk.path + "/ring-ref"))
    xen.platform["disk"].hw.write_sector(0, b"\xff" * 512)   # garbage lands on the indices
    blk.request(k.BLKIF_OP_READ, 0, [(ring_ref, 0, 0)])
    blk.push()                                                 # returns: nothing loops forever
    assert back.broken or back.requests == 1


def test_netfront_to_netfront_through_the_bridge(xen: Xen) -> None:
    a = xen.create_guest("a", memory_pages=16, vif=True)
    b = xen.create_guest("b", memory_pages=16, vif=True)
    na, nb = xen.xl.frontends[(a.domid, "vif")], xen.xl.frontends[(b.domid, "vif")]
    r = na.send(b"ping")
    assert r.status == k.NETIF_RSP_OKAY and r.delivered_to == [b.domid]
    assert nb.received == [b"ping"] and na.received == []
    assert xen.platform.wire[-1] == (a.domid, b"ping")
    assert "grant" in [s.kind for s in r.steps]
    for i in range(10):                                       # rx buffers are re-posted
        nb.send(b"pong %d" % i)
    assert na.received[-1] == b"pong 9" and len(na.received) == 10


def test_states_follow_the_ring_and_event_bits(xen: Xen) -> None:
    g = xen.create_guest("g", memory_pages=16, disk=True)
    r = xen.xl.frontends[(g.domid, "vbd")].read(0)
    assert len(r.states) == len(r.steps)
    kinds = [s.kind for s in r.steps]
    put = kinds.index("ring")                       # front puts the request: private index only
    assert r.states[put]["req_prod_pvt"] == r.states[put]["req_prod"] + 1
    send = kinds.index("hypercall")                 # push + notify: published, backend pending
    assert r.states[send]["req_prod"] == r.states[send]["req_prod_pvt"]
    assert r.states[send]["back_pending"] == 1 and r.states[send]["back_upcall_pending"] == 1
    up = kinds.index("upcall")                      # the backend's upcall clears them
    assert r.states[up]["back_pending"] == 0
    last = r.states[-1]
    assert last["rsp_prod"] == last["rsp_cons"] == last["req_cons"] == last["req_prod"]
    assert last["rsp_event"] == last["rsp_cons"] + 1 and last["req_event"] == last["req_cons"] + 1

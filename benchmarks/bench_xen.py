"""Xen model: hypercalls, event-channel notifications and split-driver requests per second.

Figures (issue 8, §4), each against the closest bare-Python baseline measured in the same run:

- hypercalls/s — ``xen.hypercall(dom, xen_version)`` through the dispatcher (caller checks,
  table lookup, stats, pricing; trace recording off) against a plain dict-dispatch call of the
  same handler;
- event-channel notifications/s — ``EVTCHNOP_send`` on a connected interdomain channel, the
  receiver's upcall running its handler, against a plain bit-set + callback + bit-clear;
- split-driver requests/s — one-sector ``blkfront.read`` (ring, event, blkback, grant map,
  IOMMU-checked DMA, unmap, response, event) against a plain deque producer/consumer that reads
  the same sector from the same disk and copies it into a buffer; plus the *simulated* time per
  request from :data:`virtcore.costs.DEFAULT_COSTS`.
"""

from __future__ import annotations

import time
from collections import deque

from benchmarks._util import Row, best_of
from virtcore.xen import Xen
from virtcore.xen import constants as k
from virtcore.xen.evtchn import EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnSend

HYPERCALLS = 50_000
EVENTS = 20_000
REQUESTS = 1_000


def bench_hypercalls() -> list[Row]:
    xen = Xen(frames=256)
    xen.trace.enabled = False
    dom = xen.create_guest("g", memory_pages=8)
    hc = xen.hypercall

    def through_xen() -> int:
        for _ in range(HYPERCALLS):
            hc(dom, k.HYPERVISOR_xen_version)
        return HYPERCALLS

    table = {k.HYPERVISOR_xen_version: xen.hypercalls.get(k.HYPERVISOR_xen_version)}

    def plain() -> int:
        for _ in range(HYPERCALLS):
            table[17](xen, dom, 0, ())  # type: ignore[misc]
        return HYPERCALLS

    t, n = best_of(through_xen, 3)
    tb, nb = best_of(plain, 3)
    return [Row("hypercalls/s (xen_version through the dispatcher)", n / t, "/s"),
            Row("baseline: dict dispatch of the same handler", nb / tb, "/s"),
            Row("ratio baseline / Xen model", (nb / tb) / (n / t), "x")]


def bench_events() -> list[Row]:
    xen = Xen(frames=256)
    xen.trace.enabled = False
    a, b = xen.create_guest("a", memory_pages=8), xen.create_guest("b", memory_pages=8)
    al = EvtchnAllocUnbound(remote_dom=b.domid)
    xen.hypercall(a, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_alloc_unbound, al)
    bi = EvtchnBindInterdomain(remote_dom=a.domid, remote_port=al.port)
    xen.hypercall(b, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_bind_interdomain, bi)
    got = [0]

    def handler(port: int) -> None:
        got[0] += 1

    a.on_event(al.port, handler)
    send = EvtchnSend(bi.local_port)

    def through_xen() -> int:
        for _ in range(EVENTS):
            xen.hypercall(b, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_send, send)
        return EVENTS

    bits = [0] * 64

    def plain() -> int:
        port = al.port
        for _ in range(EVENTS):
            bits[port >> 6] |= 1 << (port & 63)          # set pending
            if bits[port >> 6] >> (port & 63) & 1:       # the receiver finds it
                bits[port >> 6] &= ~(1 << (port & 63))   # clears it
                handler(port)                            # and runs its handler
        return EVENTS

    before = got[0]
    t, n = best_of(through_xen, 3)
    assert got[0] - before == 3 * EVENTS, "every send must reach the handler once"
    tb, nb = best_of(plain, 3)
    cost0 = xen.trace.total_cost
    xen.hypercall(b, k.HYPERVISOR_event_channel_op, k.EVTCHNOP_send, send)
    sim = xen.trace.total_cost - cost0
    return [Row("event-channel notifications/s (send → upcall → handler)", n / t, "/s"),
            Row("baseline: bit set + callback + bit clear", nb / tb, "/s"),
            Row("ratio baseline / Xen model", (nb / tb) / (n / t), "x"),
            Row("simulated time per notification", sim, "ns", "DEFAULT_COSTS")]


def bench_split_driver() -> list[Row]:
    xen = Xen(frames=512)
    xen.trace.enabled = False
    g = xen.create_guest("g", memory_pages=32, disk=True)
    blk = xen.xl.frontends[(g.domid, "vbd")]
    disk = xen.platform["disk"].hw
    disk.write_sector(5, b"x" * 512)

    def through_xen() -> int:
        for _ in range(REQUESTS):
            r = blk.read(5, 1)
            if r.status:
                raise RuntimeError("request failed")
        return REQUESTS

    requests: deque[tuple[int, int]] = deque()
    responses: deque[tuple[int, bytes]] = deque()
    buffer = bytearray(4096)

    def plain() -> int:
        for i in range(REQUESTS):
            requests.append((i, 5))                      # front: put request
            rid, sector = requests.popleft()             # back: take it
            data = disk.read_sector(sector)              # the same device work
            buffer[:512] = data                          # copy into the guest buffer
            responses.append((rid, bytes(buffer[:512])))  # response
            responses.popleft()                          # front: take it
        return REQUESTS

    t, n = best_of(through_xen, 3)
    tb, nb = best_of(plain, 3)
    cost0 = xen.trace.total_cost
    blk.read(5, 1)
    sim = xen.trace.total_cost - cost0
    return [Row("split-driver requests/s (blkfront read, 1 sector)", n / t, "/s"),
            Row("baseline: deque producer/consumer, same disk read", nb / tb, "/s"),
            Row("ratio baseline / Xen model", (nb / tb) / (n / t), "x"),
            Row("simulated time per request", sim, "ns", "DEFAULT_COSTS"),
            Row("simulated requests/s (1e9 / simulated ns)", 1e9 / sim, "/s")]


def run() -> list[Row]:
    """All figures (``python -m benchmarks xen``)."""
    t0 = time.perf_counter()
    rows = bench_hypercalls() + bench_events() + bench_split_driver()
    rows.append(Row("(bench_xen wall time)", time.perf_counter() - t0, "s"))
    return rows

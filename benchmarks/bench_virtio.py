"""virtio vs emulated devices (virtcore.kvm.qemu): requests/s simulated and wall, exits per request.

Two kinds of figure for each I/O path of :func:`virtcore.kvm.qemu.compare_block_io`
(4 KiB requests, half writes) and :func:`~virtcore.kvm.qemu.compare_net_tx`:

- *simulated* — requests per second of simulated time and the mean request latency
  under the course's cost model (:mod:`virtcore.costs`, teaching assumptions, ≈ ns): what
  the model says about the paths — each virtual path beside the native one with the same
  driver, batching and interrupt policy;
- *wall* — requests the simulator itself pushes through per second of wall time
  (best of three), exits per request: what running the model costs.

Also one raw virtqueue figure: add → kick → pop → push → get_used round trips per second.
"""

from __future__ import annotations

import time

from benchmarks._util import Row, best_of
from virtcore.kvm.qemu import compare_block_io, compare_net_tx
from virtcore.kvm.virtio import GuestRAM, VirtqDevice, VirtqDriver, VirtqLayout

REQUESTS = 2048


def _block_rows(batch: int) -> list[Row]:
    rows = []
    for path in ("native-legacy", "emulated", "native", "virtio", "virtio+ioeventfd", "vhost"):
        best = float("inf")
        res = None
        for _ in range(3):
            t0 = time.perf_counter()
            res = compare_block_io(REQUESTS, batch, 4096, paths=(path,))
            best = min(best, time.perf_counter() - t0)
        assert res is not None
        r = res[path]
        if not r.data_ok:
            raise AssertionError(f"{path}: data check failed")
        tag = f"blk {path}, batch {batch}"
        rows.append(Row(f"{tag}: simulated", r.requests_per_s, "req/s",
                        f"mean latency {r.mean_latency_ns / 1000:.1f} µs"))
        rows.append(Row(f"{tag}: exits per request", r.exits_per_request, "exits",
                        f"{r.transitions} vCPU + {r.iothread_transitions} I/O-thread "
                        f"kernel↔user transitions, {r.interrupts} interrupts"))
        rows.append(Row(f"{tag}: wall", REQUESTS / best, "req/s",
                        f"{best * 1e6 / REQUESTS:.1f} µs per simulated request"))
    return rows


def _virtqueue_round_trips(n: int = 20_000) -> int:
    ram = GuestRAM(1 << 16)
    lay = VirtqLayout.contiguous(256, base=0x1000)
    drv, dev = VirtqDriver(ram, lay, event_idx=True), VirtqDevice(ram, lay, event_idx=True)
    for i in range(n):
        drv.add([(0x8000, 16)], [(0x9000, 512)], token=i)
        drv.kick()
        c = dev.pop()
        dev.push(c.head, 512)  # type: ignore[union-attr]
        dev.notify()
        drv.get_used()
    return n


def run() -> list[Row]:
    """All figures."""
    rows = _block_rows(8) + _block_rows(1)
    cmp = compare_block_io(REQUESTS, 8, 4096)
    rows.append(Row("blk virtio / emulated (simulated req/s), batch 8",
                    cmp.speedup("virtio", "emulated"), "x"))
    rows.append(Row("blk virtio / native, same queue and batching (simulated req/s), batch 8",
                    cmp.speedup("virtio", "native"), "x", "< 1: never faster than the hardware"))
    net = compare_net_tx(1024, 8, 1000)
    for path in ("emulated", "virtio"):
        r = net[path]
        rows.append(Row(f"net tx {path}, batch 8: simulated", r.requests_per_s, "frames/s",
                        f"{r.exits_per_request:.3g} exits per frame"))
    secs, n = best_of(_virtqueue_round_trips, repeat=3)
    rows.append(Row("virtqueue round trips (add, kick, pop, push, get_used)", n / secs, "/s",
                    "pure-Python split ring in a bytearray"))
    return rows

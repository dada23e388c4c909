"""Scheduling simulator (virtcore.sched): 64 vCPUs on 8 pCPUs for 60 s, vs a bare event loop.

Target: 64 CPU-bound vCPUs on 8 pCPUs for 60 s of simulated time under
Credit in ≤ 1 s of wall time.  Also measured: an I/O-heavy mix (many more
events) and the CFS-like scheduler.

The baseline is the floor of any pure-Python discrete-event simulation: a
bare ``heapq`` loop that pops and pushes as many ``(time, kind, seq, arg, gen)``
events as the Credit run processed, doing nothing else.  ``µs/event`` of the
simulator against it shows what the plugin calls, checks and bookkeeping cost.
"""

from __future__ import annotations

import time
from heapq import heappop, heappush

from benchmarks._util import Row
from virtcore.sched import CFSLike, Credit, Domain, IOBound, Mixed, Scheduler, simulate


def _domains(n_vcpus: int, workload: str) -> list[Domain]:
    """``n_vcpus`` vCPUs in 4-vCPU domains, weights alternating 256/512, domain d2 capped at 200.

    workload "cpu": all CPU-bound; "mixed": every fourth domain I/O-bound
    (mean 2 ms run / 8 ms block), every fourth a Mixed workload, the rest CPU-bound.
    """
    doms = []
    per = 4
    for i in range(0, n_vcpus, per):
        k = i // per
        wl = None
        if workload == "mixed":
            if k % 4 == 1:
                wl = IOBound(run_us=2_000, block_us=8_000)
            elif k % 4 == 3:
                wl = Mixed()
        doms.append(
            Domain(
                f"d{k}",
                vcpus=min(per, n_vcpus - i),
                workload=wl,
                weight=512 if k % 2 else 256,
                cap=200 if k == 2 else 0,
            )
        )
    return doms


def _bench(
    make: type[Scheduler], n_vcpus: int, n_pcpus: int, seconds: float, workload: str, repeat: int
) -> dict[str, float]:
    best = float("inf")
    res = None
    for _ in range(repeat):
        doms = _domains(n_vcpus, workload)
        sched = make()
        t0 = time.perf_counter()
        res = simulate(doms, sched, pcpus=n_pcpus, duration_us=int(seconds * 1_000_000), seed=0)
        best = min(best, time.perf_counter() - t0)
    assert res is not None
    return {
        "wall_s": best,
        "events": res.events,
        "segments": len(res.segments),
        "utilisation": sum(res.utilisation) / n_pcpus,
    }


def bench_credit(
    n_vcpus: int = 64,
    n_pcpus: int = 8,
    seconds: float = 60,
    *,
    workload: str = "cpu",
    repeat: int = 3,
) -> dict[str, float]:
    """Wall time (best of ``repeat``) of one Credit run; its event and segment counts, utilisation.

    ``workload`` is "cpu" (all CPU-bound, the target case) or "mixed" (I/O-heavy).
    """
    return _bench(Credit, n_vcpus, n_pcpus, seconds, workload, repeat)


def bare_event_loop(n_events: int, repeat: int = 3) -> float:
    """Best wall time of a heapq loop popping and pushing ``n_events`` events, nothing else."""
    best = float("inf")
    for _ in range(repeat):
        heap: list[tuple[int, int, int, int, int]] = [(i, 3, i, i & 7, 0) for i in range(8)]
        seq = 8
        t0 = time.perf_counter()
        for _ in range(n_events):
            t, kind, _s, arg, gen = heappop(heap)
            seq += 1
            heappush(heap, (t + 1000, kind, seq, arg, gen))
        best = min(best, time.perf_counter() - t0)
    return best


def run() -> list[Row]:
    """The figures: wall times, µs per event, and the bare-loop baseline."""
    cpu = bench_credit()
    mixed = bench_credit(workload="mixed")
    cfs = _bench(CFSLike, 64, 8, 60, "cpu", 3)
    base_mixed = bare_event_loop(int(mixed["events"]))
    return [
        Row("credit 64 vCPU / 8 pCPU / 60 s, CPU-bound: wall", cpu["wall_s"], "s", "target <= 1 s"),
        Row("  events", cpu["events"], "events"),
        Row("credit 64 vCPU / 8 pCPU / 60 s, I/O-heavy mix: wall", mixed["wall_s"], "s"),
        Row("  events", mixed["events"], "events"),
        Row("  simulator", 1e6 * mixed["wall_s"] / mixed["events"], "µs/event"),
        Row("  bare heapq loop (baseline)", 1e6 * base_mixed / mixed["events"], "µs/event"),
        Row("  simulator / baseline", mixed["wall_s"] / base_mixed, "x"),
        Row("CFS-like 64 vCPU / 8 pCPU / 60 s, CPU-bound: wall", cfs["wall_s"], "s"),
        Row("  events", cfs["events"], "events"),
    ]


if __name__ == "__main__":
    for row in run():
        print(row)

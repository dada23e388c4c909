"""What a scheduling run produced: a trace of segments and the metrics computed from it.

- **trace** — :attr:`SchedResult.segments`: ``Segment(pcpu, vcpu, start, end)``
  intervals, one per stretch a vCPU ran on a pCPU (contiguous stretches of the
  same vCPU on the same pCPU are merged) — the data of a Gantt chart.
- **CPU share** (CPU份额) — CPU time divided by the run's duration, in pCPUs
  (1.0 = one pCPU for the whole run; the unit of Xen caps / 100).
- **wake-up latency** (唤醒延迟) — from a wake-up to the first time the vCPU
  runs afterwards; mean and 95th percentile per vCPU.
- **utilisation** (利用率) — busy time of each pCPU / duration.
- **Jain's fairness index** — ``(Σx)² / (n·Σx²)`` over weight-normalised
  shares ``x = share / weight``: 1.0 when every vCPU got exactly its weight's
  worth, 1/n when one got everything.  Meaningful for vCPUs that all
  contend for the CPU (CPU-bound).

>>> jain_index([1, 1, 1, 1])
1.0
>>> jain_index([1, 0, 0, 0])
0.25
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from virtcore.sched.core import Simulator


class Segment(NamedTuple):
    """``vcpu`` ran on ``pcpu`` during ``[start, end)`` µs.

    >>> Segment(0, "web.0", 0, 30_000).duration
    30000
    """

    pcpu: int
    vcpu: str
    start: int
    end: int

    @property
    def duration(self) -> int:
        """``end - start`` in µs."""
        return self.end - self.start


class LatencyStats(NamedTuple):
    """Wake-up latencies of one vCPU, in µs (``None`` when it never woke and ran).

    >>> LatencyStats.of([0, 10, 20, 30])
    LatencyStats(n=4, mean=15.0, p95=30, max=30)
    """

    n: int
    mean: float | None
    p95: int | None
    max: int | None

    @classmethod
    def of(cls, values: Sequence[int]) -> LatencyStats:
        """Summarise ``values``; p95 is the nearest-rank 95th percentile."""
        if not values:
            return cls(0, None, None, None)
        ordered = sorted(values)
        rank = max(1, math.ceil(0.95 * len(ordered)))
        return cls(len(ordered), sum(ordered) / len(ordered), ordered[rank - 1], ordered[-1])


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index ``(Σx)² / (n·Σx²)``; 1.0 = perfectly fair.

    Returns 1.0 for an empty input or all zeros (nobody got anything: equally).

    >>> round(jain_index([2, 1]), 3)
    0.9
    """
    xs = [float(x) for x in values]
    sq = sum(x * x for x in xs)
    if not xs or sq == 0.0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sq)


@dataclass(frozen=True, repr=False)
class SchedResult:
    """The outcome of :func:`~virtcore.sched.core.simulate` (pure data; views live elsewhere).

    Attributes
    ----------
    scheduler : str
        Name of the scheduler.
    pcpus : int
        Number of pCPUs.
    duration_us : int
        Simulated time.
    seed : int
        The seed the workloads were drawn from.
    segments : tuple of Segment
        The trace, sorted by (start, pcpu).
    vcpu_names : tuple of str
        All vCPUs in simulation order.
    vcpu_domain : dict
        vCPU name → domain name.
    domain_params : dict
        domain name → ``{"weight", "cap", "nice", "kind", "vcpus"}``.
    weights : dict
        vCPU name → the weight its fair share is measured against
        (the scheduler's ``weight_of``).
    vcpu_cpu_us : dict
        vCPU name → CPU time received.
    latencies_us : dict
        vCPU name → tuple of wake-up latencies.
    runnable_intervals : dict
        vCPU name → tuple of ``(start, end)`` while runnable (running or waiting).
    pcpu_busy_us : tuple of int
        Busy time per pCPU.
    dispatches : int
        How many times a pCPU started a vCPU (merged continuations included).
    events : int
        Events processed.

    Examples
    --------
    >>> from virtcore.sched import Credit, Domain, simulate
    >>> r = simulate([Domain("a", weight=512), Domain("b")], Credit(), duration_us=300_000)
    >>> r.domain_share["a"] > r.domain_share["b"]
    True
    >>> round(sum(r.vcpu_share.values()), 6)
    1.0
    """

    scheduler: str
    pcpus: int
    duration_us: int
    seed: int
    segments: tuple[Segment, ...]
    vcpu_names: tuple[str, ...]
    vcpu_domain: dict[str, str]
    domain_params: dict[str, dict[str, object]]
    weights: dict[str, float]
    vcpu_cpu_us: dict[str, int]
    latencies_us: dict[str, tuple[int, ...]]
    runnable_intervals: dict[str, tuple[tuple[int, int], ...]]
    pcpu_busy_us: tuple[int, ...]
    dispatches: int
    events: int

    @classmethod
    def _from_simulator(cls, sim: Simulator) -> SchedResult:
        names = [v.name for v in sim.vcpus]
        raw = [(start, p.id, vid, end) for p in sim.pcpus for vid, start, end in p._trace]
        raw.sort()
        new = tuple.__new__  # skips NamedTuple's Python-level __new__ (hundreds of thousands)
        segs = [new(Segment, (pcpu, names[vid], start, end)) for start, pcpu, vid, end in raw]
        sched = sim.scheduler
        return cls(
            scheduler=sched.name,
            pcpus=len(sim.pcpus),
            duration_us=sim.duration_us,
            seed=sim.seed,
            segments=tuple(segs),
            vcpu_names=tuple(names),
            vcpu_domain={v.name: v.domain.name for v in sim.vcpus},
            domain_params={
                d.name: {
                    "weight": d.weight,
                    "cap": d.cap,
                    "nice": d.nice,
                    "kind": d.kind,
                    "vcpus": len(d.vcpus),
                }
                for d in sim.domains
            },
            weights={v.name: float(sched.weight_of(v)) for v in sim.vcpus},
            vcpu_cpu_us={v.name: v._cpu_us for v in sim.vcpus},
            latencies_us={v.name: tuple(v._latencies) for v in sim.vcpus},
            runnable_intervals={
                v.name: tuple((a, b) for a, b in v._intervals if b > a) for v in sim.vcpus
            },
            pcpu_busy_us=tuple(p._busy for p in sim.pcpus),
            dispatches=sim._dispatches,
            events=sim._events,
        )

    # ------------------------------------------------------------------ shares
    @property
    def vcpu_share(self) -> dict[str, float]:
        """vCPU name → CPU time / duration (in pCPUs)."""
        d = self.duration_us
        return {n: t / d for n, t in self.vcpu_cpu_us.items()}

    @property
    def domain_cpu_us(self) -> dict[str, int]:
        """domain name → CPU time of all its vCPUs."""
        out = dict.fromkeys(self.domain_params, 0)
        for n, t in self.vcpu_cpu_us.items():
            out[self.vcpu_domain[n]] += t
        return out

    @property
    def domain_share(self) -> dict[str, float]:
        """domain name → CPU time / duration (in pCPUs; may exceed 1 with several vCPUs)."""
        d = self.duration_us
        return {n: t / d for n, t in self.domain_cpu_us.items()}

    @property
    def utilisation(self) -> tuple[float, ...]:
        """Busy fraction of each pCPU."""
        return tuple(b / self.duration_us for b in self.pcpu_busy_us)

    def latency(self, vcpu: str) -> LatencyStats:
        """Wake-up latency statistics of one vCPU (by name).

        >>> from virtcore.sched import FIFO, Domain, simulate
        >>> simulate([Domain("a"), Domain("b")], FIFO(), duration_us=50).latency("b.0")
        LatencyStats(n=0, mean=None, p95=None, max=None)
        """
        return LatencyStats.of(self.latencies_us[vcpu])

    def domain_latency(self, domain: str) -> LatencyStats:
        """Wake-up latency statistics over all vCPUs of a domain."""
        vals = [
            x
            for n in self.vcpu_names
            if self.vcpu_domain[n] == domain
            for x in self.latencies_us[n]
        ]
        return LatencyStats.of(vals)

    def fairness(self, vcpus: Iterable[str] | None = None) -> float:
        """Jain's index of weight-normalised shares over ``vcpus`` (default: all)."""
        names = list(self.vcpu_names if vcpus is None else vcpus)
        return jain_index(self.vcpu_cpu_us[n] / self.weights[n] for n in names)

    # ------------------------------------------------------------------ the trace
    def segments_of(self, vcpu: str) -> list[Segment]:
        """The trace of one vCPU."""
        return [s for s in self.segments if s.vcpu == vcpu]

    def cpu_in_window(self, vcpu: str, start: int, end: int) -> int:
        """CPU µs ``vcpu`` received during ``[start, end)``.

        >>> from virtcore.sched import RoundRobin, Domain, simulate
        >>> r = simulate([Domain("a"), Domain("b")], RoundRobin(10), duration_us=100)
        >>> r.cpu_in_window("a.0", 5, 25)
        10
        """
        return sum(
            min(s.end, end) - max(s.start, start)
            for s in self.segments
            if s.vcpu == vcpu and s.start < end and s.end > start
        )

    def idle_while_waiting_us(self, *, uncapped_only: bool = True) -> int:
        """Time during which some pCPU idled while some vCPU waited (runnable, not running).

        0 for a work-conserving scheduler (工作保持).  Capped domains' vCPUs are
        left out by default: a cap may keep them waiting on purpose.

        >>> from virtcore.sched import Credit, Domain, simulate
        >>> r = simulate([Domain("c", cap=50)], Credit(), duration_us=240_000)
        >>> r.idle_while_waiting_us(), r.idle_while_waiting_us(uncapped_only=False)
        (0, 120000)
        """
        skip = {
            n
            for n in self.vcpu_names
            if uncapped_only and self.domain_params[self.vcpu_domain[n]]["cap"]
        }
        delta: dict[int, list[int]] = {}  # time -> [Δrunnable, Δrunning-counted, Δrunning-all]
        for n, ivs in self.runnable_intervals.items():
            if n in skip:
                continue
            for a, b in ivs:
                delta.setdefault(a, [0, 0, 0])[0] += 1
                delta.setdefault(b, [0, 0, 0])[0] -= 1
        for s in self.segments:
            counted = s.vcpu not in skip
            da = delta.setdefault(s.start, [0, 0, 0])
            db = delta.setdefault(s.end, [0, 0, 0])
            da[2] += 1
            db[2] -= 1
            if counted:
                da[1] += 1
                db[1] -= 1
        total = 0
        runnable = running = busy = 0
        prev = 0
        for t in sorted(delta):
            if busy < self.pcpus and runnable > running:
                total += t - prev
            d = delta[t]
            runnable += d[0]
            running += d[1]
            busy += d[2]
            prev = t
        return total

    def format_trace(self, limit: int = 30) -> str:
        """The first ``limit`` segments as text, one per line (OSTEP style).

        >>> from virtcore.sched import RoundRobin, Domain, simulate
        >>> r = simulate([Domain("a"), Domain("b")], RoundRobin(5_000), duration_us=10_000)
        >>> print(r.format_trace())
        [      0 →    5000 µs] pCPU0 runs a.0 (5000 µs)
        [   5000 →   10000 µs] pCPU0 runs b.0 (5000 µs)
        """
        lines = [
            f"[{s.start:>7} → {s.end:>7} µs] pCPU{s.pcpu} runs {s.vcpu} ({s.duration} µs)"
            for s in self.segments[:limit]
        ]
        if len(self.segments) > limit:
            lines.append(f"... {len(self.segments) - limit} more segments")
        return "\n".join(lines)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        head = (
            f"SchedResult: {self.scheduler} on {self.pcpus} pCPU(s), "
            f"{self.duration_us / 1000:g} ms, seed {self.seed}; "
            f"{len(self.segments)} segments, {self.dispatches} dispatches"
        )
        rows = [("vCPU", "weight", "cap", "CPU ms", "share", "wakes", "lat mean µs", "lat p95 µs")]
        shown = self.vcpu_names[:24]
        for n in shown:
            dp = self.domain_params[self.vcpu_domain[n]]
            st = self.latency(n)
            rows.append(
                (
                    n,
                    f"{self.weights[n]:g}",
                    str(dp["cap"]),
                    f"{self.vcpu_cpu_us[n] / 1000:.1f}",
                    f"{100 * self.vcpu_cpu_us[n] / self.duration_us:.1f}%",
                    str(st.n),
                    "-" if st.mean is None else f"{st.mean:.0f}",
                    "-" if st.p95 is None else str(st.p95),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head]
        for i, r in enumerate(rows):
            lines.append(
                "  ".join(
                    c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))
                )
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        if len(self.vcpu_names) > len(shown):
            lines.append(f"... {len(self.vcpu_names) - len(shown)} more vCPUs")
        doms = ", ".join(f"{d} {100 * s:.1f}%" for d, s in self.domain_share.items())
        util = ", ".join(f"pCPU{i} {100 * u:.1f}%" for i, u in enumerate(self.utilisation))
        lines.append(f"domain share (% of one pCPU): {doms}")
        lines.append(f"utilisation: {util}")
        lines.append(f"Jain fairness (weight-normalised, all vCPUs): {self.fairness():.3f}")
        return "\n".join(lines)

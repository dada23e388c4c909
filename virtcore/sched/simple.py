"""Two textbook schedulers on one global queue: FIFO and round-robin (轮转).

Both keep a single run queue shared by all pCPUs (real hypervisors keep one
per pCPU; see :mod:`virtcore.sched.credit`).  Neither looks at weights or
caps, so a CPU hog gets as much as anyone — the motivation for Credit.
"""

from __future__ import annotations

from collections import deque

from virtcore.errors import ConfigurationError
from virtcore.sched.core import IDLE, Decision, Scheduler
from virtcore.sched.model import PCPU, VCPU


class FIFO(Scheduler):
    """First come, first served (先来先服务): a vCPU runs until it blocks.

    No timeslice, no preemption: one CPU hog keeps its pCPU forever.

    >>> from virtcore.sched import Domain, Phases, simulate
    >>> doms = [Domain("a", workload=Phases(((5_000, 1_000),))), Domain("b")]
    >>> r = simulate(doms, FIFO(), duration_us=20_000)
    >>> [(s.vcpu, s.start, s.end) for s in r.segments]
    [('a.0', 0, 5000), ('b.0', 5000, 20000)]
    """

    def __init__(self) -> None:
        self.queue: deque[VCPU] = deque()

    def wake(self, vcpu: VCPU, now: int) -> None:
        """Join the tail."""
        self.queue.append(vcpu)

    def descheduled(self, vcpu: VCPU, pcpu: PCPU, now: int, ran_us: int) -> None:
        """Preempted (only a tickle or a yield can do that): back to the head."""
        if vcpu.runnable:
            self.queue.appendleft(vcpu)

    def pick_next(self, pcpu: PCPU, now: int) -> Decision:
        """The head, with no timeslice."""
        return Decision(self.queue.popleft()) if self.queue else IDLE


class RoundRobin(Scheduler):
    """Round-robin (轮转): FIFO order, but each run lasts at most ``timeslice_us``.

    Parameters
    ----------
    timeslice_us : int
        The quantum, e.g. 30_000 (Xen credit's default timeslice, [XEN-CREDIT; XL-1]).

    >>> from virtcore.sched import Domain, simulate
    >>> r = simulate([Domain(n) for n in "abc"], RoundRobin(10_000), duration_us=60_000)
    >>> [s.vcpu for s in r.segments]
    ['a.0', 'b.0', 'c.0', 'a.0', 'b.0', 'c.0']
    """

    def __init__(self, timeslice_us: int = 30_000) -> None:
        if not isinstance(timeslice_us, int) or isinstance(timeslice_us, bool) or timeslice_us < 1:
            raise ConfigurationError(f"timeslice_us must be an int >= 1, got {timeslice_us!r}")
        self.timeslice_us = timeslice_us
        self.queue: deque[VCPU] = deque()

    def wake(self, vcpu: VCPU, now: int) -> None:
        """Join the tail."""
        self.queue.append(vcpu)

    def descheduled(self, vcpu: VCPU, pcpu: PCPU, now: int, ran_us: int) -> None:
        """Slice used up (or preempted): to the tail."""
        if vcpu.runnable:
            self.queue.append(vcpu)

    def pick_next(self, pcpu: PCPU, now: int) -> Decision:
        """The head, for one timeslice."""
        return Decision(self.queue.popleft(), self.timeslice_us) if self.queue else IDLE

"""A CFS-like host scheduler: Linux's Completely Fair Scheduler, as KVM guests meet it.

Under KVM a guest is an ordinary process and each vCPU is a thread [KVM-ORIG; QEMU-ACCEL]
(syllabus S3.2), so the vCPUs compete with every other host thread on
Linux's fair scheduler.  Here every :class:`~virtcore.sched.model.VCPU` is such
a task: a VM's vCPU thread or a host process's thread (``Domain(kind="process")``).

The idea of CFS: each task has a **virtual runtime** (vruntime) that grows
by ``ran × NICE_0_LOAD / weight``; the task with the smallest vruntime runs
next.  A task's weight comes from its nice value through Linux's
``sched_prio_to_weight`` table (``kernel/sched/core.c``): nice 0 = 1024, and
each nice step changes the weight by about 1.25× (≈10 % of CPU).

Constants from ``kernel/sched/fair.c`` (pre-EEVDF, ≤ 6.5), before scaling:
``sysctl_sched_latency`` 6 ms, ``sysctl_sched_min_granularity`` 0.75 ms,
``sched_nr_latency`` 8, ``sysctl_sched_wakeup_granularity`` 1 ms.  As in
Linux's default ``SCHED_TUNABLESCALING_LOG``, the three times are multiplied
by ``1 + ilog2(min(ncpus, 8))`` (so ×4 on 8 pCPUs: 24 ms, 3 ms, 4 ms).

Simplified (say so in class):

- **one run queue shared by all pCPUs** (Linux has one per CPU plus periodic
  and idle load balancing); per-CPU quantities (period, slice) are computed
  for the average load per pCPU;
- slices end exactly (like ``hrtick``) instead of at the next
  ``scheduler_tick`` (HZ = 250 → 4 ms);
- no ``START_DEBIT`` for new tasks (they start at ``min_vruntime``), no
  group scheduling (cgroups); ``min_vruntime`` is brought up to date only
  when a task wakes (the only place it is used here);
- since Linux 6.6 the fair class is EEVDF; the vruntime idea is the same.

>>> nice_to_weight(0), nice_to_weight(1), nice_to_weight(-20), nice_to_weight(19)
(1024, 820, 88761, 15)
>>> len(SCHED_PRIO_TO_WEIGHT)
40
"""

from __future__ import annotations

from heapq import heappop, heappush

from virtcore.errors import ConfigurationError
from virtcore.sched.core import IDLE, Decision, Scheduler, Simulator
from virtcore.sched.model import PCPU, VCPU

NICE_0_LOAD = 1024
#: ``sched_prio_to_weight[40]`` from Linux ``kernel/sched/core.c``, nice −20 … +19.
SCHED_PRIO_TO_WEIGHT: tuple[int, ...] = (
    # -20
    88761, 71755, 56483, 46273, 36291,
    # -15
    29154, 23254, 18705, 14949, 11916,
    # -10
    9548, 7620, 6100, 4904, 3906,
    # -5
    3121, 2501, 1991, 1586, 1277,
    # 0
    1024, 820, 655, 526, 423,
    # 5
    335, 272, 215, 172, 137,
    # 10
    110, 87, 70, 56, 45,
    # 15
    36, 29, 23, 18, 15,
)  # fmt: skip

SYSCTL_SCHED_LATENCY_US = 6_000
SYSCTL_SCHED_MIN_GRANULARITY_US = 750
SCHED_NR_LATENCY = 8
SYSCTL_SCHED_WAKEUP_GRANULARITY_US = 1_000

#: vruntime is kept in "virtual nanoseconds" so integer division loses almost nothing.
_NS = 1000


def nice_to_weight(nice: int) -> int:
    """Linux's load weight of a nice value (−20..19).

    >>> nice_to_weight(5)
    335
    """
    if not isinstance(nice, int) or not -20 <= nice <= 19:
        raise ConfigurationError(f"nice must be an int in -20..19, got {nice!r}")
    return SCHED_PRIO_TO_WEIGHT[nice + 20]


class _Task:
    """``struct sched_entity``, the part we need."""

    __slots__ = ("exec_start", "new", "vruntime", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.vruntime = 0  # virtual ns
        self.exec_start = 0
        self.new = True


class CFSLike(Scheduler):
    """Linux CFS, simplified (one shared run queue): run the smallest vruntime.

    Parameters
    ----------
    latency_us, min_granularity_us, wakeup_granularity_us : int
        Normalised ``sysctl_sched_latency`` (6000), ``sysctl_sched_min_granularity``
        (750), ``sysctl_sched_wakeup_granularity`` (1000).
    scaling : bool
        Multiply them by ``1 + ilog2(min(ncpus, 8))`` (Linux's default
        ``SCHED_TUNABLESCALING_LOG``); False = use them as given.
    wakeup_preemption : bool
        A waking task preempts the running task with the largest vruntime if
        that is ahead by more than the wake-up granularity (``check_preempt_wakeup``).

    Examples
    --------
    nice 0 against nice 5 on one pCPU: about 1024 : 335.

    >>> from virtcore.sched import Domain, simulate
    >>> r = simulate([Domain("a"), Domain("b", nice=5)], CFSLike(), duration_us=3_000_000)
    >>> round(r.domain_cpu_us["a"] / r.domain_cpu_us["b"], 1)
    3.1
    """

    name = "CFS"

    def __init__(
        self,
        *,
        latency_us: int = SYSCTL_SCHED_LATENCY_US,
        min_granularity_us: int = SYSCTL_SCHED_MIN_GRANULARITY_US,
        wakeup_granularity_us: int = SYSCTL_SCHED_WAKEUP_GRANULARITY_US,
        wakeup_preemption: bool = True,
        scaling: bool = True,
    ) -> None:
        for what, val in (
            ("latency_us", latency_us),
            ("min_granularity_us", min_granularity_us),
            ("wakeup_granularity_us", wakeup_granularity_us),
        ):
            if not isinstance(val, int) or val < 1:
                raise ConfigurationError(f"{what} must be an int >= 1, got {val!r}")
        self.normalized = (latency_us, min_granularity_us, wakeup_granularity_us)
        self.latency_us = latency_us
        self.min_granularity_us = min_granularity_us
        self.wakeup_granularity_us = wakeup_granularity_us
        self.wakeup_preemption = wakeup_preemption
        self.scaling = scaling
        self.nr_latency = -(-latency_us // min_granularity_us)  # sched_nr_latency

    def attach(self, sim: Simulator) -> None:
        """One shared queue (a heap ordered by vruntime)."""
        super().attach(sim)
        if self.scaling:  # get_update_sysctl_factor(), SCHED_TUNABLESCALING_LOG
            factor = 1 + (min(len(sim.pcpus), 8).bit_length() - 1)
            lat, gran, wgran = self.normalized
            self.latency_us = lat * factor
            self.min_granularity_us = gran * factor
            self.wakeup_granularity_us = wgran * factor
        self.queue: list[tuple[int, int, VCPU]] = []
        self.seq = 0
        self.min_vruntime = 0
        self.nr_running = 0  # runnable tasks (queued or running)
        self.load = 0  # their total weight
        self.npcpus = len(sim.pcpus)

    def weight_of(self, vcpu: VCPU) -> float:
        """Fair shares are measured against the nice weight."""
        return nice_to_weight(vcpu.domain.nice)

    def add_vcpu(self, vcpu: VCPU) -> None:
        """A new task with the weight of its process's nice value."""
        vcpu.priv = _Task(nice_to_weight(vcpu.domain.nice))

    def _update_min_vruntime(self) -> None:
        """``update_min_vruntime``: monotonic, min over running tasks and the leftmost."""
        cands = [v.priv.vruntime for p in self.sim.pcpus if (v := p.current) is not None]
        if self.queue:
            cands.append(self.queue[0][0])
        if cands:
            m = min(cands)
            if m > self.min_vruntime:
                self.min_vruntime = m

    def wake(self, vcpu: VCPU, now: int) -> None:
        """``place_entity`` + ``enqueue_entity``, then maybe preempt (``check_preempt_wakeup``)."""
        t: _Task = vcpu.priv
        self._update_min_vruntime()
        if t.new:  # initial placement (no START_DEBIT)
            t.new = False
            t.vruntime = max(t.vruntime, self.min_vruntime)
        else:  # sleeper credit, GENTLE_FAIR_SLEEPERS: at most half a latency period
            t.vruntime = max(t.vruntime, self.min_vruntime - self.latency_us * _NS // 2)
        self.nr_running += 1
        self.load += t.weight
        self.seq += 1
        heappush(self.queue, (t.vruntime, self.seq, vcpu))
        if not self.wakeup_preemption:
            return
        sim = self.sim
        if any(p.current is None for p in sim.pcpus):
            return  # an idle pCPU will take it
        # Compare with the running task that is furthest ahead in vruntime.
        worst = None
        worst_vr = -1
        for p in sim.pcpus:
            c: _Task = p.current.priv  # type: ignore[union-attr]
            vr = c.vruntime + (now - c.exec_start) * _NS * NICE_0_LOAD // c.weight
            if vr > worst_vr:
                worst, worst_vr = p, vr
        gran = self.wakeup_granularity_us * _NS * NICE_0_LOAD // t.weight  # wakeup_gran(se)
        if worst_vr - t.vruntime > gran:
            sim.tickle(worst)  # type: ignore[arg-type]

    def descheduled(self, vcpu: VCPU, pcpu: PCPU, now: int, ran_us: int) -> None:
        """``update_curr`` + ``put_prev_entity``: advance vruntime, requeue if runnable."""
        t: _Task = vcpu.priv
        t.vruntime += ran_us * _NS * NICE_0_LOAD // t.weight
        if vcpu.runnable:
            self.seq += 1
            heappush(self.queue, (t.vruntime, self.seq, vcpu))
        else:
            self.nr_running -= 1
            self.load -= t.weight

    def _slice_us(self, t: _Task) -> int:
        """``sched_slice``: the task's weighted part of the period, per pCPU."""
        per_cpu = -(-self.nr_running // self.npcpus)
        # __sched_period: stretch the period when more than sched_nr_latency tasks share a CPU
        nr_lat = self.nr_latency
        period = per_cpu * self.min_granularity_us if per_cpu > nr_lat else self.latency_us
        load_per_cpu = max(self.load / self.npcpus, t.weight)
        return max(self.min_granularity_us, int(period * t.weight / load_per_cpu))

    def pick_next(self, pcpu: PCPU, now: int) -> Decision:
        """``pick_next_entity``: the leftmost (smallest vruntime)."""
        if not self.queue:
            return IDLE
        _, _, vcpu = heappop(self.queue)
        t: _Task = vcpu.priv
        t.exec_start = now
        return Decision(vcpu, self._slice_us(t))

"""Xen's credit scheduler (credit1), the reference scheduler of the course.

Follows ``xen/common/sched/credit.c`` (Emmanuel Ackaouy, 2005–06) as
summarised from [XEN-CREDIT] (steps 1–7 below) with its real
constants; function names in brackets are those of ``credit.c``.

1. **Per-pCPU run queues** sorted by priority, FIFO within a priority
   [``__runq_insert``].  Priorities: ``BOOST 0 > UNDER −1 > OVER −2 > IDLE −64``.
2. **Burning**: the running vCPU pays ``Δt_ms × 10`` credits, with the
   remainder carried in ``residual`` — at each 10 ms tick and when it is
   descheduled [``burn_credits``].
3. **Accounting** every 30 ms: ``credit_total = 300 × nCPUs`` (plus the
   negative-balance correction), each active domain gets
   ``credit_fair = ceil(credit_total × weight × active_vcpus / weight_total)``,
   limited by ``credit_peak = active_vcpus × 300`` and by its cap; what a
   limited domain cannot use is redistributed; each active vCPU gets
   ``ceil(credit_fair / active_vcpus)`` [``csched_acct``].
4. **Priority update**: ``credit < 0`` → OVER, else UNDER; credit clamped at
   −300; above +300 the vCPU leaves the active list and its credit is halved;
   a capped vCPU below ``−credit_cap`` is **parked** until its credit is ≥ 0.
5. **BOOST**: a vCPU waking with priority UNDER (not parked, not migrating)
   gets BOOST and may preempt; the first tick that finds it running drops it
   back to UNDER [``csched_unit_wake``, ``csched_unit_acct``].
6. **Schedule**: take the run-queue head; if it is OVER or IDLE, steal from
   another pCPU's queue the first vCPU of *strictly higher* priority that is
   not running [``csched_schedule``, ``csched_load_balance``, ``csched_runq_steal``].
   Idle pCPUs are kept in ``idlers`` and tickled when work arrives [``__runq_tickle``].
7. **Work-conserving unless capped**: a cap limits a domain even on an idle host.

Together these give the invariants [XEN-CREDIT]: priority follows the
sign of credit (UNDER ≥ 0 > OVER), BOOST on wake, IDLE lowest; accounting every
30 ms, continuous charging, 10 ms tick; long-run share ∝ weight, bounded by cap.

Also modelled: the context-switch rate limit (``ratelimit``, default
1000 µs: a preempted vCPU that ran less keeps the pCPU, with
``CSCHED_MIN_TIMER`` = 100 µs as in the code), the load-balance rate limit
(1000 µs), yield (queued behind one lower-priority vCPU), the 30 ms
``runq_sort`` done by each pCPU at its next tick, and ``credit.c``'s exact
integer arithmetic (including ``burn_credits``'s residual).

Simplified (say so in class):

- no hard or soft affinity: every vCPU may run anywhere, so load balancing
  has one step, and the "exclusive pinning" fast path is gone;
- one NUMA node, no SMT: ``_csched_cpu_pick``'s topology-aware choice of an
  idle pCPU is not modelled; a new vCPU's home pCPU is assigned round-robin
  and a running vCPU is never migrated at a tick (idle pCPUs still steal);
- the load-balance rate limit is not applied to an *idle* pCPU (it always
  looks for work).  In the simulator an idle pCPU that declines work stays
  idle until it is tickled again, so rate-limiting idlers would leave pCPUs
  idle next to waiting vCPUs;
- ``idlers`` tickling picks the next idle pCPU after the last one tickled
  (one global cursor instead of Xen's per-CPU ``last_tickle_cpu``);
- no cache-hotness migration delay (``vcpu_migration_delay`` defaults to 0 anyway).

>>> CSCHED_CREDITS_PER_MSEC * CSCHED_DEFAULT_TSLICE_MS  # credits per timeslice
300
>>> CSCHED_DEFAULT_TSLICE_MS * 1000 // CSCHED_TICKS_PER_TSLICE  # tick period, µs
10000
"""

from __future__ import annotations

from collections.abc import Sequence

from virtcore.errors import ConfigurationError
from virtcore.sched.core import IDLE, Decision, Scheduler, Simulator
from virtcore.sched.model import PCPU, VCPU, Domain

# ------------------------------------------------------------------ constants [XEN-CREDIT; XL-1]
CSCHED_DEFAULT_WEIGHT = 256
CSCHED_TICKS_PER_TSLICE = 3
CSCHED_DEFAULT_TSLICE_MS = 30
CSCHED_CREDITS_PER_MSEC = 10
#: ``XEN_SYSCTL_SCHED_RATELIMIT_MIN``: never set a timer shorter than this (µs).
CSCHED_MIN_TIMER = 100
#: Default context-switch rate limit ``sched_ratelimit_us`` (µs; ``xl sched-credit -r``).
CSCHED_DEFAULT_RATELIMIT_US = 1000
CSCHED_DEFAULT_LOAD_BALANCE_RATELIMIT_US = 1000

CSCHED_PRI_TS_BOOST = 0  # time-share waking up
CSCHED_PRI_TS_UNDER = -1  # time-share w/ credits
CSCHED_PRI_TS_OVER = -2  # time-share w/o credits
CSCHED_PRI_IDLE = -64  # idle

CSCHED_FLAG_UNIT_PARKED = 0  # bit numbers in credit.c; here they are separate bools
CSCHED_FLAG_UNIT_YIELD = 1
CSCHED_FLAG_UNIT_MIGRATING = 2
CSCHED_FLAG_UNIT_PINNED = 4

PRIORITY_NAMES = {
    CSCHED_PRI_TS_BOOST: "BOOST",
    CSCHED_PRI_TS_UNDER: "UNDER",
    CSCHED_PRI_TS_OVER: "OVER",
    CSCHED_PRI_IDLE: "IDLE",
}

_BOOST = CSCHED_PRI_TS_BOOST
_UNDER = CSCHED_PRI_TS_UNDER
_OVER = CSCHED_PRI_TS_OVER
_IDLE = CSCHED_PRI_IDLE


class _Unit:
    """``struct csched_unit``: the scheduler's view of one vCPU."""

    __slots__ = (
        "active",
        "credit",
        "decision",
        "migrating",
        "on_runq",
        "parked",
        "pri",
        "processor",
        "residual",
        "run_since",
        "sdom",
        "start_time",
        "vcpu",
        "yielding",
    )

    def __init__(self, vcpu: VCPU, sdom: _Dom, processor: int) -> None:
        self.vcpu = vcpu
        self.sdom = sdom
        self.pri = _UNDER
        self.credit = 0
        self.residual = 0
        self.start_time = 0  # absolute while running, relative (start − now) while not
        self.run_since = 0  # unit->state_entry_time: when it last started running
        self.active = False  # on sdom.active_units
        self.on_runq = False
        self.parked = False
        self.yielding = False
        self.migrating = True  # csched_res_pick sets it on insert: the first wake is not boosted
        self.processor = processor
        self.decision = IDLE  # Decision(vcpu, tslice), made once (the hot path allocates nothing)


class _Dom:
    """``struct csched_dom``."""

    __slots__ = ("active_units", "cap", "domain", "in_active_list", "weight")

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.weight = domain.weight
        self.cap = domain.cap
        self.active_units: list[_Unit] = []  # list_add puts new ones at the head
        self.in_active_list = False


def credit_shares(
    domains: Sequence[tuple[int, int, int]],
    ncpus: int,
    *,
    credit_balance: int = 0,
    tslice_ms: int = CSCHED_DEFAULT_TSLICE_MS,
) -> list[int]:
    """Per-vCPU credit each active domain earns in one accounting period (step 3) [XEN-CREDIT].

    The pure arithmetic of ``csched_acct``'s domain loop, in list order.

    Parameters
    ----------
    domains : sequence of (weight, active_vcpus, cap)
        The active domains, in the order of Xen's ``active_sdom`` list.
    ncpus : int
        pCPUs in the pool.
    credit_balance : int
        Last period's system-wide credit balance (negative: more is handed out).
    tslice_ms : int
        Timeslice (accounting period) in ms.

    Returns
    -------
    list of int
        Credit added to *each* active vCPU of each domain.

    Examples
    --------
    The worked example of [XEN-CREDIT; XL-1] (one pCPU, weights 256 and 512):

    >>> credit_shares([(256, 1, 0), (512, 1, 0)], ncpus=1)
    [100, 200]

    A cap of 50 (half a pCPU) limits a lone domain to 150 credits per 30 ms:

    >>> credit_shares([(256, 1, 50)], ncpus=1)
    [150]
    """
    shares, _ = _acct_domains(
        domains,
        ncpus * CSCHED_CREDITS_PER_MSEC * tslice_ms,
        CSCHED_CREDITS_PER_MSEC * tslice_ms,
        credit_balance,
    )
    return [s for s, _cap in shares]


def _acct_domains(
    domains: Sequence[tuple[int, int, int]],
    prv_credit: int,
    credits_per_tslice: int,
    prv_credit_balance: int,
) -> tuple[list[tuple[int, int]], list[int]]:
    """``csched_acct``'s domain loop: (per-unit credit_fair, per-unit credit_cap) per domain,
    and the indexes of domains that move to the head of ``active_sdom`` (in order)."""
    weight_total = sum(w * n for w, n, _ in domains)
    credit_total = prv_credit
    if prv_credit_balance < 0:  # converge balance towards 0 when it drops negative
        credit_total -= prv_credit_balance
    weight_left = weight_total
    credit_xtra = False
    credit_cap = 0
    out: list[tuple[int, int]] = []
    to_head: list[int] = []
    for i, (weight, active, cap) in enumerate(domains):
        weight_left -= weight * active
        # At most, a domain can use credits to run all its active units for one
        # full accounting period; more only when the system-wide balance is negative.
        credit_peak = active * credits_per_tslice
        if prv_credit_balance < 0:
            credit_peak += (
                -prv_credit_balance * weight * active + (weight_total - 1)
            ) // weight_total
        if cap != 0:
            credit_cap = (cap * credits_per_tslice + 99) // 100
            if credit_cap < credit_peak:
                credit_peak = credit_cap
            credit_cap = (credit_cap + (active - 1)) // active  # per unit
        credit_fair = (credit_total * weight * active + (weight_total - 1)) // weight_total
        if credit_fair < credit_peak:
            credit_xtra = True
        else:
            if weight_left != 0:
                # Give other domains a chance at unused credits
                credit_total += (
                    (credit_fair - credit_peak) * weight_total + (weight_left - 1)
                ) // weight_left
            if credit_xtra:
                to_head.append(i)  # lazily keep domains with extra credit at the head
            credit_fair = credit_peak
        credit_fair = (credit_fair + (active - 1)) // active  # fair share per unit
        out.append((credit_fair, credit_cap))
    return out, to_head


class Credit(Scheduler):
    """Xen credit1 (credit 调度器) with its real constants ([XEN-CREDIT; XL-1]; module docstring).

    Parameters
    ----------
    tslice_ms : int
        Timeslice = accounting period, 1..1000 ms (default 30; ``xl sched-credit -t``).
    ratelimit_us : int
        Context-switch rate limit, 0 (off) or 100..500000 µs and below the
        timeslice (default 1000; ``xl sched-credit -r``).
    load_balance_ratelimit_us : int
        Minimum time between two work-stealing attempts from an OVER head, µs (default 1000).
    boost : bool
        Give waking UNDER vCPUs the BOOST priority (True in Xen; False to
        show what BOOST buys).

    Attributes
    ----------
    tick_us : int
        10 000 µs with the default timeslice (``tslice / CSCHED_TICKS_PER_TSLICE``).
    account_us : int
        The timeslice in µs: ``csched_acct`` runs once per timeslice.

    Examples
    --------
    >>> from virtcore.sched import Domain, simulate
    >>> r = simulate([Domain("a", weight=512), Domain("b", weight=256)], Credit(),
    ...              pcpus=1, duration_us=3_000_000)
    >>> round(r.domain_share["a"] / r.domain_share["b"], 1)
    2.0
    """

    name = "Credit"

    def __init__(
        self,
        *,
        tslice_ms: int = CSCHED_DEFAULT_TSLICE_MS,
        ratelimit_us: int = CSCHED_DEFAULT_RATELIMIT_US,
        load_balance_ratelimit_us: int = CSCHED_DEFAULT_LOAD_BALANCE_RATELIMIT_US,
        boost: bool = True,
    ) -> None:
        if not isinstance(tslice_ms, int) or not 1 <= tslice_ms <= 1000:
            raise ConfigurationError(f"tslice_ms must be an int in 1..1000, got {tslice_ms!r}")
        if not isinstance(ratelimit_us, int) or not (
            ratelimit_us == 0
            or (100 <= ratelimit_us <= 500_000 and ratelimit_us <= tslice_ms * 1000)
        ):
            raise ConfigurationError(
                "ratelimit_us must be 0 or 100..500000 and not above the timeslice, "
                f"got {ratelimit_us!r}"
            )
        if (
            not isinstance(load_balance_ratelimit_us, int)
            or not 0 <= load_balance_ratelimit_us <= 1_000_000
        ):
            raise ConfigurationError(
                "load_balance_ratelimit_us must be in 0..1000000, "
                f"got {load_balance_ratelimit_us!r}"
            )
        # __csched_set_tslice
        self.tslice_ms = tslice_ms
        self.tslice_us = tslice_ms * 1000
        ticks = CSCHED_TICKS_PER_TSLICE if tslice_ms >= CSCHED_TICKS_PER_TSLICE else 1
        self.ticks_per_tslice = ticks
        self.tick_us = tslice_ms * 1000 // ticks
        self.account_us = self.tslice_us
        self.credits_per_tslice = CSCHED_CREDITS_PER_MSEC * tslice_ms
        self.ratelimit_us = ratelimit_us
        self.load_balance_ratelimit_us = load_balance_ratelimit_us
        self.boost = boost
        if not boost:
            self.name = "Credit(boost=False)"

    # ------------------------------------------------------------------ setup
    def attach(self, sim: Simulator) -> None:
        """Per-pCPU run queues and the global accounting state (``init_pdata``)."""
        super().attach(sim)
        n = len(sim.pcpus)
        self.ncpus = n
        self.credit = self.credits_per_tslice * n  # prv->credit
        self.credit_balance = 0
        self.weight = 0  # sum of weights of active units
        self.active_sdom: list[_Dom] = []
        self.runq_sort = 0
        self.runq: list[list[_Unit]] = [[] for _ in range(n)]
        self.runq_sort_last = [0] * n
        self.nr_runnable = [0] * n
        self.last_load_balance = [0] * n
        self.idlers: set[int] = set(range(n))
        self.balance_bias = 0
        self.last_tickle_cpu = 0
        self._keep: list[tuple[_Unit, int] | None] = [None] * n  # rate-limited: keep running
        self._prev: list[_Unit | None] = [None] * n  # who ran last on each pCPU
        self._sdoms: dict[int, _Dom] = {}
        self._next_home = 0

    def add_vcpu(self, vcpu: VCPU) -> None:
        """``csched_alloc_udata`` + ``csched_unit_insert``: UNDER, credit 0, a home pCPU."""
        dom = vcpu.domain
        sdom = self._sdoms.get(id(dom))
        if sdom is None:
            sdom = self._sdoms[id(dom)] = _Dom(dom)
        svc = vcpu.priv = _Unit(vcpu, sdom, self._next_home % self.ncpus)
        svc.decision = Decision(vcpu, self.tslice_us)
        self._next_home += 1

    def remove_vcpu(self, vcpu: VCPU) -> None:
        """``csched_unit_remove``: unpark, leave the active list."""
        svc: _Unit = vcpu.priv
        svc.parked = False
        if svc.on_runq:
            self._runq_remove(svc)
        if svc.active:
            self._acct_stop(svc)

    # ------------------------------------------------------------------ run queues (step 1)
    def _runq_insert(self, svc: _Unit, count: bool = True) -> None:
        """``__runq_insert``: after every unit of equal or higher priority."""
        runq = self.runq[svc.processor]
        pri = svc.pri
        pos = 0
        for u in runq:
            if pri > u.pri:
                break
            pos += 1
        # A yielding unit goes behind one lower-priority (non-idle) unit.
        if svc.yielding and pos < len(runq):
            pos += 1
        runq.insert(pos, svc)
        svc.on_runq = True
        if count:
            self.nr_runnable[svc.processor] += 1

    def _runq_remove(self, svc: _Unit) -> None:
        """``runq_remove``."""
        self.runq[svc.processor].remove(svc)
        svc.on_runq = False
        self.nr_runnable[svc.processor] -= 1

    def _runq_sort(self, cpu: int) -> None:
        """``csched_runq_sort``: after accounting, move UNDERs (and BOOSTs) ahead of OVERs."""
        if self.runq_sort_last[cpu] == self.runq_sort:
            return
        self.runq_sort_last[cpu] = self.runq_sort
        runq = self.runq[cpu]
        if len(runq) > 1:
            runq[:] = [u for u in runq if u.pri >= _UNDER] + [u for u in runq if u.pri < _UNDER]

    # ------------------------------------------------------------------ burning (step 2)
    def _burn(self, svc: _Unit, now: int) -> None:
        """``burn_credits``: charge Δt·10 credits per ms, carrying the residual (µs here)."""
        delta = now - svc.start_time
        if delta <= 0:
            return
        val = delta * CSCHED_CREDITS_PER_MSEC + svc.residual
        credits, svc.residual = divmod(val, 1000)
        svc.credit -= credits
        # As in credit.c, start_time advances by the credits charged only (1 credit = 100 µs).
        svc.start_time += credits * 1000 // CSCHED_CREDITS_PER_MSEC

    # ------------------------------------------------------------------ active list
    def _acct_start(self, svc: _Unit) -> None:
        """``__csched_unit_acct_start``: join the active list (start earning credit)."""
        sdom = svc.sdom
        svc.active = True
        sdom.active_units.insert(0, svc)
        self.weight += sdom.weight
        if not sdom.in_active_list:
            sdom.in_active_list = True
            self.active_sdom.insert(0, sdom)

    def _acct_stop(self, svc: _Unit) -> None:
        """``__csched_unit_acct_stop_locked``: leave the active list."""
        sdom = svc.sdom
        svc.active = False
        sdom.active_units.remove(svc)
        self.weight -= sdom.weight
        if not sdom.active_units:
            sdom.in_active_list = False
            self.active_sdom.remove(sdom)

    # ------------------------------------------------------------------ hooks
    def tick(self, pcpu: PCPU, now: int) -> None:
        """``csched_tick``: account the running unit (drop BOOST, burn, join active), sort runq."""
        cur = pcpu.current
        if cur is not None:
            svc: _Unit = cur.priv
            if svc.pri == _BOOST:  # consuming non-negligible CPU: no longer boosted
                svc.pri = _UNDER
            self._burn(svc, now)
            if not svc.active:
                self._acct_start(svc)
        if self.runq_sort_last[pcpu.id] != self.runq_sort:
            self._runq_sort(pcpu.id)

    def account(self, now: int) -> None:
        """``csched_acct`` (steps 3–4): hand out credit, update priorities, park and unpark."""
        if self.weight == 0:
            self.credit_balance = 0
            return
        doms = list(self.active_sdom)
        per_dom, to_head = _acct_domains(
            [(d.weight, len(d.active_units), d.cap) for d in doms],
            self.credit,
            self.credits_per_tslice,
            self.credit_balance,
        )
        for i in to_head:
            self.active_sdom.remove(doms[i])
            self.active_sdom.insert(0, doms[i])
        cpt = self.credits_per_tslice
        credit_balance = 0
        for sdom, (credit_fair, credit_cap) in zip(doms, per_dom):
            for svc in list(sdom.active_units):
                credit = svc.credit + credit_fair
                svc.credit = credit
                if credit < 0:
                    svc.pri = _OVER
                    # Park running units of capped-out domains
                    if sdom.cap != 0 and credit < -credit_cap and not svc.parked:
                        self._park(svc)
                    if credit < -cpt:  # lower bound on credits
                        credit = -cpt
                        svc.credit = credit
                else:
                    svc.pri = _UNDER
                    if svc.parked:  # unpark capped units whose credit went positive
                        self._unpark(svc)
                    if credit > cpt:  # upper bound: stop earning, start again "a bit ahead"
                        self._acct_stop(svc)
                        credit //= 2
                        svc.credit = credit
                credit_balance += credit
        self.credit_balance = credit_balance
        self.runq_sort += 1  # each pCPU re-sorts its runq at its next tick

    def _park(self, svc: _Unit) -> None:
        """Pause a capped unit (``sched_unit_pause_nosync``)."""
        svc.parked = True
        v = svc.vcpu
        if v.running_on is not None:
            self.sim.tickle(v.running_on)
        elif svc.on_runq:
            self._runq_remove(svc)

    def _unpark(self, svc: _Unit) -> None:
        """Unpause (``vcpu_wake`` → ``csched_unit_wake``, not boosted: still flagged parked)."""
        v = svc.vcpu
        if v.runnable and v.running_on is None and not svc.on_runq:
            svc.migrating = False
            self._runq_insert(svc)
            self._runq_tickle(svc)
        svc.parked = False

    def wake(self, vcpu: VCPU, now: int) -> None:
        """``csched_unit_wake`` (step 5): maybe BOOST, queue on its home pCPU, tickle."""
        svc: _Unit = vcpu.priv
        if svc.parked:  # paused: it becomes runnable for Xen only when unparked
            return
        migrating = svc.migrating
        svc.migrating = False
        if self.boost and not migrating and svc.pri == _UNDER:
            svc.pri = _BOOST
        self._runq_insert(svc)
        self._runq_tickle(svc)

    def _runq_tickle(self, new: _Unit) -> None:
        """``__runq_tickle``: wake an idle pCPU, or preempt a lower-priority current."""
        cpu = new.processor
        sim = self.sim
        cur_v = sim.pcpus[cpu].current
        cur_pri = _IDLE if cur_v is None else cur_v.priv.pri
        idlers = self.idlers
        if cur_pri == _IDLE or (not idlers and new.pri > cur_pri):
            target = cpu
        elif idlers:
            # cpumask_cycle(last_tickle_cpu, idlers): the next idler after the last tickled
            ordered = sorted(idlers)
            target = next((c for c in ordered if c > self.last_tickle_cpu), ordered[0])
            self.last_tickle_cpu = target
        else:
            return
        idlers.discard(target)
        sim.tickle(sim.pcpus[target])

    def block(self, vcpu: VCPU, now: int) -> None:
        """``csched_unit_sleep``: off the run queue if it was queued."""
        svc: _Unit = vcpu.priv
        if svc.on_runq:
            self._runq_remove(svc)

    def yield_(self, vcpu: VCPU, now: int) -> None:
        """``csched_unit_yield``: set the YIELD flag (used by the next run-queue insert)."""
        vcpu.priv.yielding = True

    def descheduled(self, vcpu: VCPU, pcpu: PCPU, now: int, ran_us: int) -> None:
        """First half of ``csched_schedule``: burn credit, requeue if runnable, or rate-limit."""
        svc: _Unit = vcpu.priv
        cpu = pcpu.id
        delta = now - svc.start_time  # burn_credits, inlined (hot path)
        if delta > 0:
            credits, svc.residual = divmod(delta * CSCHED_CREDITS_PER_MSEC + svc.residual, 1000)
            svc.credit -= credits
            svc.start_time += credits * 1000 // CSCHED_CREDITS_PER_MSEC
        svc.start_time -= now
        self._prev[cpu] = svc
        runnable = vcpu.runnable and not svc.parked
        if runnable and not svc.yielding and self.ratelimit_us:
            runtime = now - svc.run_since
            if runtime < self.ratelimit_us:
                # Keep running until it has run for `ratelimit`, never less than MIN_TIMER.
                tslice = self.ratelimit_us - runtime
                if runtime < CSCHED_MIN_TIMER:  # (sic: credit.c tests runtime here)
                    tslice = CSCHED_MIN_TIMER
                self._keep[cpu] = (svc, tslice)
                return
        if runnable:
            self._runq_insert(svc, count=False)  # still counted in nr_runnable
        else:
            self.nr_runnable[cpu] -= 1
        svc.yielding = False

    def pick_next(self, pcpu: PCPU, now: int) -> Decision:
        """Second half of ``csched_schedule`` (step 6): head of the runq, or steal."""
        cpu = pcpu.id
        keep = self._keep[cpu]
        if keep is not None:
            self._keep[cpu] = None
            svc, tslice = keep
            svc.start_time += now
            return Decision(svc.vcpu, tslice)
        runq = self.runq[cpu]
        snext: _Unit | None = runq[0] if runq else None
        pri = _IDLE if snext is None else snext.pri
        if pri > _OVER:
            runq.pop(0)
            snext.on_runq = False  # type: ignore[union-attr]
        elif pri == _IDLE or now - self.last_load_balance[cpu] > self.load_balance_ratelimit_us:
            self.last_load_balance[cpu] = now
            snext = self._load_balance(cpu, snext, pri)
        else:
            runq.pop(0)
            snext.on_runq = False  # type: ignore[union-attr]
        if snext is None:
            self.idlers.add(cpu)
            self._prev[cpu] = None
            return IDLE
        self.idlers.discard(cpu)
        snext.start_time += now
        if self._prev[cpu] is not snext:
            snext.run_since = now
        return snext.decision

    def _load_balance(self, cpu: int, snext: _Unit | None, pri: int) -> _Unit | None:
        """``csched_load_balance``: try non-idle peers, from ``balance_bias`` on, round the ring."""
        n = self.ncpus
        idlers = self.idlers
        workers = [c for c in range(n) if c != cpu and c not in idlers]
        if workers:
            bias = self.balance_bias
            first = next((i for i, c in enumerate(workers) if c > bias), 0)
            nr_runnable = self.nr_runnable
            for k in range(len(workers)):
                peer = workers[(first + k) % len(workers)]
                if nr_runnable[peer] <= 1:
                    continue  # nobody to steal besides the one running there
                speer = self._runq_steal(peer, cpu, pri)
                if speer is not None:
                    self.balance_bias = peer
                    return speer
        # Failed to find more important work elsewhere
        if snext is not None:
            self.runq[cpu].pop(0)
            snext.on_runq = False
        return snext

    def _runq_steal(self, peer: int, cpu: int, pri: int) -> _Unit | None:
        """``csched_runq_steal``: the first unit of strictly higher priority, not running."""
        if self.sim.pcpus[peer].current is None:
            return None  # don't steal from an idle pCPU: it will pick its own work
        runq = self.runq[peer]
        for i, speer in enumerate(runq):
            if speer.pri <= pri:
                break
            if speer.vcpu.running_on is not None:
                continue
            del runq[i]
            speer.on_runq = False
            self.nr_runnable[peer] -= 1
            speer.processor = cpu
            self.nr_runnable[cpu] += 1
            return speer
        return None

    # ------------------------------------------------------------------ inspection
    def snapshot(self) -> list[dict[str, object]]:
        """Per-vCPU state now: priority, credit, active, parked, home pCPU (for notebooks).

        >>> from virtcore.sched import Domain, Simulator
        >>> c = Credit()
        >>> Simulator([Domain("a")], c, duration_us=45_000).run().scheduler
        'Credit'
        >>> c.snapshot()[0]["pri"]
        'UNDER'
        """
        sim = self.sim
        if sim is None:
            return []
        return [
            {
                "vcpu": v.name,
                "pri": PRIORITY_NAMES[v.priv.pri],
                "credit": v.priv.credit,
                "active": v.priv.active,
                "parked": v.priv.parked,
                "processor": v.priv.processor,
            }
            for v in sim.vcpus
        ]

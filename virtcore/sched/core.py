"""The scheduling simulator: a small discrete-event loop and the plugin interface.

Idea: time jumps from event to event — a timeslice ends, a vCPU blocks or
wakes, a scheduler tick, an accounting period — never microsecond by
microsecond.  Events sit in one heap of ``(time, priority, seq, ...)`` tuples
(SimPy's shape): at equal times the lower priority goes first, then the
earlier-scheduled event, so every run with the same seed is identical.

Equal-time order (the event kind is its priority): ``TICK`` (0) <
``ACCOUNT`` (1) < ``WAKE`` (2) < ``RUN_END`` (3, a timeslice end, a block, a
yield or an exit).  So at t = 30 ms Credit first burns the running vCPUs'
credits (tick), then hands out new credit (accounting), then reschedules.

The simulator owns the truth of who runs where (``PCPU.current``,
``VCPU.running_on``, ``VCPU.runnable``) and checks every decision a scheduler
makes; a bad one raises :class:`InvalidDecisionError` naming the scheduler,
the time and the vCPU.

Units: integer microseconds (µs) everywhere.

Simplifications (say them to students): context switches and scheduler code
cost no time; no caches, no SMT, no NUMA; a pCPU that is tickled reschedules
at the same instant (real IPIs take a few µs).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable
from heapq import heappop, heappush
from typing import TYPE_CHECKING, NamedTuple

from virtcore.errors import ConfigurationError, VirtcoreError
from virtcore.rng import DEFAULT_SEED, derive_seed, make_rng
from virtcore.sched.model import PCPU, VCPU, Domain
from virtcore.sched.workloads import FOREVER, YIELD

if TYPE_CHECKING:
    from virtcore.sched.result import SchedResult

EV_TICK = 0
EV_ACCOUNT = 1
EV_WAKE = 2
EV_RUN_END = 3

#: Default budget of processed events; a scheduler handing out 1-µs slices hits it.
DEFAULT_MAX_EVENTS = 20_000_000
#: Reschedules allowed at one instant before the run is declared a livelock.
MAX_RESCHEDS_PER_INSTANT = 10_000


class SchedulerError(VirtcoreError):
    """A scheduler plugin broke the rules of the simulation (or livelocked it).

    >>> issubclass(InvalidDecisionError, SchedulerError), issubclass(SchedulerError, VirtcoreError)
    (True, True)
    """


class InvalidDecisionError(SchedulerError):
    """``pick_next`` returned something the machine cannot do.

    Attributes
    ----------
    scheduler : str
        The scheduler's name.
    time_us : int
        When.
    pcpu : int
        Which pCPU was asking.
    vcpu : str or None
        The vCPU named in the decision, if any.
    reason : str
        What is wrong.

    >>> str(InvalidDecisionError("MyFIFO", 3000, 1, "web.0", "it is blocked (not runnable)"))
    'MyFIFO.pick_next(pCPU1) at t=3000 µs chose vCPU web.0, but it is blocked (not runnable)'
    """

    def __init__(self, scheduler: str, time_us: int, pcpu: int, vcpu: str | None, reason: str):
        self.scheduler = scheduler
        self.time_us = time_us
        self.pcpu = pcpu
        self.vcpu = vcpu
        self.reason = reason
        who = f" chose vCPU {vcpu}," if vcpu is not None else ""
        super().__init__(f"{scheduler}.pick_next(pCPU{pcpu}) at t={time_us} µs{who} but {reason}")


class Decision(NamedTuple):
    """What a pCPU does next: run ``vcpu`` (``None`` = idle) for at most ``timeslice_us``.

    ``timeslice_us=None`` means "until it blocks or someone tickles this pCPU".
    For an idle decision, a timeslice asks to be called again after that long.

    >>> Decision(None)
    Decision(vcpu=None, timeslice_us=None)
    >>> IDLE == Decision(None, None)
    True
    """

    vcpu: VCPU | None
    timeslice_us: int | None = None


#: The idle decision (no allocation needed).
IDLE = Decision(None, None)


class Scheduler(ABC):
    """Base class of a vCPU scheduler plugin (调度器插件).

    The simulator calls these hooks; a scheduler keeps its queues and answers
    :meth:`pick_next`.  Only :meth:`wake`, :meth:`descheduled` and
    :meth:`pick_next` are required.  Life of a vCPU, as the hooks see it::

        add_vcpu ─▶ wake ─▶ (pick_next chooses it … descheduled) × n ─▶ block ─▶ wake …
                                                                    └─▶ remove_vcpu (exit)

    When is ``pick_next(pcpu, now)`` called?  When a pCPU's timeslice ends,
    when its vCPU blocks, yields or exits, when the pCPU was tickled
    (``self.sim.tickle(pcpu)``), when an idle pCPU's idle timeslice ends, and
    — after every wake-up — on idle pCPUs (lowest id first) until the woken
    vCPU runs or every idle pCPU has had its chance.  Before ``pick_next``
    on a busy pCPU, ``descheduled`` is called for the vCPU that was running.

    Class attributes a scheduler may set: ``name`` (default: class name),
    ``tick_us`` (period of :meth:`tick` on every pCPU, None = no ticks),
    ``account_us`` (period of :meth:`account`, None = none).

    The handle ``self.sim`` (set by :meth:`attach`) offers ``now``, ``pcpus``,
    ``vcpus``, ``tickle(pcpu)`` and ``idle_pcpus()``.

    Example — first come, first served, in a dozen lines:

    >>> from collections import deque
    >>> class MyFIFO(Scheduler):
    ...     def __init__(self):
    ...         self.queue = deque()
    ...     def wake(self, vcpu, now):
    ...         self.queue.append(vcpu)
    ...     def descheduled(self, vcpu, pcpu, now, ran_us):
    ...         if vcpu.runnable:                  # preempted: keep its place
    ...             self.queue.appendleft(vcpu)
    ...     def pick_next(self, pcpu, now):
    ...         return Decision(self.queue.popleft()) if self.queue else IDLE
    >>> from virtcore.sched import Domain, IOBound, simulate
    >>> doms = [Domain("a", workload=IOBound()), Domain("b", workload=IOBound())]
    >>> r = simulate(doms, MyFIFO(), pcpus=1, duration_us=100_000, seed=1)
    >>> sum(r.vcpu_cpu_us.values()) <= 100_000
    True
    """

    name: str = ""
    tick_us: int | None = None
    account_us: int | None = None
    sim: Simulator = None  # type: ignore[assignment]  # set by attach()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def attach(self, sim: Simulator) -> None:
        """Called once, before any other hook; sets ``self.sim``.

        Override to build per-pCPU state (call ``super().attach(sim)`` first).
        """
        if self.sim is not None:
            raise ConfigurationError(
                f"this {type(self).__name__} instance was already used in a simulation; "
                "pass a new scheduler object to each simulate() call"
            )
        self.sim = sim

    def add_vcpu(self, vcpu: VCPU) -> None:  # noqa: B027 - optional hook
        """A vCPU joins (before the run starts); it is not runnable yet."""

    def remove_vcpu(self, vcpu: VCPU) -> None:  # noqa: B027 - optional hook
        """A vCPU's workload ended; it is not runnable and not running."""

    @abstractmethod
    def wake(self, vcpu: VCPU, now: int) -> None:
        """``vcpu`` became runnable (also at its start): put it where ``pick_next`` finds it."""

    def block(self, vcpu: VCPU, now: int) -> None:  # noqa: B027 - optional hook
        """``vcpu`` went to sleep (called right after its ``descheduled``)."""

    def yield_(self, vcpu: VCPU, now: int) -> None:  # noqa: B027 - optional hook
        """``vcpu`` gives up its pCPU but stays runnable (called before ``descheduled``)."""

    @abstractmethod
    def descheduled(self, vcpu: VCPU, pcpu: PCPU, now: int, ran_us: int) -> None:
        """``vcpu`` stopped running on ``pcpu`` after ``ran_us`` µs.

        If ``vcpu.runnable`` it was preempted (slice end, tickle, yield) and
        still wants the CPU: put it back in your queue.  Otherwise it blocked
        or exited.  Charge ``ran_us`` here.
        """

    @abstractmethod
    def pick_next(self, pcpu: PCPU, now: int) -> Decision:
        """Choose what ``pcpu`` runs next: ``Decision(vcpu, timeslice_us)`` or ``IDLE``."""

    def tick(self, pcpu: PCPU, now: int) -> None:  # noqa: B027 - optional hook
        """Periodic, every ``tick_us`` on every pCPU (busy or idle)."""

    def account(self, now: int) -> None:  # noqa: B027 - optional hook
        """Periodic, every ``account_us``, once for the whole machine."""

    def weight_of(self, vcpu: VCPU) -> float:
        """The weight a fair share is measured against (metrics only); default: credit weight."""
        return vcpu.domain.weight


class Simulator:
    """One simulation run (usually made and run by :func:`simulate`).

    Parameters
    ----------
    domains : iterable of Domain
        Domains (VMs or host processes) with their vCPUs and workloads.
    scheduler : Scheduler
        A fresh scheduler instance.
    pcpus : int
        Number of physical CPUs.
    duration_us : int
        Simulated time; events at or after it are not processed.
    seed : int or random.Random or None
        Seed of the workloads' random streams (None: ``DEFAULT_SEED``).
    max_events : int
        Event budget; exceeding it raises :class:`SchedulerError`.

    Attributes (for schedulers)
    ---------------------------
    now : int
        Current simulated time in µs.
    pcpus : tuple of PCPU
    vcpus : tuple of VCPU
        All vCPUs, ``vcpus[v.id] is v``.

    >>> from virtcore.sched import FIFO, Domain
    >>> sim = Simulator([Domain("a")], FIFO(), pcpus=2, duration_us=1000)
    >>> len(sim.pcpus), sim.vcpus[0].id
    (2, 0)
    >>> sim.run().utilisation
    (1.0, 0.0)
    """

    def __init__(
        self,
        domains: Iterable[Domain],
        scheduler: Scheduler,
        *,
        pcpus: int = 1,
        duration_us: int,
        seed: int | random.Random | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if not isinstance(scheduler, Scheduler):
            raise ConfigurationError(f"scheduler must be a Scheduler instance, got {scheduler!r}")
        for what, val in (
            ("pcpus", pcpus),
            ("duration_us", duration_us),
            ("max_events", max_events),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ConfigurationError(f"{what} must be an int >= 1, got {val!r}")
        doms = list(domains)
        if not doms:
            raise ConfigurationError("nothing to schedule: give at least one Domain")
        names: set[str] = set()
        for d in doms:
            if not isinstance(d, Domain):
                raise ConfigurationError(f"expected Domain objects, got {d!r}")
            if d.name in names:
                raise ConfigurationError(f"two domains are named {d.name!r}")
            names.add(d.name)
        if isinstance(seed, random.Random):
            base = seed.getrandbits(62)
        else:
            make_rng(seed)  # type check: int or None
            base = DEFAULT_SEED if seed is None else seed
        self.seed = base
        self.scheduler = scheduler
        self.duration_us = duration_us
        self.max_events = max_events
        self.pcpus: tuple[PCPU, ...] = tuple(PCPU(i) for i in range(pcpus))
        vcpus: list[VCPU] = []
        for d in doms:
            for v in d.vcpus:
                start = getattr(v.workload, "start_us", 0)
                if not isinstance(start, int) or start < 0:
                    raise ConfigurationError(
                        f"{v.name}: start_us must be an int >= 0, got {start!r}"
                    )
                v._reset(len(vcpus), iter(v.workload.phases(make_rng(derive_seed(base, v.name)))))
                vcpus.append(v)
        self.vcpus: tuple[VCPU, ...] = tuple(vcpus)
        self.domains: tuple[Domain, ...] = tuple(doms)
        self.now = 0
        self._heap: list[tuple[int, int, int, int, int]] = []
        self._seq = 0
        self._tickles: list[PCPU] = []
        self._n_idle = pcpus
        self._dispatches = 0
        self._events = 0
        self._ran = False
        self._pick_next = scheduler.pick_next

    # ----------------------------------------------------------------- for schedulers
    def tickle(self, pcpu: PCPU) -> None:
        """Ask ``pcpu`` to reschedule now (after the current hook returns).

        A busy pCPU's vCPU is descheduled (still runnable) and ``pick_next`` is
        called; an idle pCPU just gets ``pick_next``.  Cf. Xen's
        ``cpu_raise_softirq(cpu, SCHEDULE_SOFTIRQ)``.

        >>> from virtcore.sched import FIFO, Domain
        >>> sim = Simulator([Domain("a")], FIFO(), duration_us=10)
        >>> sim.tickle(0)
        Traceback (most recent call last):
        ...
        virtcore.sched.core.SchedulerError: FIFO: tickle() needs a PCPU of this simulation, got 0
        """
        if type(pcpu) is not PCPU or pcpu.id >= len(self.pcpus) or self.pcpus[pcpu.id] is not pcpu:
            raise SchedulerError(
                f"{self.scheduler.name}: tickle() needs a PCPU of this simulation, got {pcpu!r}"
            )
        if not pcpu._tickled:
            pcpu._tickled = True
            self._tickles.append(pcpu)

    def idle_pcpus(self) -> list[PCPU]:
        """The pCPUs running nothing right now, lowest id first.

        >>> from virtcore.sched import FIFO, Domain
        >>> Simulator([Domain("a")], FIFO(), pcpus=2, duration_us=10).idle_pcpus()
        [pCPU0, pCPU1]
        """
        return [p for p in self.pcpus if p.current is None]

    # ----------------------------------------------------------------- the loop
    def _push(self, time: int, kind: int, arg: int, gen: int) -> None:
        self._seq += 1
        heappush(self._heap, (time, kind, self._seq, arg, gen))

    def run(self) -> SchedResult:
        """Run to ``duration_us`` and return the :class:`~virtcore.sched.result.SchedResult`."""
        from virtcore.sched.result import SchedResult

        if self._ran:
            raise ConfigurationError("a Simulator runs once; make a new one")
        self._ran = True
        sched = self.scheduler
        sched.attach(self)
        for what in ("tick_us", "account_us"):
            val = getattr(sched, what)
            if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
                raise SchedulerError(
                    f"{sched.name}.{what} must be None or an int >= 1, got {val!r}"
                )
        duration = self.duration_us
        for v in self.vcpus:
            sched.add_vcpu(v)
        for v in self.vcpus:
            first = next(v._phases, None)
            if first is None:  # nothing to do: it exits before it starts
                v._exited = True
                sched.remove_vcpu(v)
                continue
            v._remaining, v._sleep = self._check_phase(v, first)
            start = v.workload.start_us
            if start < duration:
                self._push(start, EV_WAKE, v.id, 0)
        tick_us = sched.tick_us
        account_us = sched.account_us
        if tick_us is not None and tick_us < duration:
            self._push(tick_us, EV_TICK, 0, 0)
        if account_us is not None and account_us < duration:
            self._push(account_us, EV_ACCOUNT, 0, 0)

        heap = self._heap
        pcpus = self.pcpus
        vcpus = self.vcpus
        tickles = self._tickles
        tick = sched.tick
        account = sched.account
        run_end = self._run_end
        wake = self._wake
        do_tickles = self._do_tickles
        max_events = self.max_events
        events = 0
        while heap:
            if heap[0][0] >= duration:
                break
            t, kind, _, arg, gen = heappop(heap)
            self.now = t
            if kind == EV_RUN_END:
                p = pcpus[arg]
                if gen != p._gen:
                    continue  # superseded by a later dispatch or a tickle
                run_end(p, t)
            elif kind == EV_WAKE:
                wake(vcpus[arg], t)
            elif kind == EV_TICK:
                for p in pcpus:
                    tick(p, t)
                if t + tick_us < duration:  # type: ignore[operator]
                    self._push(t + tick_us, EV_TICK, 0, 0)  # type: ignore[operator]
            else:
                account(t)
                if t + account_us < duration:  # type: ignore[operator]
                    self._push(t + account_us, EV_ACCOUNT, 0, 0)  # type: ignore[operator]
            if tickles:
                do_tickles(t)
            events += 1
            if events > max_events:
                raise SchedulerError(
                    f"{sched.name}: more than {max_events} events before t={duration} µs "
                    f"(stopped at t={t} µs) — are the timeslices tiny?"
                )
        self._events = events
        self.now = duration
        for p in pcpus:
            cur = p.current
            if cur is not None:
                self._stop(p, cur, duration)
        for v in vcpus:
            if v._intervals and v._intervals[-1][1] < 0:
                v._intervals[-1][1] = duration
        return SchedResult._from_simulator(self)

    def _check_phase(self, v: VCPU, phase: object) -> tuple[int, int]:
        run: object
        then: object
        try:
            run, then = phase  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"{v.name}: a phase must be (run_us, then_us), got {phase!r}"
            ) from None
        if type(run) is not int or run < 1 or type(then) is not int or (then < 0 and then != YIELD):
            raise ConfigurationError(
                f"{v.name}: bad phase {phase!r}: run_us must be an int >= 1, then_us >= 0 or YIELD"
            )
        return run, then  # type: ignore[return-value]

    def _stop(self, p: PCPU, v: VCPU, now: int) -> int:
        """Take ``v`` off ``p``; record the segment; return how long it ran."""
        start = p._start
        ran = now - start
        if ran:
            v._remaining -= ran
            v._cpu_us += ran
            p._busy += ran
            tr = p._trace
            if tr:
                last = tr[-1]
                if last[0] == v.id and last[2] == start:
                    last[2] = now
                else:
                    tr.append([v.id, start, now])
            else:
                tr.append([v.id, start, now])
        v.running_on = None
        p.current = None
        p._gen += 1
        self._n_idle += 1
        return ran

    def _dispatch(self, p: PCPU, now: int) -> None:
        """Ask the scheduler what ``p`` runs next, check the answer, start it."""
        d = self._pick_next(p, now)
        if type(d) is not Decision and not isinstance(d, Decision):
            raise InvalidDecisionError(
                self.scheduler.name,
                now,
                p.id,
                None,
                f"returned {d!r}; pick_next must return a Decision (or IDLE)",
            )
        v, ts = d
        if ts is not None and (type(ts) is not int or ts < 1):
            raise InvalidDecisionError(
                self.scheduler.name,
                now,
                p.id,
                getattr(v, "name", None),
                f"timeslice_us={ts!r} is not None or an int >= 1",
            )
        if v is None:
            if ts is not None:
                p._gen += 1
                if now + ts < self.duration_us:
                    self._seq += 1
                    heappush(self._heap, (now + ts, EV_RUN_END, self._seq, p.id, p._gen))
            return
        vcpus = self.vcpus
        if (
            type(v) is not VCPU
            or not v.runnable
            or v.running_on is not None
            or v.id >= len(vcpus)
            or vcpus[v.id] is not v
        ):
            self._reject(p, now, v)
        p.current = v
        v.running_on = p
        p._start = now
        self._n_idle -= 1
        self._dispatches += 1
        if v._wake_time >= 0:
            v._latencies.append(now - v._wake_time)
            v._wake_time = -1
        end = now + v._remaining
        if ts is None:
            p._slice_end = FOREVER
        else:
            se = now + ts
            p._slice_end = se
            if se < end:
                end = se
        gen = p._gen = p._gen + 1
        if end < self.duration_us:
            self._seq += 1
            heappush(self._heap, (end, EV_RUN_END, self._seq, p.id, gen))

    def _reject(self, p: PCPU, now: int, v: object) -> None:
        """Raise the right :class:`InvalidDecisionError` for a bad vCPU choice."""
        name = self.scheduler.name
        vcpus = self.vcpus
        if type(v) is not VCPU or not 0 <= v.id < len(vcpus) or vcpus[v.id] is not v:
            raise InvalidDecisionError(
                name, now, p.id, None, f"{v!r} is not a vCPU of this simulation"
            )
        if not v.runnable:
            state = "has exited" if v._exited else "is blocked (not runnable)"
            raise InvalidDecisionError(name, now, p.id, v.name, f"it {state}")
        raise InvalidDecisionError(
            name, now, p.id, v.name, f"it is already running on {v.running_on!r}"
        )

    def _run_end(self, p: PCPU, now: int) -> None:
        """A dispatch's timer fired: slice over, or the run phase finished."""
        v = p.current
        if v is None:  # an idle timeslice ended
            self._dispatch(p, now)
            return
        sched = self.scheduler
        ran_now = now - p._start
        if ran_now < v._remaining:  # timeslice expired, still runnable
            ran = self._stop(p, v, now)
            sched.descheduled(v, p, now, ran)
            self._dispatch(p, now)
            return
        then = v._sleep
        nxt = next(v._phases, None)
        if nxt is None:  # workload over: the vCPU exits
            ran = self._stop(p, v, now)
            v.runnable = False
            v._exited = True
            v._intervals[-1][1] = now
            sched.descheduled(v, p, now, ran)
            sched.remove_vcpu(v)
            self._dispatch(p, now)
            return
        try:
            run, then2 = nxt
        except (TypeError, ValueError):
            run, then2 = self._check_phase(v, nxt)
        if type(run) is not int or run < 1 or type(then2) is not int or then2 < YIELD:
            run, then2 = self._check_phase(v, nxt)
        if then == 0:  # straight on with the next phase, still on this pCPU
            v._remaining = ran_now + run
            v._sleep = then2
            end = now + run
            if p._slice_end < end:
                end = p._slice_end
            p._gen += 1
            if end < self.duration_us:
                self._push(end, EV_RUN_END, p.id, p._gen)
            return
        ran = self._stop(p, v, now)
        v._remaining = run
        v._sleep = then2
        if then == YIELD:
            sched.yield_(v, now)
            sched.descheduled(v, p, now, ran)
        else:
            v.runnable = False
            v._intervals[-1][1] = now
            sched.descheduled(v, p, now, ran)
            sched.block(v, now)
            if now + then < self.duration_us:
                self._push(now + then, EV_WAKE, v.id, 0)
        self._dispatch(p, now)

    def _wake(self, v: VCPU, now: int) -> None:
        v.runnable = True
        v._wake_time = now
        v._intervals.append([now, -1])
        self.scheduler.wake(v, now)
        if self._tickles:
            self._do_tickles(now)
        if v.running_on is None and self._n_idle:
            for p in self.pcpus:
                if p.current is None:
                    self._dispatch(p, now)
                    if v.running_on is not None:
                        break

    def _do_tickles(self, now: int) -> None:
        tickles = self._tickles
        sched = self.scheduler
        count = 0
        while tickles:
            p = tickles.pop(0)
            p._tickled = False
            count += 1
            if count > MAX_RESCHEDS_PER_INSTANT:
                raise SchedulerError(
                    f"{sched.name}: more than {MAX_RESCHEDS_PER_INSTANT} tickles at t={now} µs — "
                    "does the scheduler tickle a pCPU from pick_next or descheduled?"
                )
            v = p.current
            if v is not None:
                ran = self._stop(p, v, now)
                sched.descheduled(v, p, now, ran)
            self._dispatch(p, now)


def simulate(
    domains: Iterable[Domain],
    scheduler: Scheduler,
    *,
    pcpus: int = 1,
    duration_us: int,
    seed: int | random.Random | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> SchedResult:
    """Run ``domains`` under ``scheduler`` on ``pcpus`` pCPUs for ``duration_us`` µs.

    Same arguments as :class:`Simulator`.  Deterministic: the same seed gives
    the same trace.

    >>> from virtcore.sched import RoundRobin, Domain
    >>> r = simulate([Domain("a"), Domain("b")], RoundRobin(10_000), duration_us=40_000)
    >>> [(s.vcpu, s.start, s.end) for s in r.segments]
    [('a.0', 0, 10000), ('b.0', 10000, 20000), ('a.0', 20000, 30000), ('b.0', 30000, 40000)]
    """
    return Simulator(
        domains, scheduler, pcpus=pcpus, duration_us=duration_us, seed=seed, max_events=max_events
    ).run()
